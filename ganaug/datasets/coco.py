"""COCO-json object detection dataset, framework-free (PyTorch tensors in, dicts out).

Each item is ``(image, target)``: ``image`` a float tensor ``(3, H, W)`` in ``[0, 1]``
(greyscale and palette images are converted to RGB) and ``target`` a dict

* ``boxes``: ``(K, 4)`` float32, ``(x1, y1, x2, y2)`` in pixels, clipped to the image,
* ``labels``: ``(K,)`` int64, contiguous ``1..num_classes`` (0 is left for background),
* ``area``: ``(K,)`` float32 (COCO's annotation area), ``iscrowd``: ``(K,)`` int64,
* ``image_id``: int, the COCO image id (for evaluation).

Images without annotations give ``K = 0`` (kept by default: they are negatives). Crowd
regions are left out of the targets by default (detectors do not learn from them; the
evaluator still sees them through the JSON). Boxes reaching outside their image are
clipped; boxes with no area left are dropped. Each kind of problem is logged once per
dataset, with a count and the first offending annotation.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = ["CocoDetectionDataset", "CocoFormatError", "collate_detection"]

logger = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """The annotation file is not COCO detection JSON, or an image cannot be read."""


def collate_detection(batch):
    """Keep images and targets as lists (they differ in size): ``(images, targets)``."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class CocoDetectionDataset(Dataset):
    """Detection dataset read from a COCO ``instances_*.json`` file.

    Args:
        image_dir: folder holding the images named by ``file_name``.
        ann_file: COCO JSON with ``images``, ``annotations`` and ``categories``.
        include_crowd: keep ``iscrowd=1`` boxes in the targets (default False).
        keep_empty: keep images with no (usable) annotation (default True).
        min_box_side: boxes narrower or shorter than this, after clipping, are dropped.
        image_ids: restrict to these COCO image ids, in this order (default: all, sorted
            by id).
        transforms: optional callable ``(image, target) -> (image, target)``.

    Attributes:
        cat_ids: COCO category ids, position ``i`` has contiguous label ``i + 1``.
        class_names: category names in the same order.
    """

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        include_crowd: bool = False,
        keep_empty: bool = True,
        min_box_side: float = 1.0,
        image_ids: list[int] | None = None,
        transforms=None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} does not exist")
        try:
            with open(self.ann_file) as f:
                data = json.load(f)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"COCO annotation file {self.ann_file} not found") from err
        except json.JSONDecodeError as err:
            raise CocoFormatError(f"{self.ann_file} is not valid JSON: {err}") from err
        for key in ("images", "annotations", "categories"):
            if key not in data or not isinstance(data[key], list):
                raise CocoFormatError(
                    f"{self.ann_file}: expected COCO detection JSON with a list under "
                    f"{key!r}, found keys {sorted(data)}"
                )

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [c["name"] for c in cats]
        self.cat_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}

        self._images = {img["id"]: img for img in data["images"]}
        per_image: dict[int, list[dict]] = {i: [] for i in self._images}
        problems: dict[str, list] = {
            "crowd": [],
            "clipped": [],
            "degenerate": [],
            "unknown_category": [],
            "unknown_image": [],
            "non_finite": [],
        }
        for ann in data["annotations"]:
            try:
                img = self._images.get(ann["image_id"])
                x, y, w, h = (float(v) for v in ann["bbox"])
                cat = ann["category_id"]
            except (KeyError, TypeError, ValueError) as err:
                raise CocoFormatError(
                    f"{self.ann_file}: annotation {ann.get('id', '?')} lacks a valid image_id, "
                    f"bbox [x, y, w, h] or category_id: {err!r}"
                ) from err
            if img is None:
                problems["unknown_image"].append(ann.get("id"))
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                # JSON writers emit NaN/Infinity; such a box would make the loss NaN.
                problems["non_finite"].append(ann.get("id"))
                continue
            if cat not in self.cat_to_label:
                problems["unknown_category"].append(ann.get("id"))
                continue
            if ann.get("iscrowd", 0) and not include_crowd:
                problems["crowd"].append(ann.get("id"))
                continue
            width, height = float(img["width"]), float(img["height"])
            box = [x, y, x + w, y + h]
            clipped = [
                min(max(box[0], 0.0), width),
                min(max(box[1], 0.0), height),
                min(max(box[2], 0.0), width),
                min(max(box[3], 0.0), height),
            ]
            if clipped != box:
                problems["clipped"].append(ann.get("id"))
            if clipped[2] - clipped[0] < min_box_side or clipped[3] - clipped[1] < min_box_side:
                problems["degenerate"].append(ann.get("id"))
                continue
            per_image[img["id"]].append(
                {
                    "box": clipped,
                    "label": self.cat_to_label[cat],
                    "area": float(ann.get("area", w * h)),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
        self._log_problems(problems, min_box_side)

        ids = sorted(self._images) if image_ids is None else list(image_ids)
        missing = [i for i in ids if i not in self._images]
        if missing:
            raise CocoFormatError(
                f"{self.ann_file}: image_ids {missing[:5]} are not in the annotation file"
            )
        if not keep_empty:
            ids = [i for i in ids if per_image[i]]
        # A missing image would otherwise surface only when a batch reaches it, maybe hours
        # into a run: check the files of this split once (a stat per image).
        absent = [
            self._images[i].get("file_name", "?")
            for i in ids
            if not (self.image_dir / str(self._images[i].get("file_name", ""))).is_file()
        ]
        if absent:
            raise FileNotFoundError(
                f"{self.ann_file}: {len(absent)} of the {len(ids)} images of this split are not "
                f"in {self.image_dir}, e.g. {absent[:5]}"
            )
        self.ids = ids
        self._anns = per_image
        self._shape_warned = False
        logger.debug(
            "%s: %d images, %d categories", self.ann_file.name, len(ids), len(self.cat_ids)
        )

    def _log_problems(self, problems: dict[str, list], min_box_side: float) -> None:
        messages = {
            "crowd": "crowd regions left out of the targets",
            "clipped": "boxes reaching outside their image, clipped to it",
            "degenerate": f"boxes with a side < {min_box_side} px after clipping, dropped",
            "unknown_category": "annotations with a category_id not in 'categories', dropped",
            "unknown_image": "annotations with an image_id not in 'images', dropped",
            "non_finite": "boxes with a NaN or infinite coordinate, dropped",
        }
        for kind, ids in problems.items():
            if ids:
                log = logger.info if kind == "crowd" else logger.warning
                log(
                    "%s: %d %s (first: annotation id %s)",
                    self.ann_file,
                    len(ids),
                    messages[kind],
                    ids[0],
                )

    @property
    def num_classes(self) -> int:
        """Number of foreground classes (labels run 1..num_classes)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, image_ids: list[int]) -> CocoDetectionDataset:
        """The same dataset restricted to ``image_ids`` (in that order), without re-reading
        the JSON."""
        missing = [i for i in image_ids if i not in self._images]
        if missing:
            raise CocoFormatError(
                f"{self.ann_file}: image_ids {missing[:5]} are not in the annotation file"
            )
        out = copy.copy(self)
        out.ids = [int(i) for i in image_ids]
        return out

    def image_info(self, index: int) -> dict:
        """The COCO ``images`` entry of item ``index``."""
        return self._images[self.ids[index]]

    def class_counts(self) -> dict[str, int]:
        """Training-set frequency per class name (instances in the targets of this split)."""
        counts = Counter(a["label"] for i in self.ids for a in self._anns[i])
        return {name: counts.get(i + 1, 0) for i, name in enumerate(self.class_names)}

    def target(self, index: int) -> dict:
        """The target dict of item ``index`` without reading the image."""
        image_id = self.ids[index]
        anns = self._anns[image_id]
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": boxes,
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
            "image_id": int(image_id),
        }

    def load_image(self, index: int) -> torch.Tensor:
        """Image of item ``index`` as float ``(3, H, W)`` in ``[0, 1]``."""
        info = self.image_info(index)
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                arr = np.asarray(im, dtype=np.uint8).copy()
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{self.ann_file}: image {info['file_name']!r} (id {info['id']}) not found "
                f"in {self.image_dir}"
            ) from err
        except (UnidentifiedImageError, OSError) as err:
            raise CocoFormatError(f"cannot read image {path}: {err}") from err
        if arr.shape[:2] != (info["height"], info["width"]) and not self._shape_warned:
            # Boxes were clipped to the JSON size; a mismatch means the JSON is stale.
            self._shape_warned = True
            logger.warning(
                "%s: image %s is %dx%d but the JSON says %dx%d (further mismatches not logged)",
                self.ann_file,
                path,
                arr.shape[1],
                arr.shape[0],
                info["width"],
                info["height"],
            )
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int):
        image, target = self.load_image(index), self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    @classmethod
    def from_root(cls, root: str | os.PathLike, *, split: str = "train2017", **kwargs):
        """Dataset laid out as COCO: ``root/<split>/`` and
        ``root/annotations/instances_<split>.json`` (as ``coco128/`` under the data root)."""
        root = Path(root)
        return cls(
            image_dir=root / split,
            ann_file=root / "annotations" / f"instances_{split}.json",
            **kwargs,
        )
