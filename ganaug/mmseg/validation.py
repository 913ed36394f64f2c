"""A pipeline step that checks each segmentation sample and names the file when it fails."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class ValidateSegLabels(BaseTransform):
    """Map void values to the ignore index, then check label values and image/label size.

    Place it right after ``LoadAnnotations``.

    Required Keys: ``img``, ``gt_seg_map``, ``img_path``, ``seg_map_path``

    Modified Keys: ``gt_seg_map``

    Args:
        num_classes: labels must lie in ``[0, num_classes)`` or equal ``ignore_index``.
        void_values: label values that mean "unlabelled" and become ``ignore_index``.
        ignore_index: value the losses and metrics ignore (255 in mmseg).
    """

    def __init__(
        self, num_classes: int, void_values: Sequence[int] = (), ignore_index: int = 255
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.void_values = tuple(int(v) for v in void_values)
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        seg = results["gt_seg_map"]
        img_path = results.get("img_path", "<unknown image>")
        seg_path = results.get("seg_map_path", "<unknown label map>")
        img_hw = tuple(results["img"].shape[:2])
        if tuple(seg.shape[:2]) != img_hw:
            raise ValueError(
                f"image/label size mismatch: {img_path} is {img_hw[0]}x{img_hw[1]} (HxW) but "
                f"{seg_path} is {seg.shape[0]}x{seg.shape[1]}"
            )
        if self.void_values:
            seg = seg.copy()
            seg[np.isin(seg, self.void_values)] = self.ignore_index
        bad = (seg != self.ignore_index) & ((seg < 0) | (seg >= self.num_classes))
        if bad.any():
            values = np.unique(seg[bad]).tolist()
            raise ValueError(
                f"{seg_path}: label values {values[:10]} are outside [0, {self.num_classes}) "
                f"and are not void {list(self.void_values)} or ignore ({self.ignore_index})"
            )
        results["gt_seg_map"] = seg
        return results

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_classes={self.num_classes}, "
            f"void_values={self.void_values}, ignore_index={self.ignore_index})"
        )
