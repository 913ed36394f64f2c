"""Copy-paste augmentation: an instance bank, a class sampler and the compositor together.

Typical use (detection, COCO)::

    bank = InstanceBank.from_coco(ann_file, image_dir)
    sampler = ClassSampler.inverse_frequency(bank.class_counts(), smoothing=1.0)
    paste = CopyPaste(bank=bank, sampler=sampler, count=(1, 3), blend_mode="gaussian")
    image, target = paste(image, target, rng=np.random.default_rng(seed))
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from .composite import BLEND_MODES, Placement, paste_instances
from .instances import (
    Instance,
    instances_from_binary_mask,
    instances_from_coco_anns,
    instances_from_label_map,
)
from .selection import ClassSampler

logger = logging.getLogger(__name__)

__all__ = ["InstanceBank", "CopyPaste", "read_image"]


def read_image(path: str | os.PathLike, *, grey: bool = False) -> np.ndarray:
    """Read an image file as RGB ``(H, W, 3)`` (or ``(H, W)`` if ``grey``) uint8.

    Raises:
        FileNotFoundError: the file is missing or not a readable image.
    """
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise FileNotFoundError(f"Cannot read image {path}: missing or not an image file.")
    return img if grey else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class InstanceBank:
    """Instances grouped by class, the pool that copy-paste draws from.

    Args:
        instances: any iterable of :class:`Instance`.
        max_per_class: keep at most this many per class (the first ones seen).
        class_counts: training-set object counts per class, if they differ from the
            number of banked instances (e.g. when tiny objects were not banked).
    """

    def __init__(
        self,
        instances: Iterable[Instance] = (),
        *,
        max_per_class: int | None = None,
        class_counts: dict[int, int] | None = None,
    ):
        self._by_class: dict[int, list[Instance]] = defaultdict(list)
        self.max_per_class = max_per_class
        for inst in instances:
            self.add(inst)
        self._counts = dict(class_counts) if class_counts is not None else None

    def add(self, inst: Instance) -> None:
        pool = self._by_class[int(inst.label)]
        if self.max_per_class is None or len(pool) < self.max_per_class:
            pool.append(inst)

    @property
    def classes(self) -> list[int]:
        return sorted(c for c, v in self._by_class.items() if v)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_class.values())

    def __getitem__(self, label: int) -> list[Instance]:
        return self._by_class.get(int(label), [])

    def class_counts(self) -> dict[int, int]:
        """Training-set object counts (as given) or else banked instances per class."""
        if self._counts is not None:
            return dict(self._counts)
        return {c: len(v) for c, v in self._by_class.items() if v}

    # -- builders ----------------------------------------------------------------------
    @classmethod
    def from_coco(
        cls,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        classes: Sequence[int] | None = None,
        image_ids: Sequence[int] | None = None,
        min_area: int = 16,
        max_per_class: int | None = None,
        cat_to_label: dict[int, int] | None = None,
    ) -> InstanceBank:
        """Bank every (non-crowd) COCO object of the given images (default: all).

        ``class_counts`` keeps the full training-set counts, including objects too small
        to bank, so that selection sees the real imbalance. ``cat_to_label`` maps COCO
        category ids to the labels the pipeline uses (default: keep category ids);
        ``classes`` are given in category ids.
        """
        coco = _quiet_coco(ann_file)
        ids = list(image_ids) if image_ids is not None else sorted(coco.getImgIds())
        wanted = set(classes) if classes is not None else None
        counts: Counter = Counter()
        bank = cls(max_per_class=max_per_class)
        for img_id in ids:
            info = coco.loadImgs(img_id)[0]
            anns = [
                a
                for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
                if wanted is None or a["category_id"] in wanted
            ]
            relabel = cat_to_label or {}
            counts.update(
                relabel.get(a["category_id"], a["category_id"])
                for a in anns
                if not a.get("iscrowd", 0)
            )
            if not anns:
                continue
            path = Path(image_dir) / info["file_name"]
            image = read_image(path)
            for inst in instances_from_coco_anns(
                image, anns, min_area=min_area, source=info["file_name"]
            ):
                inst.label = relabel.get(inst.label, inst.label)
                bank.add(inst)
        bank._counts = dict(counts)
        logger.info("Instance bank: %d instances of %d classes from %s.", len(bank),
                    len(bank.classes), ann_file)  # fmt: skip
        return bank

    @classmethod
    def from_label_maps(
        cls,
        pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]],
        *,
        classes: Sequence[int],
        min_area: int = 16,
        max_per_class: int | None = None,
        ignore_index: int | None = 255,
    ) -> InstanceBank:
        """Connected components of ``classes`` in ``(image path, label path)`` pairs.

        ``class_counts`` becomes the pixel count per class over all label maps (the
        usual imbalance measure for segmentation).
        """
        bank = cls(max_per_class=max_per_class)
        pixels: Counter = Counter()
        for img_path, lab_path in pairs:
            lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
            if lab is None:
                raise FileNotFoundError(f"Cannot read label map {lab_path}.")
            if lab.ndim == 3:
                lab = lab[:, :, 0]
            vals, cnt = np.unique(lab, return_counts=True)
            pixels.update({int(v): int(n) for v, n in zip(vals, cnt) if v != ignore_index})
            present = [c for c in classes if c in set(vals.tolist())]
            if not present:
                continue
            image = read_image(img_path)
            for inst in instances_from_label_map(
                image, lab, classes=present, min_area=min_area, source=Path(img_path).name,
                ignore_index=ignore_index,
            ):  # fmt: skip
                bank.add(inst)
        bank._counts = dict(pixels)
        return bank

    @classmethod
    def from_binary_masks(
        cls,
        items: Iterable[tuple[str | os.PathLike, str | os.PathLike, int]],
        *,
        threshold: int = 128,
        min_area: int = 4,
        max_per_class: int | None = None,
    ) -> InstanceBank:
        """Connected components of 0/255 masks, from ``(image, mask, label)`` triples."""
        bank = cls(max_per_class=max_per_class)
        for img_path, mask_path, label in items:
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise FileNotFoundError(f"Cannot read mask {mask_path}.")
            image = read_image(img_path, grey=True)
            if mask.shape != image.shape[:2]:
                logger.warning("Skipping %s: mask %s vs image %s.", mask_path, mask.shape,
                               image.shape[:2])  # fmt: skip
                continue
            for inst in instances_from_binary_mask(
                image, mask, label=label, threshold=threshold, min_area=min_area,
                source=Path(img_path).name,
            ):  # fmt: skip
                bank.add(inst)
        return bank


def _quiet_coco(ann_file):
    import contextlib
    import io

    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist.")
    try:
        # pycocotools prints progress to stdout; keep library output on the logger.
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


class CopyPaste:
    """Paste sampled instances onto an image and update its annotations.

    Args:
        bank: the instances to draw from.
        sampler: the class distribution and rare-small policy (default: uniform over the
            bank's classes, i.e. plain random copy-paste).
        count: ``(min, max)`` number of pastes per image, inclusive.
        scale: ``(min, max)`` resize factor, drawn log-uniformly.
        flip_prob: probability of a left-right mirror.
        max_rotation: rotation drawn uniformly in ``[-max_rotation, max_rotation]`` degrees.
        blend_mode: ``"alpha"``, ``"gaussian"`` or ``"poisson"``.
        sigma: feathering width for ``"gaussian"``.
        occlusion_thresh: drop objects covered beyond this share.
        max_fraction: an instance whose longer side exceeds this share of the image's
            shorter side is scaled down to it.
        prob: probability of pasting at all on a given image.
    """

    def __init__(
        self,
        *,
        bank: InstanceBank,
        sampler: ClassSampler | None = None,
        count: tuple[int, int] = (1, 3),
        scale: tuple[float, float] = (0.5, 1.5),
        flip_prob: float = 0.5,
        max_rotation: float = 10.0,
        blend_mode: str = "gaussian",
        sigma: float = 1.5,
        occlusion_thresh: float = 0.7,
        max_fraction: float = 0.6,
        prob: float = 1.0,
        min_visible_pixels: int = 4,
    ):
        if len(bank) == 0:
            raise ValueError("CopyPaste: the instance bank is empty; nothing to paste.")
        if blend_mode not in BLEND_MODES:
            raise ValueError(f"blend_mode must be one of {BLEND_MODES}, got {blend_mode!r}.")
        if count[0] < 0 or count[1] < count[0]:
            raise ValueError(f"count must be (min, max) with 0 <= min <= max, got {count}.")
        if scale[0] <= 0 or scale[1] < scale[0]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}.")
        self.bank = bank
        sampler = sampler or ClassSampler.uniform(bank.classes)
        self.sampler = sampler.restrict(bank.classes)
        self.count = count
        self.scale = scale
        self.flip_prob = flip_prob
        self.max_rotation = max_rotation
        self.blend_mode = blend_mode
        self.sigma = sigma
        self.occlusion_thresh = occlusion_thresh
        self.max_fraction = max_fraction
        self.prob = prob
        self.min_visible_pixels = min_visible_pixels
        # Set by pipelines that own each decoded sample (see paste_instances(in_place=...)).
        self.in_place = False

    def plan(
        self, rng: np.random.Generator, height: int, width: int
    ) -> tuple[list[Instance], list[Placement]]:
        """Draw instances and placements for an ``height x width`` image."""
        if rng.random() >= self.prob:
            return [], []
        n = int(rng.integers(self.count[0], self.count[1] + 1))
        instances, placements = [], []
        for label in self.sampler.sample(rng, n):
            pool = self.bank[label]
            inst = pool[int(rng.integers(len(pool)))]
            ih, iw = inst.size
            small = self.sampler.small_side(rng, label)
            if small is not None:
                s = small / max(ih, iw)
            else:
                lo, hi = np.log(self.scale[0]), np.log(self.scale[1])
                s = float(np.exp(rng.uniform(lo, hi)))
            s = min(s, self.max_fraction * min(height, width) / max(ih, iw))
            sh, sw = max(int(round(ih * s)), 1), max(int(round(iw * s)), 1)
            x = int(rng.integers(0, max(width - sw, 0) + 1))
            y = int(rng.integers(0, max(height - sh, 0) + 1))
            angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
            if self.max_rotation > 0 and angle:
                # The rotated canvas grows: shift so the centre stays where it was drawn.
                rad = np.deg2rad(abs(angle))
                nw = sh * np.sin(rad) + sw * np.cos(rad)
                nh = sh * np.cos(rad) + sw * np.sin(rad)
                x -= int(round((nw - sw) / 2))
                y -= int(round((nh - sh) / 2))
            flip = bool(rng.random() < self.flip_prob)
            instances.append(inst)
            placements.append(Placement(x=x, y=y, scale=s, flip=flip, angle=angle))
        return instances, placements

    def __call__(
        self,
        image: np.ndarray,
        target: dict,
        *,
        rng: np.random.Generator,
        in_place: bool | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Paste onto ``image`` (``(H, W[, C])`` uint8) and return ``(image, target)``.

        See :func:`paste_instances` for the target dict. The input is not modified unless
        ``in_place`` (default ``self.in_place``) is set: then it is reused, see
        :func:`paste_instances`.
        """
        height, width = np.asarray(image).shape[:2]
        instances, placements = self.plan(rng, height, width)
        return paste_instances(
            image,
            target,
            instances,
            placements,
            blend_mode=self.blend_mode,
            sigma=self.sigma,
            occlusion_thresh=self.occlusion_thresh,
            min_visible_pixels=self.min_visible_pixels,
            in_place=self.in_place if in_place is None else in_place,
        )
