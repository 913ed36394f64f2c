"""Statistics of image + label-map folders (semantic segmentation).

Label maps are read one at a time and reduced to per-value histograms, so memory does
not grow with the number of images. Each class's connected regions stand in for objects
when measuring scale: a label map has no instances, hence no occlusion figure either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ganaug.datasets import camvid
from ganaug.inspect._common import (
    IMAGE_EXTENSIONS,
    InspectError,
    ProblemLog,
    ScaleAccumulator,
    examples,
    imbalance_ratio,
)
from ganaug.inspect.formats import Split

logger = logging.getLogger(__name__)

_SINGLE_CHANNEL_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")

# CamVid's 11-class SegNet version (the layout train/ + trainannot/ with value 11 = void).
CAMVID_CLASSES = camvid.CLASSES
CAMVID_IGNORE = camvid.VOID


def read_label_map(path: str | Path) -> np.ndarray:
    """Decode a single-channel label map (palette PNGs give their indices).

    Shape:
        Returns ``(H, W)`` uint8 or int32.

    Raises:
        InspectError: the file cannot be decoded, or has colour channels, naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in _SINGLE_CHANNEL_MODES:
                raise InspectError(
                    f"{path}: expected a single-channel label map (mode L, P or I;16), got "
                    f"mode {mode} with {len(img.getbands())} channels; colour-coded labels "
                    f"must be converted to class indices first"
                )
            arr = np.asarray(img)
    except InspectError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InspectError(f"{path}: cannot be decoded as a label map: {err}") from err
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.int32)
    if arr.ndim != 2:
        raise InspectError(f"{path}: expected a 2-D label map, got shape {arr.shape}")
    return arr


def _key(name: str, suffix: str) -> str:
    if suffix and name.endswith(suffix):
        return name[: -len(suffix)]
    return Path(name).stem


def pair_files(split: Split, *, img_suffix: str = "", seg_suffix: str = ""):
    """Match label files to image files by name.

    Only file names are held (about 0.1 kB each), never pixel data.

    Returns ``(pairs, images_without_label, labels_without_image)`` where ``pairs`` is a
    generator of ``(image_path | None, label_path)``, sorted by label name.
    """

    def names(folder: Path) -> list[str]:
        with os.scandir(folder) as it:
            return sorted(
                e.name
                for e in it
                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )

    images = {_key(n, img_suffix): n for n in names(split.images)}
    labels = names(split.labels)
    label_keys = {_key(n, seg_suffix) for n in labels}
    no_label = [str(split.images / images[k]) for k in images if k not in label_keys]
    no_image = [str(split.labels / n) for n in labels if _key(n, seg_suffix) not in images]

    def pairs():
        for n in labels:
            img = images.get(_key(n, seg_suffix))
            yield (split.images / img if img else None), split.labels / n

    return pairs(), no_label, no_image


def inspect_labelmaps(
    splits: Sequence[Split],
    *,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
    components: bool = True,
    strict: bool = False,
    img_suffix: str = "",
    seg_suffix: str = "",
) -> dict:
    """Statistics of label maps in one or more splits, streamed file by file.

    Args:
        splits: image/label folder pairs (see :func:`ganaug.inspect.formats.find_labelmap_splits`).
        classes: declared class names, index = label value; values at or beyond
            ``len(classes)`` (other than ``ignore_index``) are reported as outside the
            declared classes. ``None``: every value seen is a class ``class_<v>``.
        ignore_index: label value that marks unlabelled pixels.
        components: measure connected regions per class (scale buckets and CV).
        strict: raise on the first unreadable label map instead of reporting it.

    Returns:
        Report dict like :func:`ganaug.inspect.coco.inspect_coco`'s with
        ``count_unit="pixels"``; ``per_class`` entries carry pixels, share, images,
        image_share, regions and the scale figures of the regions.
    """
    if not splits:
        raise InspectError("no image/label-map folder pairs to inspect")
    declared = list(classes) if classes is not None else None
    pixels = np.zeros(256, dtype=np.int64)
    presence = np.zeros(256, dtype=np.int64)
    scale = ScaleAccumulator(num_classes=256)
    unreadable, empty, size_mismatch = ProblemLog(), ProblemLog(), ProblemLog()
    no_label, no_image = [], []
    outside_files: dict[int, int] = {}
    outside_examples: list[str] = []
    n_maps = 0

    not_images: list[str] = []
    for split in splits:
        pairs, nl, ni = pair_files(split, img_suffix=img_suffix, seg_suffix=seg_suffix)
        no_label += nl
        no_image += ni
        # Files a training loader would trip over: anything that is not an image.
        for folder in {split.images, split.labels}:
            with os.scandir(folder) as it:
                not_images += sorted(
                    str(folder / e.name)
                    for e in it
                    if e.is_file()
                    and not e.name.startswith(".")
                    and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS
                )
        logger.info("%s: reading label maps in %s", split.name, split.labels)
        for image_path, label_path in pairs:
            try:
                lab = read_label_map(label_path)
            except InspectError as err:
                if strict:
                    raise
                # The message starts with the path, which the entry already holds.
                msg = str(err).removeprefix(f"{label_path}: ")
                unreadable.add({"file": str(label_path), "error": msg})
                logger.warning("%s", err)
                continue
            n_maps += 1
            if image_path is not None:
                _check_image(image_path, lab.shape, size_mismatch, unreadable, strict)

            hist = np.bincount(lab.ravel(), minlength=256)
            if len(hist) > len(pixels):
                extra = len(hist) - len(pixels)
                pixels = np.concatenate([pixels, np.zeros(extra, np.int64)])
                presence = np.concatenate([presence, np.zeros(extra, np.int64)])
                scale.grow(len(hist))
            pixels[: len(hist)] += hist
            present = np.flatnonzero(hist)
            present = present[present != ignore_index]
            presence[present] += 1
            if present.size == 0:
                empty.add(str(label_path))
            if declared is not None:
                outside = present[present >= len(declared)]
                for v in outside.tolist():
                    outside_files[v] = outside_files.get(v, 0) + 1
                if outside.size and len(outside_examples) < 20:
                    outside_examples.append(str(label_path))
            if components:
                _add_regions(lab, present, scale)

    if n_maps == 0 and not unreadable:
        raise InspectError(f"no label maps found in {', '.join(str(s.labels) for s in splits)}")
    if ignore_index < len(pixels):
        ignored = int(pixels[ignore_index])
        pixels[ignore_index] = 0
        presence[ignore_index] = 0
    else:
        ignored = 0
    if declared is None:
        values = np.flatnonzero(pixels).tolist()
        names = [f"class_{v}" for v in values]
    else:
        values = list(range(len(declared)))
        names = [str(n) for n in declared]

    counts = np.array([pixels[v] if v < len(pixels) else 0 for v in values], dtype=np.int64)
    labelled = int(counts.sum())
    per_class = {}
    for name, v, c in zip(names, values, counts):
        entry = {
            "pixels": int(c),
            "share": float(c / labelled) if labelled else 0.0,
            "images": int(presence[v]) if v < len(presence) else 0,
            "image_share": float(presence[v] / n_maps) if n_maps and v < len(presence) else 0.0,
        }
        if components and v < scale.num_classes:
            entry["regions"] = int(scale.n[v])
            entry.update(scale.per_class(v))
        per_class[name] = entry

    # Scale over the reported classes only (values outside them are problems, not objects).
    overall = ScaleAccumulator(num_classes=len(values))
    if components and values:
        idx = np.array(values)
        overall.buckets, overall.n = scale.buckets[idx], scale.n[idx]
        overall.area_buckets = scale.area_buckets[idx]
        overall.s1, overall.s2 = scale.s1[idx], scale.s2[idx]
    outside_pixels = {str(v): int(pixels[v]) for v in sorted(outside_files) if v < len(pixels)}
    return {
        "format": "labelmap",
        "task": "segmentation",
        "source": ", ".join(f"{s.images} + {s.labels}" for s in splits),
        "splits": [s.name for s in splits],
        "classes": names,
        "classes_declared": declared is not None,
        "ignore_index": ignore_index,
        "count_unit": "pixels",
        "num_images": n_maps,
        "labelled_pixels": labelled,
        "ignored_pixels": ignored,
        "class_counts": {n: int(c) for n, c in zip(names, counts)},
        "imbalance_ratio": imbalance_ratio(counts),
        "absent_classes": [n for n, c in zip(names, counts) if c == 0],
        "per_class": per_class,
        "scale": overall.overall() if components else None,
        "occlusion": None,
        "problems": {
            "images_without_annotations": empty.to_dict(),
            "images_without_label_map": {"count": len(no_label), "examples": examples(no_label)},
            "label_maps_without_image": {"count": len(no_image), "examples": examples(no_image)},
            "unreadable_files": unreadable.to_dict(),
            "not_image_files": {"count": len(not_images), "examples": examples(not_images)},
            "size_mismatch": size_mismatch.to_dict(),
            "labels_outside_classes": {
                "count": sum(outside_files.values()),
                "unit": "label maps containing the value",
                "files_per_value": {str(k): v for k, v in sorted(outside_files.items())},
                "pixels_per_value": outside_pixels,
                "examples": outside_examples,
            },
        },
    }


def _add_regions(lab: np.ndarray, present: np.ndarray, scale: ScaleAccumulator) -> None:
    """Connected regions (8-connectivity) of each present class, into ``scale``."""
    cls, areas = [], []
    for v in present.tolist():
        binary = (lab == v).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        if n > 1:
            a = stats[1:, cv2.CC_STAT_AREA]
            areas.append(a)
            cls.append(np.full(len(a), v, dtype=np.int64))
    if cls:
        scale.add(classes=np.concatenate(cls), areas=np.concatenate(areas))


def _check_image(
    path: Path, shape, mismatch: ProblemLog, unreadable: ProblemLog, strict: bool
) -> None:
    """Header read plus PIL's integrity check (PNG chunk CRCs catch truncated files): the
    image must open and match the label map's size. Pixels are not decoded."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        if strict:
            raise InspectError(f"{path}: cannot be read as an image: {err}") from err
        unreadable.add({"file": str(path), "error": f"cannot be read as an image: {err}"})
        return
    if (h, w) != tuple(shape):
        mismatch.add({"file": str(path), "image": [h, w], "label": list(shape)})
