"""Effect of the detectron2 heads (PGAN, ASDN, ASTN, ASDN+ASTN) vs StandardROIHeads, same budget.

Each (variant, seed) run is ``tools/train_net.py`` with ``configs/detectron2/coco128_tiny_<v>
.yaml`` and the same overrides (iterations, image size, seed), trained from scratch on
``coco128_train`` (96 images) and evaluated by detectron2's ``COCOEvaluator`` on
``coco128_train`` (train AP, coco128's usual protocol) and ``coco128_val`` (the 32 held-out
images). A run whose two ``per_class_metrics.json`` exist is skipped, so the campaign
resumes and several invocations (one per CPU slot, e.g. one per seed) can share ``--out``.
``--table`` only collects: ``effect.json`` and ``effect.md`` (mean ± std over seeds).

Example (the numbers in docs/readme/detectron2.md)::

    python tools/d2_effect.py --seeds 0 --out outputs/d2_effect &
    python tools/d2_effect.py --seeds 1 --out outputs/d2_effect &
    python tools/d2_effect.py --table --seeds 0 1 --out outputs/d2_effect
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("d2_effect")

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["baseline", "pgan", "asdn", "astn", "asdn_astn"]
EVAL_SETS = {"train": "coco128_train", "held-out": "coco128_val"}
METRICS = ["AP", "AP50", "APs", "APm", "APl"]


def _run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / variant / f"seed{seed}"


def _metrics_path(run_dir: Path, dataset: str) -> Path:
    return run_dir / "inference" / dataset / "per_class_metrics.json"


def _overrides(args, variant: str, seed: int, run_dir: Path) -> list[str]:
    n = args.iters
    return [
        "SOLVER.MAX_ITER", str(n),
        "SOLVER.WARMUP_ITERS", str(max(1, n // 10)),
        "SOLVER.STEPS", f"({int(n * 0.8)},)",
        "INPUT.MIN_SIZE_TRAIN", f"({args.min_size},)",
        "INPUT.MAX_SIZE_TRAIN", str(args.max_size),
        "INPUT.MIN_SIZE_TEST", str(args.min_size),
        "INPUT.MAX_SIZE_TEST", str(args.max_size),
        "DATASETS.TRAIN", "('coco128_train',)",
        "DATASETS.TEST", "(" + ", ".join(repr(d) for d in EVAL_SETS.values()) + ",)",
        # Keep every detection: after minutes from scratch few scores pass 0.05.
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        # Fewer proposals at test time: with no score threshold, NMS over 80 classes x
        # 300 proposals dominated the evaluation time on CPU.
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
        "MODEL.GANAUG.ASDN.STAGE1_ITERS", str(args.asdn_stage1_iters),
        "SEED", str(seed),
        "OUTPUT_DIR", str(run_dir),
    ]  # fmt: skip


def _train_seconds(run_dir: Path) -> float:
    """Sum of detectron2's per-iteration ``time`` (wall) from ``metrics.json``, 0 if none."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return float("nan")
    times = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "time" in rec and "iteration" in rec:
            times.append((rec["iteration"], rec["time"]))
    if not times:
        return float("nan")
    # metrics.json holds one record per 20 iterations (median time of the window).
    times.sort()
    total, prev = 0.0, -1
    for it, t in times:
        total += (it - prev) * t
        prev = it
    return total


def run_one(args, variant: str, seed: int) -> None:
    run_dir = _run_dir(args.out, variant, seed)
    if all(_metrics_path(run_dir, d).is_file() for d in EVAL_SETS.values()):
        logger.info("%s seed %d: done already, skipped", variant, seed)
        return
    cfg = REPO / "configs" / "detectron2" / f"coco128_tiny_{variant}.yaml"
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(cfg)]
    cmd += _overrides(args, variant, seed, run_dir)
    logger.info("%s seed %d: %s", variant, seed, " ".join(cmd))
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(run_dir / "stdout.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0:
        raise RuntimeError(f"{variant} seed {seed} failed (exit {rc}); see {run_dir}/stdout.log")
    logger.info("%s seed %d: %.0f s", variant, seed, time.time() - start)


def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if v == v]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.2f} ± {sd:.2f}"


def table(args) -> str:
    rows, record = [], {}
    for variant in args.variants:
        rec = {"seeds": [], "train_seconds": []}
        for name in EVAL_SETS:
            rec[name] = {m: [] for m in METRICS + ["categories_ap_gt0"]}
        for seed in args.seeds:
            run_dir = _run_dir(args.out, variant, seed)
            paths = {n: _metrics_path(run_dir, d) for n, d in EVAL_SETS.items()}
            if not all(p.is_file() for p in paths.values()):
                continue
            rec["seeds"].append(seed)
            rec["train_seconds"].append(_train_seconds(run_dir))
            for name, path in paths.items():
                res = json.loads(path.read_text())
                for m in METRICS:
                    rec[name][m].append(res["summary"].get(m, float("nan")))
                rec[name]["categories_ap_gt0"].append(sum(v > 0 for v in res["per_class"].values()))
        record[variant] = rec
        if not rec["seeds"]:
            continue
        cells = [variant, ",".join(map(str, rec["seeds"]))]
        for name in EVAL_SETS:
            cells += [_mean_std(rec[name][m]) for m in ("AP", "AP50", "APs")]
            cells.append(_mean_std(rec[name]["categories_ap_gt0"]))
        cells.append(_mean_std(rec["train_seconds"]))
        rows.append("| " + " | ".join(cells) + " |")
    head = (
        "| variant | seeds | train AP | train AP50 | train APs | train cats AP>0 "
        "| held-out AP | held-out AP50 | held-out APs | held-out cats AP>0 | train s |\n"
        "|" + "---|" * 11
    )
    md = head + "\n" + "\n".join(rows) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "effect.json").write_text(json.dumps(record, indent=2))
    (args.out / "effect.md").write_text(md)
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--min-size", type=int, default=224)
    p.add_argument("--max-size", type=int, default=299)
    p.add_argument("--asdn-stage1-iters", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("outputs/d2_effect"))
    p.add_argument("--table", action="store_true", help="only collect finished runs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if "GANAUG_DATA_ROOT" not in os.environ:
        logger.info("GANAUG_DATA_ROOT not set: ganaug's default data root is used")
    if not args.table:
        for seed in args.seeds:
            for variant in args.variants:
                run_one(args, variant, seed)
    sys.stdout.write(table(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
