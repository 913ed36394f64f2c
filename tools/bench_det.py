"""Cost of the ganaug detection heads relative to the baseline head, measured in one run.

Every variant starts from the same detector weights and trains on the same coco128
batches; steps are interleaved (round r runs every variant on batch r, each round starting
at a different variant) so that load changes hit all variants alike; each variant runs
``--repeats`` times per batch and the fastest is kept. Times are medians over rounds;
ratios are a variant's total over the rounds divided by the baseline's.

* train step: forward + backward + optimizer steps (detector and adversaries), seconds;
* peak memory: the peak of tensor bytes allocated *during* one train step (activations,
  gradients, temporaries; weights and optimizer state allocated before are not counted,
  and the previous step's gradients are freed before it, as ``train_step`` does first):
  CUDA ``max_memory_allocated`` on a GPU, the profiler's allocation events on CPU (not the
  process RSS);
* inference: ``model.eval()`` forward on the same images, measured before any training
  step while all models share the same detector weights (see ``bench``).

Targets (issue 3): ASDN, ASTN, both <= 1.25x baseline train step, PGAN <= 1.4x; peak
memory <= 1.2x; inference unchanged for ASDN/ASTN, <= 1.1x for PGAN.

Presets (``--preset``, several run one after the other in one call):

* ``tiny``: the from-scratch budget of the configs (4-stage CNN + FPN 64 channels,
  128 ROIs per image, images 192-256 px, box head 256 wide);
* ``r50``: a realistic Faster R-CNN (torchvision ResNet-50 + FPN 256 channels, random
  init, 2000 RPN proposals, 512 ROIs per image, images 512-640 px, box head 1024 wide).

Explicit options (``--min-size`` ...) override the preset's values.

Example::

    python tools/bench_det.py --preset tiny r50 --out work_dirs/det/bench
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from functools import partial
from pathlib import Path

import torch

from ganaug.benchmark import fastest_run, peak_bytes, ratio_of_totals, rotated
from ganaug.data_root import dataset_dir
from ganaug.datasets.coco import CocoDetectionDataset, collate_detection
from ganaug.torchvision import build_faster_rcnn
from ganaug.torchvision.engine import _make_optimizers, train_step

logger = logging.getLogger("bench_det")

PRESETS = {
    "tiny": {
        "backbone": "tiny", "fpn_channels": 64, "min_size": 192, "max_size": 256,
        "box_batch_size_per_image": 128, "representation_size": 256,
        "rpn_post_nms_top_n_train": 500,
    },
    "r50": {
        "backbone": "resnet50", "min_size": 512, "max_size": 640,
        "box_batch_size_per_image": 512, "representation_size": 1024,
        "rpn_post_nms_top_n_train": 2000,
    },
}  # fmt: skip

# (row name, builder variant, extra builder kwargs)
ROWS = [
    ("baseline", "baseline", {}),
    ("pgan", "pgan", {}),
    ("asdn (stage 2)", "asdn", {"asdn_stage1_iters": 0}),
    ("astn", "astn", {}),
    ("asdn+astn (stage 2)", "asdn+astn", {"asdn_stage1_iters": 0}),
    ("asdn (stage 1)", "asdn", {"asdn_stage1_iters": 10**9}),
    # Recomputing the adversaries' activations in the backward pass: less memory, slower.
    ("asdn (stage 2, ckpt)", "asdn", {"asdn_stage1_iters": 0, "adversary_checkpoint": True}),
    ("astn (ckpt)", "astn", {"adversary_checkpoint": True}),
    (
        "asdn+astn (stage 2, ckpt astn)",
        "asdn+astn",
        {"asdn_stage1_iters": 0, "adversary_checkpoint": "astn"},
    ),
    (
        "asdn+astn (stage 2, ckpt both)",
        "asdn+astn",
        {"asdn_stage1_iters": 0, "adversary_checkpoint": True},
    ),
    # The previous default width (64) of both adversaries.
    (
        "asdn+astn (stage 2, 64 wide)",
        "asdn+astn",
        {"asdn_stage1_iters": 0, "asdn_hidden": 64, "astn_hidden": 64},
    ),
]


#: The rows that use the builder's default settings.
DEFAULT_ROWS = ("baseline", "pgan", "asdn (stage 2)", "astn", "asdn+astn (stage 2)")


def _load_batches(args, n_batches: int, device):
    ds = CocoDetectionDataset.from_root(dataset_dir("coco128", args.data_root))
    # The first images by id: some with small objects and some without, so PGAN's
    # routing has work to do.
    sub = ds.subset(ds.ids[: n_batches * args.batch_size])
    batches = []
    for b in range(n_batches):
        items = [sub[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)]
        images, targets = collate_detection(items)
        batches.append(
            (
                [im.to(device) for im in images],
                [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                 for t in targets],
            )
        )  # fmt: skip
    return ds.num_classes, batches


def bench(model_kwargs: dict, args, device) -> dict:
    """Time and peak memory of every row of ``ROWS`` with these builder settings."""
    n_batches = max(args.mem_batches, 1) if args.mem_only else args.rounds + 1
    num_classes, batches = _load_batches(args, n_batches, device)
    torch.manual_seed(0)
    base_state = build_faster_rcnn(num_classes=num_classes, **model_kwargs).state_dict()
    train_cfg = {
        "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "warmup_iters": 0,
        "lr_drop_at": 1.0, "adv_lr": 1e-4, "iters": 100,
    }  # fmt: skip
    rows_spec = [r for r in ROWS if not args.variants or r[1] in args.variants]
    if args.no_stage1:
        rows_spec = [r for r in rows_spec if "stage 1" not in r[0]]
    if args.no_ckpt:
        rows_spec = [r for r in rows_spec if "ckpt" not in r[0]]
    if args.defaults_only:
        rows_spec = [r for r in rows_spec if r[0] in DEFAULT_ROWS]
    models = {}
    for name, variant, extra in rows_spec:
        torch.manual_seed(1)
        model = build_faster_rcnn(num_classes=num_classes, variant=variant, **model_kwargs, **extra)
        model.load_state_dict(base_state, strict=False)
        model.to(device)
        opt, adv_opt, _ = _make_optimizers(model, train_cfg)
        models[name] = (model, opt, adv_opt)

    def step(name, b):
        model, opt, adv_opt = models[name]
        images, targets = batches[b]
        # A small LR and clipping: a randomly initialised R50 diverges within a few steps
        # at the configs' LR without warm-up, and a NaN would stop the benchmark.
        train_step(model, images, targets, opt=opt, adv_opt=adv_opt, grad_clip=10.0)

    def free_grads(name):
        # Outside the measured step: the CPU profiler sees the frees of blocks allocated
        # before it only sometimes, which would shift the measured peak by their size.
        for o in models[name][1:]:
            if o is not None:
                o.zero_grad(set_to_none=True)

    def infer(name, b):
        model = models[name][0]
        model.eval()
        with torch.no_grad():
            model(batches[b][0])

    train_t = {name: [] for name in models}
    infer_t = {name: [] for name in models}
    # CPU seconds of this process: on a shared CPU machine they vary far less with other
    # users' load than wall time does, so on CPU the ratios are taken from them.
    train_c = {name: [] for name in models}
    infer_c = {name: [] for name in models}
    if args.mem_only:
        # One step each first: the optimizers' state is allocated in the first step and
        # must not count as the step's memory.
        for name in models:
            step(name, 0)

    def timed(fn, name, r, wall, cpu):
        best_wall, best_cpu = fastest_run(partial(fn, name, r), repeats=args.repeats, device=device)
        if r:  # round 0 warms up
            wall[name].append(best_wall)
            cpu[name].append(best_cpu)

    # Inference first, before any training step: every model still has the same detector
    # weights (PGAN's generator is the identity it starts as), so all send the same
    # proposals and detections to NMS and the ratio is the head's own extra work. Timed
    # after training, the variants' detectors would have drifted apart and their different
    # proposals would change NMS and post-processing work by chance.
    for r in range(0 if args.mem_only or args.no_infer else n_batches):
        for name in rotated(models, r):
            timed(infer, name, r, infer_t, infer_c)
    for r in range(0 if args.mem_only else n_batches):
        for name in rotated(models, r):
            timed(step, name, r, train_t, train_c)
        logger.info("round %d/%d done", r, n_batches - 1)

    # Peak memory: median over --mem-batches batches (the number of proposals, hence of
    # small ROIs and of ROI-stack sizes, varies a little from batch to batch).
    mem_batches = range(min(args.mem_batches, n_batches))
    peak, breakdowns = {}, {}
    for name in models:
        values = []
        for b in mem_batches:
            rows = [] if args.breakdown and b == 0 and device.type == "cpu" else None
            free_grads(name)
            values.append(peak_bytes(lambda n=name, b=b: step(n, b), device, rows))
            if rows is not None:
                breakdowns[name] = rows
                logger.info(
                    "%s: peak %.1f MB; ops at the highest live memory "
                    "(peak MB, MB before, op, shapes)\n%s",
                    name, values[-1] / 2**20,
                    "\n".join(f"  {a:.1f} {bf:.1f} {op} {sh}" for a, bf, op, sh in rows),
                )  # fmt: skip
        peak[name] = statistics.median(values)

    on_cpu = device.type == "cpu"
    train_r, infer_r = (train_c, infer_c) if on_cpu else (train_t, infer_t)
    nan = float("nan")

    def med(values):
        return statistics.median(values) if values else nan

    rows = []
    for name in models:
        rows.append(
            {
                "variant": name,
                "train_step_wall_s": med(train_t[name]),
                "train_step_cpu_s": med(train_c[name]),
                "train_ratio": ratio_of_totals(train_r[name], train_r["baseline"]),
                "peak_mem_mb": peak[name] / 2**20,
                "mem_ratio": peak[name] / peak["baseline"],
                "infer_wall_s": med(infer_t[name]) if infer_t[name] else nan,
                "infer_cpu_s": med(infer_c[name]) if infer_c[name] else nan,
                "infer_ratio": ratio_of_totals(infer_r[name], infer_r["baseline"]),
            }
        )
    kind = "CPU s" if on_cpu else "s"
    cols = ["variant", f"train step ({kind})", "x baseline", "peak mem (MB)", "x baseline"]
    cols += [f"infer ({kind})", "x baseline", "train wall (s)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        tr = r["train_step_cpu_s"] if on_cpu else r["train_step_wall_s"]
        inf = r["infer_cpu_s"] if on_cpu else r["infer_wall_s"]
        lines.append(
            f"| {r['variant']} | {tr:.3f} | {r['train_ratio']:.2f} | "
            f"{r['peak_mem_mb']:.0f} | {r['mem_ratio']:.2f} | {inf:.3f} | "
            f"{r['infer_ratio']:.2f} | {r['train_step_wall_s']:.2f} |"
        )
    return {"rows": rows, "table": "\n".join(lines), "breakdown": breakdowns}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["tiny"])
    p.add_argument("--variants", nargs="+", help="builder variants to run (baseline always)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after 1 warm-up)")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs per row and batch; the fastest is kept"
    )
    p.add_argument("--mem-batches", type=int, default=3, help="batches for the peak median")
    p.add_argument("--no-stage1", action="store_true", help="leave out the ASDN stage-1 row")
    p.add_argument("--no-ckpt", action="store_true", help="leave out the 'ckpt' rows")
    p.add_argument(
        "--defaults-only",
        action="store_true",
        help="only the rows with default settings (baseline, pgan, asdn, astn, asdn+astn)",
    )
    p.add_argument("--no-infer", action="store_true", help="do not time inference")
    p.add_argument(
        "--mem-only",
        action="store_true",
        help="peak memory only (deterministic: needs no quiet machine)",
    )
    p.add_argument(
        "--breakdown", action="store_true", help="log the ops at each variant's memory peak (CPU)"
    )
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--backbone", choices=["tiny", "resnet18", "resnet50"])
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument("--rois-per-image", type=int, help="box_batch_size_per_image")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", type=Path, help="write <out>/bench_<preset>.json here")
    p.add_argument("--data-root", help="data root (default: $GANAUG_DATA_ROOT)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.variants:
        args.variants = sorted(set(args.variants) | {"baseline"})
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {
        "backbone": args.backbone, "min_size": args.min_size, "max_size": args.max_size,
        "box_batch_size_per_image": args.rois_per_image,
    }  # fmt: skip
    for preset in args.preset:
        model_kwargs = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v}}
        result = bench(model_kwargs, args, device)
        logger.info(
            "preset %s %s, device %s, threads %d, batch %d, %d rounds\n%s",
            preset, model_kwargs, device, torch.get_num_threads(), args.batch_size,
            args.rounds, result["table"],
        )  # fmt: skip
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            meta.update(preset=preset, model=model_kwargs, threads=torch.get_num_threads())
            (args.out / f"bench_{preset}.json").write_text(
                json.dumps({"args": meta, **result}, indent=2)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
