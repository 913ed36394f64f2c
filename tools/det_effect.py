"""Effect of PGAN / ASDN / ASTN / ASDN+ASTN vs the baseline head on coco128, same budget.

Each variant trains from scratch from ``configs/torchvision/<variant>_tiny_coco128.yaml``
with the same overrides (iterations, batch, image size, seed), then is evaluated with
pycocotools on the held-out images (and, with ``--eval-train``, on its training images).
Runs whose ``metrics.json`` exists are reused, so an interrupted campaign resumes. Writes
``effect.json``, ``effect.md`` (mean ± std over seeds) and ``effect.png`` to ``--out``.

Example (the numbers in docs/readme/detection.md)::

    nice -n 10 python tools/det_effect.py --seeds 0 1 --iters 150 --out work_dirs/det/effect
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from ganaug.torchvision.engine import load_config, train

logger = logging.getLogger("det_effect")

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "torchvision"
VARIANT_CONFIGS = {
    "baseline": "baseline_tiny_coco128.yaml",
    "pgan": "pgan_tiny_coco128.yaml",
    "asdn": "asdn_tiny_coco128.yaml",
    "astn": "astn_tiny_coco128.yaml",
    "asdn+astn": "asdn_astn_tiny_coco128.yaml",
}
METRICS = ["AP", "AP50", "APs", "APm", "APl"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v == v]  # drop NaN (no object of that size)
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANT_CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--min-size", type=int, default=192)
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--asdn-stage1-iters", type=int, default=30)
    p.add_argument("--eval-train", action="store_true", help="also evaluate on training images")
    p.add_argument("--out", type=Path, default=Path("work_dirs/det/effect"))
    p.add_argument("--plot", type=Path, help="also save the plot here (e.g. under docs/)")
    p.add_argument("opts", nargs="*", help="extra config overrides, section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for v in args.variants:
        if v not in VARIANT_CONFIGS:
            p.error(f"unknown variant {v!r}; choose from {list(VARIANT_CONFIGS)}")

    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            out_dir = args.out / variant.replace("+", "_") / f"seed{seed}"
            overrides = [
                f"train.iters={args.iters}",
                f"train.batch_size={args.batch_size}",
                f"train.seed={seed}",
                f"train.eval_train={str(args.eval_train).lower()}",
                "train.log_period=50",
                f"model.min_size={args.min_size}",
                f"model.max_size={args.max_size}",
                *args.opts,
            ]
            if "asdn" in variant:
                overrides.append(f"model.asdn_stage1_iters={args.asdn_stage1_iters}")
            metrics_file = out_dir / "metrics.json"
            if metrics_file.is_file():
                result = json.loads(metrics_file.read_text())
                logger.info("reusing %s", metrics_file)
            else:
                cfg = load_config(CONFIGS / VARIANT_CONFIGS[variant], overrides)
                cfg["out_dir"] = str(out_dir)
                result = train(cfg)
            runs.append({"variant": variant, "seed": seed, **result})
            # Rewrite the summary after every run, so a campaign cut short still reports.
            _summarise(runs, args)
    return 0


def _summarise(runs: list[dict], args) -> None:
    summary = {}
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        row = {"seeds": [r["seed"] for r in mine]}
        for m in METRICS:
            row[m] = _mean_std([r["eval"][m] for r in mine])
        if args.eval_train:
            row["train_AP50"] = _mean_std([r["eval_train"]["AP50"] for r in mine])
        row["seconds"] = _mean_std([r["seconds"] for r in mine])
        summary[variant] = row

    cols = METRICS + (["train_AP50"] if args.eval_train else []) + ["seconds"]
    lines = [
        "| variant | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for variant, row in summary.items():
        cells = [f"{row[c][0]:.2f} ± {row[c][1]:.2f}" for c in cols]
        seeds = ",".join(str(s) for s in row["seeds"])
        lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "effect.md").write_text(table + "\n")
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "effect.json").write_text(
        json.dumps({"args": meta, "summary": summary, "runs": runs}, indent=2, default=float)
    )
    logger.info("%d runs so far, %d iterations each\n%s", len(runs), args.iters, table)
    _plot(summary, args.out / "effect.png", args)
    if args.plot:
        _plot(summary, args.plot, args)


def _plot(summary: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["AP", "AP50", "APs"] + (["train_AP50"] if args.eval_train else [])
    seeds = max(len(row["seeds"]) for row in summary.values())
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=80)
    width = 0.8 / len(summary)
    for i, (variant, row) in enumerate(summary.items()):
        xs = [j + i * width for j in range(len(shown))]
        ax.bar(
            xs,
            [row[m][0] for m in shown],
            width,
            yerr=[row[m][1] for m in shown],
            label=variant,
            capsize=2,
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shown))], shown)
    ax.set_ylabel("COCO AP (%)")
    ax.set_title(
        f"coco128, from scratch, {args.iters} it x {args.batch_size} img, "
        f"up to {seeds} seeds (mean ± std)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
