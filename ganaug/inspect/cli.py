"""``ganaug inspect PATH``: diagnose a dataset's imbalance and recommend a technique."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ganaug.inspect._common import InspectError
from ganaug.inspect.formats import FORMATS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect",
        help="diagnose a dataset's class imbalance and recommend a technique",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    p.add_argument("path", help="COCO JSON (or its folder), label-map dataset, or class folders")
    p.add_argument("--format", choices=FORMATS, default=None, help="skip auto-detection")
    p.add_argument("--out", default=None, help="output folder (default: outputs/inspect/<name>)")
    p.add_argument(
        "--classes",
        default=None,
        help="declared class names: comma list, .txt (one per line) or .json file",
    )
    p.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="label-map value for unlabelled pixels (default 255; CamVid 11)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="label-map split to read (default train if present; 'all' for every one)",
    )
    p.add_argument("--images", default=None, help="COCO image folder if not beside the JSON")
    p.add_argument(
        "--check-images",
        choices=("auto", "none", "exists", "header"),
        default="auto",
        help="COCO: how far to check the image files (default auto: open each header up "
        "to 5000 images, only check existence beyond)",
    )
    p.add_argument(
        "--occlusion-iou",
        type=float,
        default=0.3,
        help="box IoU at or above which an instance counts as occluded (default 0.3)",
    )
    p.add_argument("--no-mask-overlap", action="store_true", help="COCO: skip mask IoU")
    p.add_argument(
        "--no-regions",
        action="store_true",
        help="label maps: skip connected-region scale statistics (faster)",
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable file instead of reporting it",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ganaug.inspect.api import inspect_dataset
    from ganaug.inspect.report import format_summary, write_report

    try:
        report = inspect_dataset(
            args.path,
            fmt=args.format,
            classes=args.classes,
            ignore_index=args.ignore_index,
            split=args.split,
            images_dir=args.images,
            strict=args.strict,
            occlusion_iou=args.occlusion_iou,
            mask_overlap=not args.no_mask_overlap,
            check_images=args.check_images,
            components=not args.no_regions,
        )
    except InspectError as err:
        sys.stderr.write(f"ganaug inspect: {err}\n")
        return 1
    out = Path(args.out) if args.out else Path("outputs/inspect") / report["name"]
    paths = write_report(report, out, plots=not args.no_plots)
    sys.stdout.write(format_summary(report) + "\n")
    sys.stdout.write("  written: " + ", ".join(str(p) for p in paths.values()) + "\n")
    return 0
