"""Cost of GAN oversampling for classification: generated samples per second and GAN
training time per epoch, at 64x64 (greyscale) by default.

The baseline, measured in the same run, is decoding + resizing real magnetic-tile JPEGs (what
a data loader does for a real image), so the printed ratio says how generation compares with
reading real data on the same machine at the same moment.

    nice -n 10 .venv/bin/python tools/bench_cls.py --image-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ganaug.classification.data import load_image
from ganaug.core.cgan import CGANConfig, CGANTrainer
from ganaug.data_root import dataset_dir


def bench_sampling(trainer: CGANTrainer, n: int, batch: int) -> tuple[float, float]:
    """Samples per wall-clock second and per CPU second of this process. On a shared machine
    the second is the one to trust: it does not count time spent waiting for a core."""
    labels = torch.arange(n) % trainer.num_classes
    trainer.sample(labels[:batch], batch_size=batch)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.sample(labels, batch_size=batch)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def bench_decode(size: int, n: int) -> float:
    files = sorted(dataset_dir("magnetic-tile").glob("*/*.jpg"))[:n]
    t0 = time.perf_counter()
    for f in files:
        load_image(f, image_size=size, channels=1)
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32], help="g_width/d_width")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--train-images", type=int, default=256, help="images in the timed epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    res = {"image_size": args.image_size, "threads": args.threads, "runs": []}
    decode = bench_decode(args.image_size, 200)
    res["baseline_decode_per_s"] = decode
    print(f"baseline: decode+resize real JPEGs: {decode:.0f} images/s")
    for w in args.widths:
        cfg = CGANConfig(image_size=args.image_size, g_width=w, d_width=w, epochs=1, batch_size=64)
        tr = CGANTrainer(num_classes=6, config=cfg, seed=0)
        x = torch.rand(args.train_images, 1, args.image_size, args.image_size) * 2 - 1
        y = torch.arange(args.train_images) % 6
        t0 = time.perf_counter()
        tr.fit(x, y)
        epoch_s = time.perf_counter() - t0
        sps, sps_cpu = bench_sampling(tr, args.samples, args.batch)
        g_params = sum(p.numel() for p in tr.generator.parameters())
        row = {
            "width": w,
            "generator_params": g_params,
            "samples_per_s": sps,
            "samples_per_cpu_s": sps_cpu,
            "ratio_vs_decode": sps / decode,
            "train_epoch_s": epoch_s,
            "train_images": args.train_images,
            "train_ms_per_image": 1000 * epoch_s / args.train_images,
        }
        res["runs"].append(row)
        print(
            f"width {w:3d} ({g_params / 1e6:.2f} M G params): {sps:7.0f} samples/s "
            f"({sps_cpu:.0f} per CPU-second) "
            f"({sps / decode:.2f}x decode), train epoch of {args.train_images} images "
            f"{epoch_s:.1f}s ({row['train_ms_per_image']:.1f} ms/image)"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
