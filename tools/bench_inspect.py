"""Benchmark for ``ganaug inspect``: a COCO-scale annotation file and streaming label maps.

1. Writes a synthetic COCO instances file (default 800k boxes over 100k images, 80
   long-tailed classes), then times, in the same run, the standard library's
   ``json.load`` alone (the baseline any pure-Python reader pays), our parse (orjson when
   installed) and the full ``inspect_coco``; reports wall and CPU seconds and the ratio.
2. Writes N synthetic label maps for two values of N and runs the label-map inspection
   of each in a fresh subprocess, reporting the child's peak RSS: flat memory means the
   peak does not grow with N.

Usage::

    nice -n 10 .venv/bin/python tools/bench_inspect.py [--boxes 800000] [--maps 100 800]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_synthetic_coco(path: Path, *, boxes: int, images: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Zipf-like long tail over the classes, like COCO's person-heavy distribution.
    p = 1.0 / np.arange(1, classes + 1) ** 1.1
    cat = rng.choice(classes, size=boxes, p=p / p.sum()) + 1
    img = rng.integers(0, images, boxes) + 1
    side = np.exp(rng.normal(3.6, 1.0, boxes)).clip(2, 600)
    aspect = np.exp(rng.normal(0, 0.4, boxes))
    w, h = (side * aspect).clip(1, 640), (side / aspect).clip(1, 480)
    x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
    doc = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480}
            for i in range(1, images + 1)
        ],
        "categories": [{"id": c, "name": f"class_{c}"} for c in range(1, classes + 1)],
        "annotations": [
            {
                "id": i + 1,
                "image_id": int(img[i]),
                "category_id": int(cat[i]),
                "bbox": [round(float(x[i]), 2), round(float(y[i]), 2),
                         round(float(w[i]), 2), round(float(h[i]), 2)],
                "area": round(float(w[i] * h[i]), 2),
                "iscrowd": 0,
            }
            for i in range(boxes)
        ],
    }  # fmt: skip
    with open(path, "w") as f:
        json.dump(doc, f)


def bench_coco(args, tmp: Path) -> dict:
    from ganaug.inspect.coco import inspect_coco, load_coco_json

    path = tmp / "instances_synthetic.json"
    t0 = time.perf_counter()
    write_synthetic_coco(path, boxes=args.boxes, images=args.images, classes=80, seed=0)
    t_write = time.perf_counter() - t0

    def timed(fn, keep: bool = False):
        # Wall and CPU seconds: on a shared machine the CPU time is the steadier figure.
        # Results are dropped unless kept, so one parse does not inflate the next's peak RSS.
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times = (time.perf_counter() - w0, time.process_time() - c0)
        return (out, *times) if keep else times

    def stdlib_load():
        with open(path, "rb") as f:
            return json.load(f)

    t_load, c_load = timed(stdlib_load)
    t_parse, c_parse = timed(lambda: load_coco_json(path))
    report, t_inspect, c_inspect = timed(lambda: inspect_coco(path, check_images="none"), keep=True)
    return {
        "boxes": args.boxes,
        "images": args.images,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "write_s": round(t_write, 2),
        "parser": "orjson" if importlib.util.find_spec("orjson") else "json",
        "stdlib_json_load_s": round(t_load, 2),
        "stdlib_json_load_cpu_s": round(c_load, 2),
        "parse_s": round(t_parse, 2),
        "parse_cpu_s": round(c_parse, 2),
        "inspect_s": round(t_inspect, 2),
        "inspect_cpu_s": round(c_inspect, 2),
        "statistics_cpu_s": round(c_inspect - c_parse, 2),
        "inspect_over_stdlib_json_load": round(t_inspect / t_load, 2),
        "inspect_over_stdlib_json_load_cpu": round(c_inspect / c_load, 2),
        "overlapping_pairs": report["occlusion"]["overlapping_pairs"],
        "small_share": round(report["scale"]["small_share"], 3),
    }


def write_label_maps(root: Path, n: int, size: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        # Blocky maps (8x8 cells upsampled) so that regions have realistic sizes.
        cells = rng.integers(0, 12, (size // 8, size // 8)).astype(np.uint8)
        lab = np.kron(cells, np.ones((8, 8), np.uint8))
        Image.fromarray(lab).save(root / "annotations" / f"{i:05d}.png")
        Image.new("L", (size, size)).save(root / "images" / f"{i:05d}.jpg")


_CHILD = """
import sys, time
from ganaug.inspect import inspect_dataset
t0, c0 = time.perf_counter(), time.process_time()
r = inspect_dataset(sys.argv[1], ignore_index=255, recommend=False)
dt, dc = time.perf_counter() - t0, time.process_time() - c0
# VmHWM: this process's own peak RSS (ru_maxrss can carry the parent's across fork+exec).
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(r["num_images"], dt, dc, hwm)
"""


def bench_labelmaps(args, tmp: Path) -> list[dict]:
    out = []
    for n in args.maps:
        root = tmp / f"maps_{n}"
        write_label_maps(root, n, args.size, seed=n)
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True, check=True
        )
        count, seconds, cpu, rss_kb = proc.stdout.split()
        out.append(
            {
                "label_maps": int(count),
                "size": args.size,
                "seconds": round(float(seconds), 2),
                "cpu_s": round(float(cpu), 2),
                "cpu_ms_per_map": round(1000 * float(cpu) / int(count), 2),
                "peak_rss_mb": round(int(rss_kb) / 1024, 1),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=800_000)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--maps", type=int, nargs="+", default=[100, 800])
    parser.add_argument("--size", type=int, default=256, help="label-map side in pixels")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Label maps first: the children's peak must not include the big JSON's parent.
        maps = bench_labelmaps(args, tmp)
        result = {"coco": bench_coco(args, tmp), "labelmaps": maps}
    result["coco"]["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    text = json.dumps(result, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
