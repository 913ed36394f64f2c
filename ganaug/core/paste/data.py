"""Readers for the sample datasets in the shapes the paste engine uses.

* COCO (coco128): ``CocoDetection`` gives ``(image (H, W, 3) uint8 RGB, target)`` with
  ``boxes``, ``labels`` (contiguous 1..K, 0 is background), ``masks`` and ``image_id``.
  Greyscale JPEGs are read as RGB; images without annotations get empty targets.
* CamVid: ``camvid_pairs(root, split)`` lists ``(image, label)`` paths.
* Magnetic tile: ``magnetic_tile_items(root)`` lists ``(image, mask, class index)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ganaug.datasets import camvid

from .copy_paste import _quiet_coco, read_image
from .instances import ann_to_mask

__all__ = [
    "CocoDetection",
    "camvid_pairs",
    "CAMVID_CLASSES",
    "magnetic_tile_items",
    "MAGNETIC_TILE_CLASSES",
    "annotations_to_target",
    "target_to_annotations",
    "mask_to_polygons",
]

CAMVID_CLASSES = camvid.CLASSES
CAMVID_IGNORE = camvid.VOID

MAGNETIC_TILE_CLASSES = ("MT_Free", "MT_Blowhole", "MT_Uneven", "MT_Break", "MT_Crack", "MT_Fray")


class CocoDetection:
    """A COCO-format detection set read with pycocotools.

    Args:
        ann_file: COCO instances JSON.
        image_dir: folder holding the images named in it.
        with_masks: decode instance masks (polygons / RLE) into ``target["masks"]``.
        mask_reserve: allocate this many spare (uninitialised) mask rows after the
            ``N`` decoded ones; ``target["masks"]`` is still ``(N, H, W)``. A copy-paste
            with ``in_place`` writes its pasted masks there instead of copying all masks.

    Attributes:
        cat_ids: COCO category ids in contiguous order; label ``k`` is ``cat_ids[k - 1]``.
        class_names: names in the same order.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        with_masks: bool = True,
        mask_reserve: int = 0,
    ):
        if mask_reserve < 0:
            raise ValueError(f"CocoDetection: mask_reserve must be >= 0, got {mask_reserve}.")
        self.mask_reserve = int(mask_reserve)
        self.coco = _quiet_coco(ann_file)
        self.image_dir = Path(image_dir)
        self.ids = sorted(self.coco.getImgIds())
        self.cat_ids = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.ids)

    def class_counts(self) -> dict[int, int]:
        """Non-crowd objects per contiguous label over the whole set."""
        counts: dict[int, int] = {}
        for a in self.coco.dataset.get("annotations", []):
            if not a.get("iscrowd", 0):
                lab = self.cat_to_label[a["category_id"]]
                counts[lab] = counts.get(lab, 0) + 1
        return counts

    def __getitem__(self, idx: int) -> tuple[np.ndarray, dict]:
        img_id = self.ids[idx]
        info = self.coco.loadImgs(img_id)[0]
        image = read_image(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        boxes, labels, masks = [], [], []
        for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False)):
            x, y, bw, bh = a["bbox"]
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self.cat_to_label[a["category_id"]])
            if self.with_masks:
                seg = a.get("segmentation")
                if seg:
                    masks.append(ann_to_mask(seg, h, w))
                else:
                    m = np.zeros((h, w), dtype=bool)
                    m[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
                    masks.append(m)
        target = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "image_id": int(img_id),
        }
        if self.with_masks:
            block = np.empty((len(masks) + self.mask_reserve, h, w), dtype=bool)
            for k, m in enumerate(masks):
                block[k] = m
            target["masks"] = block[: len(masks)]
        return image, target


def coco128_paths(root: str | os.PathLike) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of the coco128 layout under ``root``."""
    root = Path(root)
    return root / "annotations" / "instances_train2017.json", root / "train2017"


def camvid_pairs(root: str | os.PathLike, split: str = "train") -> list[tuple[Path, Path]]:
    """``(image, label map)`` path pairs of a CamVid split (``train``, ``val``)."""
    root = Path(root)
    img_dir, lab_dir = root / split, root / f"{split}annot"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(f"CamVid split {split!r}: expected {img_dir} and {lab_dir}.")
    return [(p, lab_dir / p.name) for p in sorted(img_dir.glob("*.png"))]


def magnetic_tile_items(
    root: str | os.PathLike, classes: tuple[str, ...] = MAGNETIC_TILE_CLASSES[1:]
) -> list[tuple[Path, Path, int]]:
    """``(image, mask, class index in MAGNETIC_TILE_CLASSES)`` for the defect classes."""
    root = Path(root)
    out = []
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"Magnetic-tile class folder {folder} does not exist.")
        idx = MAGNETIC_TILE_CLASSES.index(name)
        for img in sorted(folder.glob("*.jpg")):
            out.append((img, img.with_suffix(".png"), idx))
    return out


# Box modes as detectron2 numbers them (its BoxMode is an IntEnum with these values).
XYXY_ABS, XYWH_ABS = 0, 1


def annotations_to_target(annos: list[dict], height: int, width: int) -> dict:
    """COCO-style per-image annotation dicts (detectron2's dataset dicts) -> paste target.

    Each dict needs ``bbox``, ``category_id`` and, optionally, ``bbox_mode`` (0 xyxy, 1
    xywh; default xywh as in COCO), ``segmentation`` (polygons or RLE) and ``iscrowd``.
    Crowd regions are left out (they are not objects to occlude or to keep).

    Returns:
        ``{"boxes", "labels", "masks"}``, masks only when every object has a segmentation.
    """
    from .instances import ann_to_mask

    objs = [a for a in annos if not a.get("iscrowd", 0)]
    boxes, labels, masks = [], [], []
    for a in objs:
        x1, y1, a2, b2 = (float(v) for v in a["bbox"])
        if int(a.get("bbox_mode", XYWH_ABS)) == XYWH_ABS:
            a2, b2 = x1 + a2, y1 + b2
        boxes.append([x1, y1, a2, b2])
        labels.append(int(a["category_id"]))
        if a.get("segmentation"):
            masks.append(ann_to_mask(a["segmentation"], height, width))
    target = {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
    }
    if objs and len(masks) == len(objs):
        target["masks"] = np.asarray(masks, dtype=bool)
    return target


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons (pixel-corner coordinates)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polys = []
    for c in contours:
        if len(c) >= 3:
            # Contours run through pixel centres; +0.5 puts them on the pixel grid COCO uses.
            polys.append((c.reshape(-1, 2).astype(np.float64) + 0.5).ravel().tolist())
    return polys


def target_to_annotations(
    target: dict,
    *,
    with_masks: bool = True,
    mask_format: str = "rle",
    originals: list[dict] | None = None,
) -> list[dict]:
    """Paste target -> annotation dicts with xyxy boxes (``bbox_mode`` 0).

    Args:
        mask_format: ``"rle"`` (exact) or ``"polygon"`` (outer contours; an object whose
            mask gives no polygon of 3+ points is left out).
        originals: the annotation dicts the target was made from (in
            :func:`annotations_to_target`'s order); objects the paste did not touch
            (``source_index`` >= 0 and not ``changed``) are passed through unchanged.
    """
    from pycocotools import mask as mask_utils

    if mask_format not in ("rle", "polygon"):
        raise ValueError(f"mask_format must be 'rle' or 'polygon', got {mask_format!r}.")
    out = []
    masks = target.get("masks") if with_masks else None
    src = target.get("source_index")
    changed = target.get("changed")
    objs = [a for a in originals if not a.get("iscrowd", 0)] if originals is not None else None
    for k, (box, label) in enumerate(zip(target["boxes"], target["labels"])):
        if objs is not None and src is not None and src[k] >= 0 and not changed[k]:
            out.append(objs[int(src[k])])
            continue
        ann = {
            "bbox": [float(v) for v in box],
            "bbox_mode": XYXY_ABS,
            "category_id": int(label),
            "iscrowd": 0,
        }
        if masks is not None:
            if mask_format == "polygon":
                polys = mask_to_polygons(masks[k])
                if not polys:
                    continue
                ann["segmentation"] = polys
            else:
                rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ann["segmentation"] = rle
        out.append(ann)
    return out
