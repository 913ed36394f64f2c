"""``ganaug p2p-fid``: FID/KID of a synthetic set against real images (in-domain features)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ganaug.core.p2p_fidelity import (
    fid_kid,
    load_feature_extractor,
    save_feature_extractor,
    train_feature_extractor,
)

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "p2p-fid",
        help="FID/KID of generated vs real images with a feature net trained on the real data",
        description=__doc__,
    )
    p.add_argument("--real", required=True, help="folder of real images")
    p.add_argument("--fake", required=True, help="folder of generated images")
    p.add_argument("--extractor", required=True, help="feature net file (trained if missing)")
    p.add_argument("--train-images", help="real images to train the feature net on")
    p.add_argument("--train-labels", help="their label maps (same file names)")
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--ignore-index", type=int, default=11)
    p.add_argument("--steps", type=int, default=300, help="feature net training steps")
    p.add_argument("--out", help="write the result JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.extractor)
    if path.is_file():
        net = load_feature_extractor(path)
    else:
        if not (args.train_images and args.train_labels):
            raise SystemExit(
                f"{path} does not exist: give --train-images and --train-labels to train it."
            )
        imgs = sorted(Path(args.train_images).glob("*.png"))
        labels = [Path(args.train_labels) / p.name for p in imgs]
        missing = [str(p) for p in labels if not p.is_file()]
        if missing:
            raise SystemExit(f"Label maps missing for {len(missing)} images, e.g. {missing[0]}.")
        net = train_feature_extractor(
            imgs,
            labels,
            num_classes=args.num_classes,
            ignore_index=args.ignore_index,
            steps=args.steps,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        save_feature_extractor(net, path)
        logger.info("Saved the feature extractor to %s.", path)
    result = fid_kid(args.real, args.fake, extractor=net)
    result["extractor_file"] = str(path)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
