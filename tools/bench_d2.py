"""Cost of ganaug's detectron2 ROI heads relative to StandardROIHeads, measured in one run.

For each model size (``tiny``: configs/detectron2/coco128_tiny_*.yaml, ResNet-18-GN with a
64-channel FPN; ``r50``: detectron2's Faster R-CNN R50-FPN 1x, random init, 512 sampled
ROIs per image) every head starts from the same detector weights and trains on the same
coco128 batches (mapped once by detectron2's ``DatasetMapper``, flip off). Steps are
interleaved (round r runs every head once on batch r, each round starting at a different
head, after one warm-up round); each head runs ``--repeats`` times per batch and the
fastest is kept; times are medians over rounds, ratios are totals over rounds divided by
the baseline's:

* train step: what ``SimpleTrainer.run_step`` does (forward, one backward, the adversary
  hook's Adam step, the detector's SGD step), in CPU seconds of this process (on a shared
  machine they vary far less with other users' load than wall time; wall time is kept in
  the JSON);
* peak memory: the peak of tensor bytes allocated *during* one train step (activations,
  gradients, temporaries), from the profiler's allocation events on CPU, CUDA
  ``max_memory_allocated`` on a GPU; not the process RSS;
* inference: ``model.eval()`` forward on the same images, measured before any training
  step, while all heads share the same detector weights (PGAN's generator is the identity
  it starts as), so that every model sends the same proposals and detections to NMS;
  ``--infer-only`` measures only this.

ASDN rows are stage 2 (joint training: the cost targets are for it); ``--stage1`` adds a
stage-1 row (sliding-window search). Targets (issue 3): ASDN, ASTN, both <= 1.25x baseline
train step, PGAN <= 1.4x; peak memory <= 1.2x; inference unchanged for ASDN/ASTN, <= 1.1x
for PGAN.

Example (the numbers in docs/readme/detectron2.md; a quiet machine)::

    python tools/bench_d2.py --models tiny r50 --rounds 3 --repeats 2 --out outputs/d2_bench.json
    python tools/bench_d2.py --infer-only --heads baseline pgan --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
from functools import partial
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

import ganaug.detectron2 as gd
from ganaug.benchmark import fastest_run, peak_bytes, ratio_of_totals, rotated

logger = logging.getLogger("bench_d2")

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "detectron2"
# (row, config suffix, extra overrides)
HEADS = [
    ("baseline", "baseline", []),
    ("pgan", "pgan", []),
    ("asdn (stage 2)", "asdn", ["MODEL.GANAUG.ASDN.STAGE1_ITERS", 0]),
    ("astn", "astn", []),
    ("asdn+astn (stage 2)", "asdn_astn", ["MODEL.GANAUG.ASDN.STAGE1_ITERS", 0]),
]
STAGE1 = ("asdn (stage 1)", "asdn", ["MODEL.GANAUG.ASDN.STAGE1_ITERS", 10**9])
R50 = {
    "baseline": "model_zoo/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "pgan": "faster_rcnn_R_50_FPN_1x_pgan.yaml",
    "asdn": "faster_rcnn_R_50_FPN_1x_asdn.yaml",
    "astn": "faster_rcnn_R_50_FPN_1x_astn.yaml",
    "asdn_astn": "faster_rcnn_R_50_FPN_1x_asdn_astn.yaml",
}


def _cfg(model: str, suffix: str, extra: list, args, device: str):
    cfg = get_cfg()
    gd.add_ganaug_config(cfg)
    if model == "tiny":
        gd.merge_ganaug_config_file(cfg, CONFIGS / f"coco128_tiny_{suffix}.yaml")
        sizes = (args.tiny_min_size, args.tiny_max_size)
    else:
        path = R50[suffix]
        if path.startswith(gd.MODEL_ZOO_PREFIX):
            from detectron2 import model_zoo

            cfg.merge_from_file(model_zoo.get_config_file(path[len(gd.MODEL_ZOO_PREFIX) :]))
        else:
            gd.merge_ganaug_config_file(cfg, CONFIGS / path)
        sizes = (args.r50_min_size, args.r50_max_size)
    opts = [
        "MODEL.DEVICE", device,
        "MODEL.WEIGHTS", "",  # random init: no weights can be downloaded here
        "MODEL.ROI_HEADS.NUM_CLASSES", 80,
        "INPUT.MIN_SIZE_TRAIN", (sizes[0],),
        "INPUT.MAX_SIZE_TRAIN", sizes[1],
        "INPUT.MIN_SIZE_TEST", sizes[0],
        "INPUT.MAX_SIZE_TEST", sizes[1],
        "INPUT.RANDOM_FLIP", "none",  # the same batches for every head
        "DATASETS.TRAIN", ("coco128",),
        *extra,
    ]  # fmt: skip
    if model == "r50":
        opts += [
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512,
            # From scratch: FrozenBN with its initial statistics is the identity, and 50
            # unnormalised layers overflow (non-finite proposals, a handful survive);
            # GroupNorm and every stage trained, as in the tiny config.
            "MODEL.RESNETS.NORM", "GN",
            "MODEL.RESNETS.STRIDE_IN_1X1", False,
            "MODEL.BACKBONE.FREEZE_AT", 0,
            # A random R50 diverges within a few steps at the model zoo's LR 0.02 without
            # warm-up (a non-finite gradient stops the benchmark): a small LR and clipping.
            "SOLVER.BASE_LR", 1e-3,
            "SOLVER.CLIP_GRADIENTS.ENABLED", True,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 5.0,
        ]  # fmt: skip
    cfg.merge_from_list(opts)
    return cfg


def _small_share(model, fn) -> list[int] | None:
    """``[small ROIs, all ROIs]`` that ``fn`` (an inference) sends through a PGAN head."""
    head = getattr(model, "roi_heads", None)
    if not isinstance(head, gd.PerceptualGANROIHeads):
        return None
    counts = [0, 0]

    def count(i):
        def hook(module, args):
            counts[i] += int(args[0].shape[0])

        return hook

    handles = [
        head.pgan.generator.register_forward_pre_hook(count(0)),
        head.box_head.register_forward_pre_hook(count(1)),
    ]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return counts


def _batches(cfg, n: int, batch_size: int) -> list[list[dict]]:
    """``n`` batches of coco128 images with annotations, mapped once (fixed resize)."""
    dicts = [d for d in DatasetCatalog.get("coco128") if d.get("annotations")]
    mapper = DatasetMapper(cfg, is_train=True)
    mapped = [mapper(copy.deepcopy(d)) for d in dicts[: n * batch_size]]
    if len(mapped) < n * batch_size:
        raise ValueError(f"bench_d2: coco128 has only {len(mapped)} annotated images")
    return [mapped[i * batch_size : (i + 1) * batch_size] for i in range(n)]


def bench_model(model_name: str, args, device: torch.device) -> list[dict]:
    heads = HEADS + ([STAGE1] if args.stage1 else [])
    heads = [h for h in heads if h[1] in args.heads]
    if heads[0][0] != "baseline":
        raise ValueError("bench_d2: --heads must include baseline (ratios are relative to it)")
    n_batches = args.rounds + 1
    cfg0 = _cfg(model_name, "baseline", [], args, device.type)
    batches = _batches(cfg0, n_batches, args.batch_size)
    torch.manual_seed(0)
    base_state = gd.GanaugTrainer.build_model(cfg0).state_dict()
    runs = {}
    for row, suffix, extra in heads:
        cfg = _cfg(model_name, suffix, extra, args, device.type)
        torch.manual_seed(1)
        model = gd.GanaugTrainer.build_model(cfg)  # also tracks original sizes for PGAN
        missing = model.load_state_dict(base_state, strict=False).missing_keys
        if any(not k.startswith("roi_heads.") for k in missing):
            raise RuntimeError(f"bench_d2: {row} misses detector weights {missing[:3]}")
        model.train()
        optimizer = build_optimizer(cfg, model)
        hook = (
            gd.AdversaryOptimizerHook.from_config(cfg, model)
            if gd.find_adversaries(model)
            else None
        )
        runs[row] = (model, optimizer, hook)

    def step(row: str, b: int) -> None:
        model, optimizer, hook = runs[row]
        model.train()
        losses = model(batches[b])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        if hook is not None:
            hook.step()  # what SimpleTrainer's after_backward does
        optimizer.step()

    def infer(row: str, b: int) -> None:
        model = runs[row][0]
        model.eval()
        inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batches[b]]
        with torch.no_grad():
            model(inputs)

    names = list(runs)
    wall = {k: {n: [] for n in names} for k in ("train", "infer")}
    cpu = {k: {n: [] for n in names} for k in ("train", "infer")}
    # Inference first, while every model still has the same detector weights and PGAN's
    # generator is the identity it starts as: the same proposals and detections reach
    # NMS in every model, so the ratio is the head's own cost (after training steps the
    # from-scratch models' score distributions, and with them NMS's work, drift apart).
    phases = [("infer", infer)] + ([] if args.infer_only else [("train", step)])
    with EventStorage(0) as storage:
        for kind, fn in phases:
            for r in range(n_batches):
                for name in rotated(names, r):
                    best_t, best_c = fastest_run(
                        partial(fn, name, r), repeats=args.repeats, device=device
                    )
                    if r:  # round 0 warms up
                        wall[kind][name].append(best_t)
                        cpu[kind][name].append(best_c)
                storage.step()
                logger.info("%s %s: round %d/%d done", model_name, kind, r, n_batches - 1)
        small_share = {n: _small_share(runs[n][0], lambda n=n: infer(n, 0)) for n in names}
        if not args.infer_only:
            peak = {n: peak_bytes(lambda n=n: step(n, 0), device) for n in names}

    timing = cpu if device.type == "cpu" else wall
    med = statistics.median
    rows = []
    for name in names:
        row = {
            "model": model_name,
            "variant": name,
            "infer_cpu_s": med(cpu["infer"][name]),
            "infer_wall_s": med(wall["infer"][name]),
            # Totals over the rounds (the same batches for every head), head / baseline.
            "infer_ratio": ratio_of_totals(timing["infer"][name], timing["infer"][names[0]]),
            "infer_ratio_rounds": [
                a / b for a, b in zip(timing["infer"][name], timing["infer"][names[0]])
            ],
            # PGAN: (ROIs through the generator, ROIs through the box head) in one
            # inference batch; the generator's inference cost scales with the first.
            "infer_small_rois": small_share[name],
        }
        if not args.infer_only:
            row.update(
                {
                    "train_step_cpu_s": med(cpu["train"][name]),
                    "train_step_wall_s": med(wall["train"][name]),
                    "train_ratio": ratio_of_totals(
                        timing["train"][name], timing["train"][names[0]]
                    ),
                    "train_ratio_rounds": [
                        a / b for a, b in zip(timing["train"][name], timing["train"][names[0]])
                    ],
                    "peak_mem_mb": peak[name] / 2**20,
                    "mem_ratio": peak[name] / peak[names[0]],
                }
            )
        rows.append(row)
    return rows


def _table(rows: list[dict], on_cpu: bool) -> str:
    kind = "CPU s" if on_cpu else "s"
    if "train_ratio" not in rows[0]:
        lines = [f"| model | head | inference ({kind}) | x baseline | small / all ROIs |"]
        lines.append("|---|---|---|---|---|")
        for r in rows:
            inf = r["infer_cpu_s"] if on_cpu else r["infer_wall_s"]
            share = r["infer_small_rois"]
            share = f"{share[0]} / {share[1]}" if share else ""
            lines.append(
                f"| {r['model']} | {r['variant']} | {inf:.3f} | {r['infer_ratio']:.2f} | {share} |"
            )
        return "\n".join(lines)
    cols = ["model", "head", f"train step ({kind})", "x baseline", "peak mem (MB)", "x baseline"]
    cols += [f"inference ({kind})", "x baseline"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        tr = r["train_step_cpu_s"] if on_cpu else r["train_step_wall_s"]
        inf = r["infer_cpu_s"] if on_cpu else r["infer_wall_s"]
        lines.append(
            f"| {r['model']} | {r['variant']} | {tr:.3f} | {r['train_ratio']:.2f} | "
            f"{r['peak_mem_mb']:.0f} | {r['mem_ratio']:.2f} | {inf:.3f} | "
            f"{r['infer_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "r50"], choices=["tiny", "r50"])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--tiny-min-size", type=int, default=320)
    p.add_argument("--tiny-max-size", type=int, default=427)
    p.add_argument("--r50-min-size", type=int, default=512)
    p.add_argument("--r50-max-size", type=int, default=640)
    p.add_argument("--stage1", action="store_true", help="add an ASDN stage-1 row")
    p.add_argument(
        "--heads", nargs="+", default=[h[1] for h in HEADS], choices=[h[1] for h in HEADS],
        help="heads to measure (baseline always needed)",
    )  # fmt: skip
    p.add_argument("--infer-only", action="store_true", help="inference rounds only")
    p.add_argument(
        "--repeats", type=int, default=1, help="runs per head and batch; the fastest is kept"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("detectron2", "fvcore", "ganaug"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for model_name in args.models:
        rows += bench_model(model_name, args, device)
        table = _table(rows, device.type == "cpu")
        logger.info(
            "device %s, threads %d, batch %d, %d rounds\n%s",
            device, torch.get_num_threads(), args.batch_size, args.rounds, table,
        )  # fmt: skip
        if args.out:  # after each model: a long run keeps what it has measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            meta["threads_used"] = torch.get_num_threads()
            args.out.write_text(json.dumps({"args": meta, "rows": rows, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
