"""Statistics of a class-folder tree (classification): one sub-folder of images per class.

A ``NAME.png`` lying beside an image ``NAME.jpg`` (or ``NAME_mask.png`` etc.) is a mask,
not a sample, as in magnetic-tile. Masks, when present, give the defect's pixel share and
the scale of its connected regions per class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ganaug.inspect._common import (
    IMAGE_EXTENSIONS,
    InspectError,
    ProblemLog,
    ScaleAccumulator,
    imbalance_ratio,
)
from ganaug.inspect.formats import class_folders

logger = logging.getLogger(__name__)

_MASK_SUFFIXES = ("_mask", "_label", "_gt", "_seg")
# Masks with anti-aliased edges: foreground is at least this grey value.
MASK_THRESHOLD = 128


def split_samples_and_masks(folder: Path) -> tuple[list[Path], dict[Path, Path]]:
    """Images of one class folder, and a map image -> mask for those that have one."""
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    samples, masks = [], {}
    for p in files:
        stem = p.stem
        base = next((stem[: -len(s)] for s in _MASK_SUFFIXES if stem.endswith(s)), None)
        if base is not None and any(q.stem == base for q in by_stem.get(base, [])):
            continue
        siblings = [q for q in by_stem[stem] if q != p]
        if p.suffix.lower() == ".png" and any(q.suffix.lower() != ".png" for q in siblings):
            continue
        samples.append(p)
        for cand in [
            *(q for q in siblings if q.suffix.lower() == ".png"),
            *(folder / f"{stem}{s}.png" for s in _MASK_SUFFIXES),
        ]:
            if cand.is_file() and cand != p:
                masks[p] = cand
                break
    return samples, masks


def _read_image_size(path: Path) -> tuple[int, int]:
    """Decode an image cheaply (JPEG at 1/8 scale) to catch truncated files; ``(w, h)``."""
    with Image.open(path) as img:
        size = img.size
        img.draft("L", (max(1, size[0] // 8), max(1, size[1] // 8)))
        img.load()
    return size


def inspect_classfolders(
    root: str | Path,
    *,
    classes: Sequence[str] | None = None,
    masks: bool = True,
    strict: bool = False,
) -> dict:
    """Statistics of a class-folder tree.

    Args:
        root: folder with one sub-folder of images per class.
        classes: declared class names; folders not in it are reported as outside the
            declared classes (and not counted). ``None``: every image folder is a class.
        masks: read masks beside the images (defect pixel share and region scale).
        strict: raise on the first unreadable file instead of reporting it.

    Returns:
        Report dict with ``count_unit="images"``; ``per_class`` entries carry count,
        share, width/height means, masks, empty_masks, mask_pixel_share and the scale
        figures of mask regions.
    """
    root = Path(root)
    folders = class_folders(root)
    if not folders:
        raise InspectError(f"{root}: no sub-folders with images (expected one per class)")
    names = [p.name for p in folders] if classes is None else [str(c) for c in classes]
    index = {n: i for i, n in enumerate(names)}
    k = len(names)
    counts = np.zeros(k, dtype=np.int64)
    size_sum = np.zeros((k, 2))
    size_sq = np.zeros((k, 2))
    n_masks = np.zeros(k, dtype=np.int64)
    empty_masks = np.zeros(k, dtype=np.int64)
    fg = np.zeros(k, dtype=np.int64)
    mask_px = np.zeros(k, dtype=np.int64)
    scale = ScaleAccumulator(num_classes=k)
    unreadable, outside, mask_mismatch = ProblemLog(), {}, ProblemLog()

    def fail(path: Path, msg: str, err: Exception | None = None) -> None:
        if strict:
            raise InspectError(f"{path}: {msg}") from err
        unreadable.add({"file": str(path), "error": msg})
        logger.warning("%s: %s", path, msg)

    for folder in folders:
        samples, mask_of = split_samples_and_masks(folder)
        c = index.get(folder.name)
        if c is None:
            outside[folder.name] = len(samples)
            continue
        for path in samples:
            try:
                w, h = _read_image_size(path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                fail(path, f"cannot be decoded as an image: {err}", err)
                continue
            counts[c] += 1
            size_sum[c] += (w, h)
            size_sq[c] += (w * w, h * h)
            mpath = mask_of.get(path)
            if not masks or mpath is None:
                continue
            try:
                with Image.open(mpath) as m:
                    mask = np.asarray(m.convert("L"))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                fail(mpath, f"cannot be decoded as a mask: {err}", err)
                continue
            if mask.shape != (h, w):
                mask_mismatch.add({"file": str(mpath), "image": [h, w], "mask": list(mask.shape)})
            binary = (mask >= MASK_THRESHOLD).astype(np.uint8)
            n_masks[c] += 1
            mask_px[c] += binary.size
            on = int(binary.sum())
            fg[c] += on
            if on == 0:
                empty_masks[c] += 1
                continue
            n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            areas = stats[1:, cv2.CC_STAT_AREA]
            scale.add(classes=np.full(len(areas), c), areas=areas)

    total = int(counts.sum())
    per_class = {}
    for c, name in enumerate(names):
        n = int(counts[c])
        entry = {"count": n, "share": float(n / total) if total else 0.0}
        if n:
            mean = size_sum[c] / n
            entry["width_mean"] = float(mean[0])
            entry["height_mean"] = float(mean[1])
        if n_masks[c]:
            entry["masks"] = int(n_masks[c])
            entry["empty_masks"] = int(empty_masks[c])
            entry["mask_pixel_share"] = float(fg[c] / mask_px[c])
            entry["regions"] = int(scale.n[c])
            entry.update(scale.per_class(c))
        per_class[name] = entry
    missing = [n for n in names if (root / n) not in folders]
    return {
        "format": "classfolder",
        "task": "classification",
        "source": str(root),
        "classes": names,
        "count_unit": "images",
        "num_images": total,
        "class_counts": {n: int(c) for n, c in zip(names, counts)},
        "imbalance_ratio": imbalance_ratio(counts),
        "absent_classes": [n for n, c in zip(names, counts) if c == 0],
        "per_class": per_class,
        "scale": scale.overall() if n_masks.sum() else None,
        "occlusion": None,
        "problems": {
            "unreadable_files": unreadable.to_dict(),
            "labels_outside_classes": {
                "count": sum(outside.values()),
                "unit": "images in folders that are not declared classes",
                "folders": outside,
            },
            "declared_classes_without_folder": missing,
            "mask_size_mismatch": mask_mismatch.to_dict(),
        },
    }
