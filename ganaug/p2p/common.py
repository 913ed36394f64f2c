"""Argument helpers shared by the Pix2PixHD commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from ganaug.core.rebalance import CAMVID_CLASSES, CAMVID_IGNORE_INDEX, CAMVID_RULES, rarest_target


def add_label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="folder of real single-channel label PNGs")
    p.add_argument(
        "--classes",
        default=",".join(CAMVID_CLASSES),
        help="comma-separated class names, in id order (default: CamVid's 11)",
    )
    p.add_argument(
        "--ignore-index", type=int, default=CAMVID_IGNORE_INDEX, help="void label value (11)"
    )
    p.add_argument("--n", type=int, default=200, help="number of new label maps")
    p.add_argument("--k", type=int, default=3, help="raise the k rarest classes ...")
    p.add_argument("--share", type=float, default=0.05, help="... to this share of pixels each")
    p.add_argument(
        "--target",
        default=None,
        help="explicit targets instead of --k/--share, e.g. 'Pedestrian=0.05,Bicyclist=0.04'",
    )
    p.add_argument("--max-pastes", type=int, default=60, help="segments pasted per map at most")
    p.add_argument("--seed", type=int, default=0)


def parse_target(
    spec: str | None, *, class_names: Sequence[str], counts: np.ndarray, k: int, share: float
) -> dict[int, float]:
    """``--target`` string or the k-rarest rule -> {class id: share}."""
    if not spec:
        return rarest_target(counts, k=k, share=share)
    target = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in class_names:
            raise SystemExit(f"--target: unknown class {name!r}; classes are {list(class_names)}.")
        try:
            target[class_names.index(name)] = float(value)
        except ValueError as err:
            raise SystemExit(f"--target: {part!r} is not NAME=SHARE.") from err
    return target


def rules_for(class_names: Sequence[str]) -> dict:
    """CamVid placement rules when the classes are CamVid's, else none (permissive)."""
    return dict(CAMVID_RULES) if tuple(class_names) == CAMVID_CLASSES else {}
