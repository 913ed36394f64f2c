"""``ganaug rebalance``: recombine label maps toward a balanced class distribution."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ganaug.core.rebalance import (
    class_pixel_counts,
    colorize,
    load_label_maps,
    rebalance,
    save_report,
)
from ganaug.core.synthetic_writer import write_synthetic_set
from ganaug.p2p.common import add_label_args, parse_target, rules_for

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "rebalance",
        help="build rebalanced label maps (segment recombination) with a distribution report",
        description=__doc__,
    )
    add_label_args(p)
    p.add_argument("--out", required=True, help="output folder (labels/ + report)")
    p.set_defaults(func=run)


def run(args) -> int:
    names, maps, result, class_names = build(args)
    out = Path(args.out)
    stats = save_report(result, class_names, out.with_name(out.name + "_report"))
    # Each item's "image" is the colour rendering of its label map: the folder stays a
    # valid (image, label) pair set for viewers and loaders, without any generator.
    records = result.records
    out_names = [f"rebal_{i:05d}.png" for i in range(len(result.maps))]
    write_synthetic_set(
        out,
        names=out_names,
        labels=result.maps,
        generate=lambda labels: [colorize(lb) for lb in labels],
        seed=args.seed,
        checkpoint=None,
        records=records,
        class_stats=stats,
        extra={"kind": "rebalanced label maps (images are colour renderings)"},
    )
    print(Path(out.with_name(out.name + "_report"), "distribution.md").read_text())
    print(f"wrote {len(out_names)} label maps to {out}; report in {out.name}_report/")
    return 0


def build(args):
    class_names = [c.strip() for c in args.classes.split(",")]
    nc = len(class_names)
    names, maps = load_label_maps(args.labels, num_classes=nc, ignore_index=args.ignore_index)
    counts = class_pixel_counts(maps, num_classes=nc)
    target = parse_target(
        args.target, class_names=class_names, counts=counts, k=args.k, share=args.share
    )
    t0 = time.perf_counter()
    result = rebalance(
        maps,
        names,
        num_classes=nc,
        target=target,
        n_maps=args.n,
        rules=rules_for(class_names),
        seed=args.seed,
        max_pastes_per_map=args.max_pastes,
    )
    dt = time.perf_counter() - t0
    logger.info("Recombined %d label maps in %.2f s (%.1f maps/s).", args.n, dt, args.n / dt)
    return names, maps, result, class_names
