"""The main job: a plain segmentor vs the same segmentor trained adversarially, on CamVid.

Default runs: ``baseline`` (plain cross-entropy), ``adversarial`` (Luc et al.'s label-map
discriminator) and ``adversarial_mfw`` (the same with median-frequency class weights and an
LSGAN critic). Each config is trained with mmengine's Runner for the same budget and seed
and evaluated on the val split with per-class IoU; ``comparison.md``, ``comparison.json``
and ``comparison.png`` go into the output folder. A finished run found there (same config,
seed and budget) is reused, so an interrupted job picks up where it stopped. Run it as
``ganaug seg-compare`` or through ``tools/main_job.sh``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import os.path as osp
import time
from pathlib import Path

from ganaug.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = {
    "baseline": "configs/adv_seg/fcn_unet-s4_1xb8-600it_camvid-120x160.py",
    "adversarial": "configs/adv_seg/advseg-vanilla_fcn_unet-s4_1xb8-600it_camvid-120x160.py",
    "adversarial_mfw": "configs/adv_seg/advseg-mfw-lsgan_fcn_unet-s4_1xb8-600it_camvid-120x160.py",
}
logger = logging.getLogger(__name__)


def _resolve_config(path: str) -> str:
    if osp.isfile(path):
        return path
    cand = REPO / path
    if cand.is_file():
        return str(cand)
    raise FileNotFoundError(f"config {path!r} not found (also looked in {REPO})")


def train_and_evaluate(
    config: str,
    work_dir: str,
    *,
    run_name: str,
    max_iters: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
    cfg_options: dict | None = None,
) -> dict:
    """Train ``config`` from scratch and return the val per-class metrics dict."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    if data_root is not None:
        os.environ["GANAUG_DATA_ROOT"] = str(data_root)
    cfg = Config.fromfile(_resolve_config(config))
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed, deterministic=False)
    json_path = osp.join(work_dir, "per_class_metrics.json")
    cfg.val_evaluator.per_class_json = json_path
    cfg.val_evaluator.run_name = run_name
    if max_iters is not None:
        cfg.train_cfg.max_iters = max_iters
        cfg.train_cfg.val_interval = max_iters
        cfg.default_hooks.checkpoint.interval = max_iters
        schedulers = cfg.param_scheduler
        if isinstance(schedulers, dict):
            schedulers = [schedulers]
        for sched in schedulers:
            sched["end"] = max_iters
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    elapsed = time.perf_counter() - start
    with open(json_path) as f:
        result = json.load(f)
    result["train_seconds"] = round(elapsed, 1)
    result["iters"] = cfg.train_cfg.max_iters
    result["config"] = config
    result["seed"] = seed
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return mean, math.sqrt(var)


def summarise(results: dict[str, list[dict]], class_counts: dict[str, int]) -> dict:
    """Per-class mean (and std over seeds) of each run, classes ordered rarest first."""
    classes = sorted(class_counts, key=lambda c: class_counts[c])
    total = sum(class_counts.values()) or 1
    table = []
    for cls in classes:
        row = {"class": cls, "pixel_share": round(100 * class_counts[cls] / total, 2)}
        for name, runs in results.items():
            mean, std = _mean_std([r["per_class"][cls] for r in runs])
            row[name] = round(mean, 2)
            row[name + "_std"] = round(std, 2)
        table.append(row)
    summary = {}
    for name, runs in results.items():
        mean, std = _mean_std([r["summary"]["mIoU"] for r in runs])
        summary[name] = {
            "mIoU": round(mean, 2),
            "mIoU_std": round(std, 2),
            "seeds": [r["seed"] for r in runs],
            "train_seconds": [r["train_seconds"] for r in runs],
        }
    return {"metric": "IoU", "classes": table, "summary": summary}


def _cell(mean: float, std: float, summary: dict) -> str:
    # With one seed there is no spread to report.
    seeds = max(len(v["seeds"]) for v in summary["summary"].values())
    return f"{mean:.2f} ± {std:.2f}" if seeds > 1 else f"{mean:.2f}"


def to_markdown(summary: dict, names: list[str]) -> str:
    """Per-class table; each run after the first also gets its delta to the first."""
    base, others = names[0], names[1:]
    head = ["class", "pixel share %", *names, *(f"Δ {n}" for n in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["classes"]:
        cells = [row["class"], f"{row['pixel_share']:.2f}"]
        cells += [_cell(row[n], row[n + "_std"], summary) for n in names]
        cells += [f"{row[n] - row[base]:+.2f}" for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    runs = summary["summary"]
    cells = ["**mIoU**", ""]
    cells += [f"**{_cell(runs[n]['mIoU'], runs[n]['mIoU_std'], summary)}**" for n in names]
    cells += [f"{runs[n]['mIoU'] - runs[base]['mIoU']:+.2f}" for n in others]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = summary["classes"]
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, name in enumerate(names):
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            [r[name] for r in rows],
            width,
            yerr=[r[name + "_std"] for r in rows],
            label=f"{name} (mIoU {summary['summary'][name]['mIoU']:.1f})",
        )
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['class']}\n{r['pixel_share']:.1f}%" for r in rows], fontsize=8)
    ax.set_ylabel("val IoU (%)")
    ax.set_title("CamVid val IoU per class, rarest first (train pixel share below)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finished_run(work_dir: str, config: str, seed: int, max_iters: int | None) -> dict | None:
    """The stored result of an identical earlier run in ``work_dir``, if there is one."""
    path = osp.join(work_dir, "per_class_metrics.json")
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    same = res.get("config") == config and res.get("seed") == seed and "class_counts" in res
    if max_iters is not None:
        same = same and res.get("iters") == max_iters
    return res if same else None


def run_comparison(
    out_dir: str,
    *,
    configs: dict[str, str] | None = None,
    max_iters: int | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
    data_root: str | None = None,
) -> dict:
    """Train every config for each seed, then write the comparison files into ``out_dir``."""
    from mmengine.logging import print_log

    from ganaug.core.label_stats import class_pixel_counts_from_files
    from ganaug.data_root import dataset_dir
    from ganaug.mmseg.datasets import CAMVID_CLASSES, CAMVID_VOID

    configs = dict(configs or DEFAULT_CONFIGS)
    camvid = dataset_dir("camvid", data_root)
    os.makedirs(out_dir, exist_ok=True)
    ann = sorted((camvid / "trainannot").glob("*.png"))
    counts = class_pixel_counts_from_files(
        ann, len(CAMVID_CLASSES), ignore_values=(CAMVID_VOID, 255)
    )
    class_counts = {c: int(n) for c, n in zip(CAMVID_CLASSES, counts)}

    results: dict[str, list[dict]] = {name: [] for name in configs}
    for seed in seeds:
        for name, config in configs.items():
            work_dir = osp.join(out_dir, f"{name}_seed{seed}")
            done = _finished_run(work_dir, config, seed, max_iters)
            if done is not None:
                print_log(f"[ganaug] reusing finished run {work_dir}", logger="current")
                results[name].append(done)
                continue
            print_log(f"[ganaug] training {name} (seed {seed}) from {config}", logger="current")
            res = train_and_evaluate(
                config,
                work_dir,
                run_name=f"{name}_seed{seed}",
                max_iters=max_iters,
                seed=seed,
                data_root=str(camvid.parent),
            )
            res["class_counts"] = class_counts
            # Re-write the run's JSON with the training-set class counts for `ganaug compare`.
            out = osp.join(work_dir, "per_class_metrics.json")
            write_text_atomic(out, json.dumps(res, indent=2))
            results[name].append(res)

    names = list(configs)
    summary = summarise(results, class_counts)
    summary["configs"] = configs
    summary["class_counts"] = class_counts
    md = to_markdown(summary, names)
    write_text_atomic(osp.join(out_dir, "comparison.json"), json.dumps(summary, indent=2))
    write_text_atomic(osp.join(out_dir, "comparison.md"), md + "\n")
    plot(summary, names, osp.join(out_dir, "comparison.png"))
    print_log("[ganaug] per-class val IoU (%), rarest class first:\n" + md, logger="current")
    print_log(f"[ganaug] wrote comparison.md/.json/.png to {out_dir}", logger="current")
    return summary


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _variant(text: str) -> tuple[str, str]:
    name, sep, config = text.partition("=")
    if not sep or not name or not config:
        raise argparse.ArgumentTypeError(f"expected NAME=CONFIG, got {text!r}")
    return name, config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "seg-compare",
        help="train plain and adversarial segmentors on CamVid and compare them per class",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="outputs/main_job", help="output folder")
    p.add_argument("--iters", type=_positive_int, default=None, help="train iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run")
    p.add_argument("--data-root", default=None, help="data root (default: $GANAUG_DATA_ROOT)")
    p.add_argument(
        "--variants",
        type=_variant,
        nargs="+",
        default=None,
        metavar="NAME=CONFIG",
        help="runs to compare, the first is the baseline (default: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_CONFIGS.items())
        + ")",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ganaug.data_root import DataRootError

    configs = None
    if args.variants:
        names = [name for name, _ in args.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SystemExit(f"ganaug seg-compare: duplicate variant names {dup}")
        if len(names) < 2:
            raise SystemExit("ganaug seg-compare: give at least two variants to compare")
        configs = dict(args.variants)
    try:
        # Check every config and the data before the first run trains for minutes.
        for config in (configs or DEFAULT_CONFIGS).values():
            _resolve_config(config)
        run_comparison(
            args.out,
            configs=configs,
            max_iters=args.iters,
            seeds=args.seeds,
            data_root=args.data_root,
        )
    except (FileNotFoundError, DataRootError) as err:
        raise SystemExit(f"ganaug seg-compare: {err}") from err
    return 0
