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
TRAIN_METRICS = ["AP", "AP50", "APs"]


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
    p.add_argument("--top-categories", type=int, default=8, help="rarest categories shown")
    p.add_argument(
        "--summary-only", action="store_true", help="only summarise finished runs (no training)"
    )
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
            elif args.summary_only:
                logger.info("no finished run in %s: left out", out_dir)
                continue
            else:
                cfg = load_config(CONFIGS / VARIANT_CONFIGS[variant], overrides)
                cfg["out_dir"] = str(out_dir)
                result = train(cfg)
            runs.append({"variant": variant, "seed": seed, **result})
            if not args.summary_only:
                # Rewrite the summary after every run, so a campaign cut short still reports.
                _summarise(runs, args)
    if args.summary_only:
        if not runs:
            logger.error("no finished run under %s for seeds %s", args.out, args.seeds)
            return 1
        _summarise(runs, args)
    return 0


def _category_info(args) -> dict[str, tuple[int, float]]:
    """Per category name: (objects in the training images, median box area in px^2)."""
    from ganaug.torchvision.engine import build_datasets

    cfg = load_config(CONFIGS / VARIANT_CONFIGS["baseline"], list(args.opts))
    train_ds, _ = build_datasets(cfg)
    data = json.loads(Path(train_ds.ann_file).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    areas: dict[str, list[float]] = {}
    for a in data["annotations"]:
        if a.get("iscrowd"):
            continue
        areas.setdefault(names[a["category_id"]], []).append(a["bbox"][2] * a["bbox"][3])
    counts = train_ds.class_counts()
    return {n: (counts.get(n, 0), statistics.median(v)) for n, v in areas.items()}


def _per_category_table(runs: list[dict], variants: list[str], key: str, info, top: int):
    """Rarest categories (training count) with a non-zero AP for some run, mean over seeds."""
    scored = {
        name
        for r in runs
        if r.get(key)
        for name, ap in r[key]["per_category_AP"].items()
        if ap == ap and ap > 0
    }
    shown = sorted(scored, key=lambda n: (info.get(n, (0, 0.0))[0], n))[:top]
    if not shown:
        return "(no category has a non-zero AP in any run)", {}
    lines = [
        "| category (training objects, median box area px²) | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    table = {}
    for name in shown:
        count, area = info.get(name, (0, float("nan")))
        cells = []
        for v in variants:
            vals = [r[key]["per_category_AP"].get(name, float("nan")) for r in runs
                    if r["variant"] == v and r.get(key)]  # fmt: skip
            m, sd = _mean_std(vals)
            table.setdefault(name, {})[v] = m
            cells.append(f"{m:.2f} ± {sd:.2f}")
        lines.append(f"| {name} ({count}, {area:.0f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines), table


def _curve_table(args, variants: list[str]):
    """Mean held-out / training AP50 at each intermediate evaluation (eval_history.jsonl)."""
    curves: dict[str, dict[int, list[dict]]] = {}
    for v in variants:
        for seed in args.seeds:
            path = args.out / v.replace("+", "_") / f"seed{seed}" / "eval_history.jsonl"
            if not path.is_file():
                continue
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                curves.setdefault(v, {}).setdefault(rec["iter"], []).append(rec)
    if not curves:
        return ""
    iters = sorted({i for c in curves.values() for i in c})
    lines = [
        "| variant | " + " | ".join(f"it {i}: AP50 held-out / train" for i in iters) + " |",
        "|---|" + "---|" * len(iters),
    ]
    for v, c in curves.items():
        cells = []
        for i in iters:
            recs = c.get(i, [])
            held = _mean_std([r["AP50"] for r in recs])[0]
            train = _mean_std([r.get("train_AP50", float("nan")) for r in recs])[0]
            cells.append(f"{held:.2f} / {train:.2f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
            for m in TRAIN_METRICS:
                row["train_" + m] = _mean_std([r["eval_train"][m] for r in mine])
        row["seconds"] = _mean_std([r["seconds"] for r in mine])
        summary[variant] = row

    cols = METRICS + (["train_" + m for m in TRAIN_METRICS] if args.eval_train else [])
    cols += ["seconds"]
    lines = [
        "| variant | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for variant, row in summary.items():
        cells = [f"{row[c][0]:.2f} ± {row[c][1]:.2f}" for c in cols]
        seeds = ",".join(str(s) for s in row["seeds"])
        lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    variants = list(summary)
    info = _category_info(args)
    held_cats, held_table = _per_category_table(runs, variants, "eval", info, args.top_categories)
    parts = [table, "", "Per-category AP, held-out images (rarest first):", "", held_cats]
    train_table = {}
    if args.eval_train:
        train_cats, train_table = _per_category_table(
            runs, variants, "eval_train", info, args.top_categories
        )
        parts += ["", "Per-category AP, training images (rarest first):", "", train_cats]
    curve = _curve_table(args, variants)
    if curve:
        parts += ["", "AP50 during training (mean over seeds):", "", curve]
    text = "\n".join(parts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "effect.md").write_text(text + "\n")
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "effect.json").write_text(
        json.dumps(
            {
                "args": meta,
                "summary": summary,
                "per_category_heldout": held_table,
                "per_category_train": train_table,
                "runs": runs,
            },
            indent=2,
            default=float,
        )
    )
    logger.info("%d runs so far, %d iterations each\n%s", len(runs), args.iters, text)
    _plot(summary, args.out / "effect.png", args)
    if args.plot:
        _plot(summary, args.plot, args)


def _plot(summary: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["AP", "AP50", "APs"]
    shown += ["train_AP", "train_AP50", "train_APs"] if args.eval_train else []
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
