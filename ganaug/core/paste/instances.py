"""Instances to paste: an image crop, its binary mask and its class.

Instances come from COCO polygons or RLE (through pycocotools), from label maps (one
instance per connected component of a class), from binary defect masks, or, where only
boxes exist, from box crops (the mask is then the whole box).

All images here are numpy arrays ``(H, W, C)`` of ``uint8`` with ``C`` 1 or 3 (a 2-D array
is read as greyscale); masks are ``(H, W)`` booleans.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils

logger = logging.getLogger(__name__)

__all__ = [
    "Instance",
    "as_hwc",
    "ann_to_mask",
    "instances_from_coco_anns",
    "instances_from_label_map",
    "instances_from_binary_mask",
    "instances_from_boxes",
    "mask_to_box",
]


@dataclass
class Instance:
    """One object cut out of an image.

    Attributes:
        image: ``(h, w, C)`` uint8 crop around the object (C is 1 or 3).
        mask: ``(h, w)`` bool, True on the object's pixels.
        label: class id (the dataset's own id: COCO category id, label-map value, ...).
        source: free text naming where the instance came from (file, annotation id).
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image = as_hwc(self.image, what=f"instance image ({self.source or 'no source'})")
        if self.mask.shape != self.image.shape[:2]:
            raise ValueError(
                f"Instance {self.source!r}: mask shape {self.mask.shape} does not match "
                f"image shape {self.image.shape[:2]}."
            )
        self.mask = self.mask.astype(bool, copy=False)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def rgba(self) -> np.ndarray:
        """The crop with its mask as an alpha channel, built once and cached.

        One array lets every paste warp image and mask in a single OpenCV call.

        Shape:
            ``(h, w, C + 1)`` uint8; the last channel is 255 on the object, 0 elsewhere.
        """
        cached = self.meta.get("_rgba")
        # Keyed on the arrays' identity: adapters may swap ``image`` (e.g. RGB -> BGR).
        if cached is not None and cached[0] is self.image and cached[1] is self.mask:
            return cached[2]
        alpha = self.mask.view(np.uint8) * np.uint8(255)
        rgba = np.ascontiguousarray(np.concatenate([self.image, alpha[:, :, None]], axis=2))
        self.meta["_rgba"] = (self.image, self.mask, rgba)
        return rgba

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the crop."""
        return int(self.image.shape[0]), int(self.image.shape[1])


def as_hwc(image: np.ndarray, *, what: str = "image") -> np.ndarray:
    """Return ``image`` as ``(H, W, C)`` uint8 with C in {1, 3}.

    Raises:
        ValueError: not 2-D or 3-D, an unsupported channel count, or a non-uint8 dtype.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected dtype uint8, got {image.dtype}.")
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected (H, W), (H, W, 1) or (H, W, 3), got {image.shape}.")
    if image.shape[2] == 4:
        # An alpha channel in a source image is not an instance mask: drop it.
        return np.ascontiguousarray(image[:, :, :3])
    return image


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert an ``(h, w, C)`` uint8 image to ``channels`` channels (1 <-> 3)."""
    if image.shape[2] == channels:
        return image
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.repeat(image, 3, axis=2)


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight ``[x1, y1, x2, y2]`` box (x2, y2 exclusive) of a bool mask, None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def ann_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to ``(H, W)``.

    Polygon points outside the image are clipped by pycocotools' rasteriser.

    Raises:
        ValueError: an unknown segmentation format.
    """
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(polys, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
    else:
        raise ValueError(
            f"COCO segmentation: expected a polygon list or an RLE dict, got "
            f"{type(segmentation).__name__}."
        )
    return mask_utils.decode(rle).astype(bool)


def _crop(image: np.ndarray, mask: np.ndarray, label: int, source: str, min_area: int):
    box = mask_to_box(mask)
    if box is None:
        logger.debug("Skipping %s: empty mask.", source)
        return None
    x1, y1, x2, y2 = box.astype(int)
    sub = mask[y1:y2, x1:x2]
    if int(sub.sum()) < min_area:
        logger.debug("Skipping %s: %d pixels < min_area %d.", source, int(sub.sum()), min_area)
        return None
    return Instance(
        image=np.ascontiguousarray(image[y1:y2, x1:x2]),
        mask=np.ascontiguousarray(sub),
        label=int(label),
        source=source,
        meta={"box": box},
    )


def instances_from_coco_anns(
    image: np.ndarray,
    anns: Iterable[dict],
    *,
    min_area: int = 16,
    skip_crowd: bool = True,
    source: str = "",
) -> list[Instance]:
    """Cut the annotated objects of one COCO image out of it.

    Args:
        image: ``(H, W[, C])`` uint8, the image the annotations belong to.
        anns: COCO annotation dicts (``segmentation``, ``category_id``, ``bbox``, ...).
            Annotations without a segmentation fall back to a box crop.
        min_area: instances with fewer mask pixels are skipped (logged at DEBUG).
        skip_crowd: skip ``iscrowd`` annotations (their masks cover groups).
        source: prefix for :attr:`Instance.source` (e.g. the file name).
    """
    image = as_hwc(image, what=source or "COCO image")
    h, w = image.shape[:2]
    out = []
    for ann in anns:
        name = f"{source}#ann{ann.get('id', '?')}"
        if skip_crowd and ann.get("iscrowd", 0):
            continue
        seg = ann.get("segmentation")
        if seg:
            try:
                mask = ann_to_mask(seg, h, w)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from err
        elif "bbox" in ann:
            x, y, bw, bh = ann["bbox"]
            mask = np.zeros((h, w), dtype=bool)
            mask[max(int(y), 0) : int(np.ceil(y + bh)), max(int(x), 0) : int(np.ceil(x + bw))] = 1
        else:
            logger.debug("Skipping %s: neither segmentation nor bbox.", name)
            continue
        inst = _crop(image, mask, ann["category_id"], name, min_area)
        if inst is not None:
            out.append(inst)
    return out


def instances_from_label_map(
    image: np.ndarray,
    label_map: np.ndarray,
    *,
    classes: Sequence[int] | None = None,
    ignore_index: int | None = 255,
    min_area: int = 16,
    source: str = "",
) -> list[Instance]:
    """One instance per 8-connected component of each class in a label map.

    Args:
        image: ``(H, W[, C])`` uint8.
        label_map: ``(H, W)`` integer class ids.
        classes: class ids to extract (default: every id present but ``ignore_index``).
        min_area: components with fewer pixels are skipped.
    """
    image = as_hwc(image, what=source or "image")
    label_map = np.asarray(label_map)
    if label_map.shape != image.shape[:2]:
        raise ValueError(
            f"{source or 'label map'}: label map shape {label_map.shape} does not match "
            f"image shape {image.shape[:2]}."
        )
    if classes is None:
        classes = [int(c) for c in np.unique(label_map) if c != ignore_index]
    out = []
    for cls in classes:
        binary = (label_map == cls).astype(np.uint8)
        if not binary.any():
            continue
        n, comp = cv2.connectedComponents(binary, connectivity=8)
        for k in range(1, n):
            inst = _crop(image, comp == k, cls, f"{source}#c{cls}k{k}", min_area)
            if inst is not None:
                out.append(inst)
    return out


def instances_from_binary_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    label: int,
    threshold: int = 128,
    min_area: int = 4,
    source: str = "",
) -> list[Instance]:
    """Connected components of a 0/255 mask (e.g. magnetic-tile defects) as instances.

    Anti-aliased grey values are thresholded at ``threshold``.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, :, 0]
    label_map = (mask >= threshold).astype(np.uint8)
    found = instances_from_label_map(
        image, label_map, classes=[1], ignore_index=None, min_area=min_area, source=source
    )
    for inst in found:
        inst.label = int(label)
    return found


def instances_from_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    *,
    min_area: int = 16,
    source: str = "",
) -> list[Instance]:
    """Box crops for datasets without masks; the mask is the whole box.

    Args:
        boxes: ``(N, 4)`` ``[x1, y1, x2, y2]`` in pixels; clipped to the image.
    """
    image = as_hwc(image, what=source or "image")
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) != len(labels):
        raise ValueError(f"{source}: {len(boxes)} boxes but {len(labels)} labels.")
    out = []
    for i, (box, lab) in enumerate(zip(boxes, labels)):
        x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
        mask = np.zeros((h, w), dtype=bool)
        if x2 > x1 and y2 > y1:
            mask[y1:y2, x1:x2] = True
        inst = _crop(image, mask, lab, f"{source}#box{i}", min_area)
        if inst is not None:
            out.append(inst)
    return out
