"""Cost of pasting: data-pipeline throughput per worker, learned-synthesizer step overhead.

1. Images per second of one data-loader worker (the main process, no DataLoader, one
   thread for torch and OpenCV) on coco128: the plain pipeline (decode JPEG, decode
   instance masks, to tensor) vs the same with 1-3 inverse-frequency pastes per image
   (alpha, gaussian; Poisson separately). Variants are interleaved over ``--rounds``
   rounds (order rotated) and the best round of each is kept, by wall clock and by the
   process's CPU time (the latter is what the worker costs when it has a core to itself),
   so that load from other processes on a shared machine hits all of them alike. Every
   variant is measured twice: minimal (as above) and ``_reference`` (plus what
   torchvision's detection reference recipe adds on both sides: uint8 mask tensors and
   ``RandomHorizontalFlip(0.5)``); each is compared with its own plain pipeline.
2. One detector train step vs one online step of the learned synthesizer (same detector,
   same images, synthesizer + discriminator + gradient reversal), interleaved, median.

    nice -n 10 .venv/bin/python tools/bench_paste.py --images 48 --steps 4
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ganaug.core.paste import ClassSampler, CopyPaste, InstanceBank
from ganaug.core.paste.data import CocoDetection, coco128_paths
from ganaug.core.paste.learned import (
    PlacementSynthesizer,
    RealismDiscriminator,
    TaskAwarePaste,
    instances_to_rgba,
)
from ganaug.data_root import dataset_dir
from ganaug.torchvision.paste import build_target_detector, detector_loss_fn

logger = logging.getLogger("bench_paste")


def pipeline_pass(ds, n, paste, seed, *, reference=False):
    """One pass over ``n`` images: ``(images/s by wall clock, images/s by CPU time)``.

    ``reference``: also what torchvision's detection reference recipe does per training
    image after decoding: masks as uint8 tensors and ``RandomHorizontalFlip(0.5)`` of image,
    boxes and masks (the same for plain and pasted samples).
    """
    rng = np.random.default_rng(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        image, target = ds[i]
        if paste is not None:
            image, target = paste(image, target, rng=rng)
        img_t = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        tgt = {k: torch.as_tensor(v) for k, v in target.items() if isinstance(v, np.ndarray)}
        if reference:
            tgt["masks"] = tgt["masks"].to(torch.uint8)
            if rng.random() < 0.5:
                w = img_t.shape[-1]
                img_t = img_t.flip(-1)
                tgt["masks"] = tgt["masks"].flip(-1)
                b = tgt["boxes"].clone()
                b[:, [0, 2]] = w - tgt["boxes"][:, [2, 0]]
                tgt["boxes"] = b
        del img_t, tgt
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def bench_pipeline(args):
    ann, img_dir = coco128_paths(dataset_dir("coco128"))
    # Both sides read the same dataset; its spare mask rows (np.empty, never touched by the
    # plain pipeline) let an in-place paste append its masks without copying the others.
    reserve = 0 if args.copying else 3
    ds = CocoDetection(ann, img_dir, with_masks=True, mask_reserve=reserve)
    bank = InstanceBank.from_coco(ann, img_dir, cat_to_label=ds.cat_to_label, max_per_class=50)
    sampler = ClassSampler.inverse_frequency(ds.class_counts(), smoothing=1.0)
    kw = dict(bank=bank, sampler=sampler, count=(1, 3))
    pastes = {
        "plain": None,
        "paste_alpha": CopyPaste(blend_mode="alpha", **kw),
        "paste_gaussian": CopyPaste(blend_mode="gaussian", **kw),
        "paste_poisson": CopyPaste(blend_mode="poisson", **kw),
    }
    for p in pastes.values():
        if p is not None:
            p.in_place = not args.copying  # a loader owns each freshly decoded sample
    variants = {(name, ref): p for ref in (False, True) for name, p in pastes.items()}
    n = min(args.images, len(ds))
    wall = {k: 0.0 for k in variants}
    cpu = {k: 0.0 for k in variants}
    pipeline_pass(ds, n, None, 0)  # warm the file cache
    pipeline_pass(ds, n, pastes["paste_alpha"], 0)  # and the bank's RGBA crops
    for r in range(args.rounds):
        # Rotate the order each round so that no variant always follows the same one.
        keys = list(variants)
        keys = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in keys:
            w, c = pipeline_pass(ds, n, variants[key], r, reference=key[1])
            wall[key], cpu[key] = max(wall[key], w), max(cpu[key], c)
    out = {}
    for name, ref in variants:
        base = ("plain", ref)
        out[name + ("_reference" if ref else "")] = {
            "img_per_s": wall[(name, ref)],
            "ratio_vs_plain": wall[(name, ref)] / wall[base],
            "img_per_cpu_s": cpu[(name, ref)],
            "cpu_ratio_vs_plain": cpu[(name, ref)] / cpu[base],
        }
    return out


def bench_learned(args):
    ann, img_dir = coco128_paths(dataset_dir("coco128"))
    ds = CocoDetection(ann, img_dir, with_masks=False)
    bank = InstanceBank.from_coco(
        ann, img_dir, image_ids=ds.ids[:20], cat_to_label=ds.cat_to_label, min_area=256
    )
    torch.manual_seed(0)
    images, targets = [], []
    for i in range(args.batch):
        im, t = ds[i + 2]
        images.append(torch.from_numpy(im).permute(2, 0, 1).float() / 255)
        targets.append(
            {"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"])}
        )
    if args.detector == "mobilenet":
        model = build_target_detector(
            num_classes=len(ds.cat_ids), min_size=args.min_size, max_size=args.min_size * 4 // 3
        )
    else:
        from ganaug.torchvision import build_faster_rcnn

        model = build_faster_rcnn(
            num_classes=len(ds.cat_ids), min_size=args.min_size, max_size=args.min_size * 4 // 3
        )
    fn = detector_loss_fn(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    tap = TaskAwarePaste(
        synthesizer=PlacementSynthesizer(in_size=64, width=16),
        discriminator=RealismDiscriminator(in_size=64, width=32),
    )
    insts = [bank[c][0] for c in bank.classes[: args.batch]]
    fg = instances_to_rgba(insts, size=64)
    labels = [i.label for i in insts]

    def base_step():
        loss = sum(fn(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def online():
        tap.online_step(target_fn=fn, target_optimizer=opt, images=images, targets=targets,
                        foregrounds=fg, labels=labels)  # fmt: skip

    base_step(), online()  # warm-up
    tb, to = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        base_step()
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        online()
        to.append(time.perf_counter() - t0)
    ratios = [o / b for o, b in zip(to, tb)]
    return {
        "detector": args.detector,
        "batch": args.batch,
        "min_size": args.min_size,
        "baseline_step_s_median": float(np.median(tb)),
        "online_step_s_median": float(np.median(to)),
        "ratio_of_medians": float(np.median(to) / np.median(tb)),
        "paired_ratios": ratios,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--min-size", type=int, default=256)
    p.add_argument("--detector", choices=("tiny", "mobilenet"), default="mobilenet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", choices=("pipeline", "learned"), nargs="*", default=[])
    p.add_argument("--out", default="outputs/bench_paste.json")
    p.add_argument(
        "--copying",
        action="store_true",
        help="paste on copies (session-2 behaviour) instead of in place with spare mask rows",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    # OpenCV has its own thread pool: one data-loader worker is one thread, on both sides.
    cv2.setNumThreads(args.threads)
    result = {"threads": args.threads}
    if "pipeline" not in args.skip:
        result["pipeline"] = bench_pipeline(args)
        logger.info("pipeline: %s", json.dumps(result["pipeline"], indent=1))
    if "learned" not in args.skip:
        result["learned"] = bench_learned(args)
        logger.info("learned: %s", json.dumps(result["learned"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
