"""Cost of the ganaug detection heads relative to the baseline head, measured in one run.

Every variant starts from the same detector weights and trains on the same coco128
batches; steps are interleaved (round r runs every variant once) so that load changes on
a shared machine hit all variants alike, and the median over rounds is reported.

* train step: forward + backward + optimizer steps (detector and adversaries), seconds;
* peak memory: the peak of tensor bytes allocated *during* one train step (activations,
  gradients, temporaries; weights and optimizer state allocated before are not counted):
  CUDA ``max_memory_allocated`` on a GPU, the profiler's allocation events on CPU (not the
  process RSS);
* inference: ``model.eval()`` forward on the same images.

Targets (issue 3): ASDN, ASTN, both <= 1.25x baseline train step, PGAN <= 1.4x; peak
memory <= 1.2x; inference unchanged for ASDN/ASTN, <= 1.1x for PGAN.

Example::

    nice -n 10 python tools/bench_det.py --rounds 5 --out work_dirs/det/bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from ganaug.data_root import dataset_dir
from ganaug.datasets.coco import CocoDetectionDataset, collate_detection
from ganaug.torchvision import build_faster_rcnn
from ganaug.torchvision.engine import _make_optimizers, train_step

logger = logging.getLogger("bench_det")

# (row name, builder variant, extra builder kwargs)
ROWS = [
    ("baseline", "baseline", {}),
    ("pgan", "pgan", {}),
    ("asdn (stage 2)", "asdn", {"asdn_stage1_iters": 0}),
    ("astn", "astn", {}),
    ("asdn+astn (stage 2)", "asdn+astn", {"asdn_stage1_iters": 0}),
    ("asdn (stage 1)", "asdn", {"asdn_stage1_iters": 10**9}),
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_cpu_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _peak_bytes(fn, device) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - base
    return _peak_cpu_bytes(fn)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--min-size", type=int, default=256)
    p.add_argument("--max-size", type=int, default=384)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--data-root", help="data root (default: $GANAUG_DATA_ROOT)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ds = CocoDetectionDataset.from_root(dataset_dir("coco128", args.data_root))
    n_batches = args.rounds + 1
    # Images with small objects and without, so PGAN's routing has work to do.
    ids = ds.ids[: n_batches * args.batch_size]
    sub = ds.subset(ids)
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

    size = dict(min_size=args.min_size, max_size=args.max_size)
    torch.manual_seed(0)
    base_state = build_faster_rcnn(num_classes=ds.num_classes, **size).state_dict()
    train_cfg = {
        "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "warmup_iters": 0,
        "lr_drop_at": 1.0, "adv_lr": 1e-4, "iters": 100,
    }  # fmt: skip
    models = {}
    for name, variant, extra in ROWS:
        torch.manual_seed(1)
        model = build_faster_rcnn(num_classes=ds.num_classes, variant=variant, **size, **extra)
        model.load_state_dict(base_state, strict=False)
        model.to(device)
        opt, adv_opt, _ = _make_optimizers(model, train_cfg)
        models[name] = (model, opt, adv_opt)

    def step(name, b):
        model, opt, adv_opt = models[name]
        images, targets = batches[b]
        train_step(model, images, targets, opt=opt, adv_opt=adv_opt)

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
    for r in range(n_batches):
        for name in models:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step(name, r)
            _sync(device)
            if r:
                train_t[name].append(time.perf_counter() - t0)
                train_c[name].append(time.process_time() - c0)
        for name in models:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            infer(name, r)
            _sync(device)
            if r:
                infer_t[name].append(time.perf_counter() - t0)
                infer_c[name].append(time.process_time() - c0)
        logger.info("round %d/%d done", r, n_batches - 1)

    peak = {name: _peak_bytes(lambda n=name: step(n, 0), device) for name in models}

    on_cpu = device.type == "cpu"
    train_r, infer_r = (train_c, infer_c) if on_cpu else (train_t, infer_t)
    med = statistics.median
    rows = []
    for name in models:
        rows.append(
            {
                "variant": name,
                "train_step_wall_s": med(train_t[name]),
                "train_step_cpu_s": med(train_c[name]),
                "train_ratio": med(train_r[name]) / med(train_r["baseline"]),
                "peak_mem_mb": peak[name] / 2**20,
                "mem_ratio": peak[name] / peak["baseline"],
                "infer_wall_s": med(infer_t[name]),
                "infer_cpu_s": med(infer_c[name]),
                "infer_ratio": med(infer_r[name]) / med(infer_r["baseline"]),
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
    table = "\n".join(lines)
    logger.info(
        "device %s, threads %d, batch %d, size %d-%d, %d rounds\n%s",
        device, torch.get_num_threads(), args.batch_size, args.min_size, args.max_size,
        args.rounds, table,
    )  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"args": meta, "rows": rows, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
