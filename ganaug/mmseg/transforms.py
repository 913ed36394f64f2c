"""``RareClassPaste``: an mmseg pipeline step that pastes rare-class segments into images.

Config example (after ``LoadAnnotations``, before resizing/cropping)::

    dict(type='RareClassPaste',
         img_dir='data/camvid/train', ann_dir='data/camvid/trainannot',
         num_rare=4,               # or classes=[2, 6, 9, 10]
         selection='inverse',      # 'uniform' | 'inverse' | 'target' | 'metric'
         count=(1, 3), scale=(0.7, 1.3), blend_mode='gaussian', prob=0.8)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log
from mmseg.registry import TRANSFORMS

from ganaug.core.paste.factory import copy_paste_for_label_maps, read_per_class_metrics

__all__ = ["RareClassPaste"]


@TRANSFORMS.register_module()
class RareClassPaste(BaseTransform):
    """Paste connected segments of rare classes, drawn by imbalance-aware selection.

    The segment bank is built on first use (in each data-loader worker) from the label
    maps under ``ann_dir`` and images of the same name under ``img_dir``.

    Required Keys: ``img`` (BGR uint8, as mmcv loads it), ``gt_seg_map``

    Modified Keys: ``img``, ``gt_seg_map``

    Args:
        img_dir, ann_dir: training images and label maps (same file stems).
        img_suffix, seg_map_suffix: file endings, as in mmseg datasets.
        classes: class ids to paste; or ``num_rare`` for the rarest by pixel count.
        selection: ``uniform`` (random copy-paste), ``inverse`` (inverse pixel frequency
            with ``smoothing`` and ``power``), ``target`` (``target`` shares), or
            ``metric`` (gaps in ``metrics`` or ``metrics_file``'s per-class IoU).
        class_names: names in id order, to read ``metrics_file``.
        count, scale, flip_prob, max_rotation, blend_mode, prob: see ``CopyPaste``.
        rare_small_prob, small_size: paste rare classes small (see ``ClassSampler``).
        ignore_index: label value excluded from counts.
        min_area, max_per_class: segment filter and bank cap.
    """

    def __init__(
        self,
        img_dir: str,
        ann_dir: str,
        *,
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        classes: Sequence[int] | None = None,
        num_rare: int | None = None,
        selection: str = "inverse",
        smoothing: float = 1.0,
        power: float = 1.0,
        target: dict | None = None,
        metrics: dict | None = None,
        metrics_file: str | None = None,
        class_names: Sequence[str] | None = None,
        count: Sequence[int] = (1, 3),
        scale: Sequence[float] = (0.7, 1.3),
        flip_prob: float = 0.5,
        max_rotation: float = 5.0,
        blend_mode: str = "gaussian",
        prob: float = 1.0,
        rare_small_prob: float = 0.0,
        small_size: Sequence[int] = (8, 32),
        ignore_index: int = 255,
        min_area: int = 16,
        max_per_class: int | None = 200,
    ) -> None:
        if classes is None and num_rare is None:
            raise ValueError("RareClassPaste: set classes=[...] or num_rare=N.")
        if metrics_file is not None and not class_names:
            raise ValueError("RareClassPaste: metrics_file needs class_names (in id order).")
        self.img_dir, self.ann_dir = Path(img_dir), Path(ann_dir)
        for d in (self.img_dir, self.ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"RareClassPaste: folder {d} does not exist.")
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        self.classes = list(classes) if classes is not None else None
        self.num_rare = num_rare
        self.selection = selection
        if metrics_file is not None:
            metrics = read_per_class_metrics(metrics_file, class_names)
        self.sampler_kwargs = dict(
            smoothing=smoothing,
            power=power,
            target={int(k): float(v) for k, v in (target or {}).items()} or None,
            metrics={int(k): float(v) for k, v in (metrics or {}).items()} or None,
            rare_small_prob=rare_small_prob,
            small_size=tuple(small_size),
        )
        self.paste_kwargs = dict(
            count=tuple(count),
            scale=tuple(scale),
            flip_prob=flip_prob,
            max_rotation=max_rotation,
            blend_mode=blend_mode,
            prob=prob,
        )
        self.ignore_index = ignore_index
        self.min_area = min_area
        self.max_per_class = max_per_class
        self._paste = None

    def _pairs(self):
        pairs = []
        for lab in sorted(self.ann_dir.glob(f"*{self.seg_map_suffix}")):
            stem = lab.name[: -len(self.seg_map_suffix)]
            img = self.img_dir / f"{stem}{self.img_suffix}"
            if img.is_file():
                pairs.append((img, lab))
        if not pairs:
            raise FileNotFoundError(
                f"RareClassPaste: no '*{self.seg_map_suffix}' label map in {self.ann_dir} has "
                f"an image '*{self.img_suffix}' in {self.img_dir}."
            )
        return pairs

    @property
    def copy_paste(self):
        if self._paste is None:
            self._paste = copy_paste_for_label_maps(
                self._pairs(),
                classes=self.classes,
                num_rare=self.num_rare,
                selection=self.selection,
                ignore_index=self.ignore_index,
                min_area=self.min_area,
                max_per_class=self.max_per_class,
                sampler_kwargs=self.sampler_kwargs,
                **self.paste_kwargs,
            )
            # The bank is read as RGB; mmcv hands BGR images to the pipeline.
            for label in self._paste.bank.classes:
                for inst in self._paste.bank[label]:
                    inst.image = np.ascontiguousarray(inst.image[:, :, ::-1])
            print_log(
                f"RareClassPaste: {len(self._paste.bank)} segments, selection "
                f"{self.selection}: {self._paste.sampler}",
                logger="current",
                level=logging.INFO,
            )
        return self._paste

    def transform(self, results: dict) -> dict:
        img, seg = results["img"], results["gt_seg_map"]
        if img.shape[:2] != seg.shape[:2]:
            raise ValueError(
                f"RareClassPaste: image {results.get('img_path')} is {img.shape[:2]} but its "
                f"label map is {seg.shape[:2]}."
            )
        # Follow mmengine's global seeding (and its per-worker seeds) for reproducibility.
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        out_img, out = self.copy_paste(img, {"labels": [], "label_map": seg}, rng=rng)
        results["img"] = out_img
        results["gt_seg_map"] = out["label_map"].astype(seg.dtype, copy=False)
        return results

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(classes={self.classes}, num_rare={self.num_rare}, "
            f"selection={self.selection!r}, {self.paste_kwargs})"
        )
