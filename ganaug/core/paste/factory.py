"""Build a configured :class:`CopyPaste` from plain settings (what the adapters' configs hold).

``make_sampler`` turns a selection name into a :class:`ClassSampler`;
``copy_paste_for_coco`` / ``copy_paste_for_label_maps`` bank the instances and return
the whole augmenter. ``read_per_class_metrics`` reads a ``per_class_metrics.json`` (the
project's evaluation output) for ``selection="metric"``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .copy_paste import CopyPaste, InstanceBank
from .selection import ClassSampler

logger = logging.getLogger(__name__)

SELECTIONS = ("uniform", "inverse", "target", "metric")

__all__ = [
    "SELECTIONS",
    "copy_paste_for_coco",
    "copy_paste_for_label_maps",
    "make_sampler",
    "read_per_class_metrics",
]


def read_per_class_metrics(
    path: str | os.PathLike, class_names: Sequence[str], *, label_offset: int = 0
) -> dict[int, float]:
    """Per-class metric from a ``per_class_metrics.json``, keyed by class id.

    Args:
        class_names: names in id order; id ``i + label_offset`` is ``class_names[i]``.

    Raises:
        ValueError: the file lacks ``per_class`` or names no class of ``class_names``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read per-class metrics {path}: {err}") from err
    per_class = data.get("per_class") if isinstance(data, dict) else None
    if not isinstance(per_class, dict):
        raise ValueError(f"{path}: expected a 'per_class' mapping of class name -> metric.")
    out = {}
    for i, name in enumerate(class_names):
        if name in per_class and per_class[name] is not None:
            out[i + label_offset] = float(per_class[name])
    if not out:
        raise ValueError(
            f"{path}: none of the classes {list(class_names)[:10]}... appear in per_class "
            f"(it has {list(per_class)[:10]})."
        )
    return out


def make_sampler(
    selection: str,
    *,
    counts: Mapping[int, int],
    classes: Sequence[int] | None = None,
    smoothing: float = 1.0,
    power: float = 1.0,
    target: Mapping[int, float] | None = None,
    metrics: Mapping[int, float] | None = None,
    rare_small_prob: float = 0.0,
    small_size: tuple[int, int] = (8, 32),
) -> ClassSampler:
    """A :class:`ClassSampler` by name: ``uniform``, ``inverse``, ``target`` or ``metric``.

    Args:
        counts: training-set frequency per class id.
        classes: restrict to these class ids (default: all in ``counts``).
        target: class -> desired share, for ``target``.
        metrics: class -> metric (higher is better), for ``metric``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
    keep = set(classes) if classes is not None else set(counts)
    counts = {c: n for c, n in counts.items() if c in keep}
    for c in keep:
        counts.setdefault(c, 0)
    kw = dict(rare_small_prob=rare_small_prob, small_size=tuple(small_size))
    if selection == "uniform":
        return ClassSampler.uniform(sorted(keep), **kw)
    if selection == "inverse":
        return ClassSampler.inverse_frequency(counts, smoothing=smoothing, power=power, **kw)
    if selection == "target":
        if not target:
            raise ValueError("selection='target' needs a target distribution (class -> share).")
        return ClassSampler.target_distribution(counts, target, **kw)
    if not metrics:
        raise ValueError("selection='metric' needs per-class metrics (class -> value).")
    return ClassSampler.metric_gaps(
        {c: v for c, v in metrics.items() if c in keep}, power=power, **kw
    )


def copy_paste_for_coco(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    selection: str = "inverse",
    cat_to_label: dict[int, int] | None = None,
    min_area: int = 16,
    max_per_class: int | None = 200,
    sampler_kwargs: dict | None = None,
    **paste_kwargs,
) -> CopyPaste:
    """Bank a COCO set's objects and configure copy-paste over them."""
    bank = InstanceBank.from_coco(
        ann_file, image_dir, min_area=min_area, max_per_class=max_per_class,
        cat_to_label=cat_to_label,
    )  # fmt: skip
    sampler = make_sampler(selection, counts=bank.class_counts(), **(sampler_kwargs or {}))
    return CopyPaste(bank=bank, sampler=sampler, **paste_kwargs)


def copy_paste_for_label_maps(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    *,
    classes: Sequence[int] | None = None,
    num_rare: int | None = None,
    selection: str = "inverse",
    ignore_index: int | None = 255,
    min_area: int = 16,
    max_per_class: int | None = 200,
    sampler_kwargs: dict | None = None,
    **paste_kwargs,
) -> CopyPaste:
    """Bank segments of ``classes`` (or the ``num_rare`` rarest by pixel count).

    Class frequencies are pixel counts over all label maps.
    """
    if classes is None and num_rare is None:
        raise ValueError("copy_paste_for_label_maps: give classes or num_rare.")
    if classes is None:
        # One pass for pixel counts, then bank only the rare classes.
        probe = InstanceBank.from_label_maps(
            pairs, classes=[], ignore_index=ignore_index, min_area=min_area
        )
        counts = probe.class_counts()
        classes = sorted(counts, key=lambda c: counts[c])[:num_rare]
        logger.info("Rarest %d classes by pixel count: %s", num_rare, classes)
    bank = InstanceBank.from_label_maps(
        pairs, classes=list(classes), ignore_index=ignore_index, min_area=min_area,
        max_per_class=max_per_class,
    )  # fmt: skip
    if len(bank) == 0:
        raise ValueError(
            f"No segment of classes {list(classes)} with >= {min_area} pixels in "
            f"{len(pairs)} label maps."
        )
    sampler = make_sampler(
        selection, counts=bank.class_counts(), classes=bank.classes, **(sampler_kwargs or {})
    )
    return CopyPaste(bank=bank, sampler=sampler, **paste_kwargs)
