"""Helpers shared by the format readers: errors, scale buckets, streaming moments."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

# COCO's area rule (pycocotools COCOeval.areaRng): small < 32^2 <= medium < 96^2 <= large.
SMALL_AREA = 32.0**2
MEDIUM_AREA = 96.0**2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# How many example file names a report keeps per problem; the counts are always complete.
MAX_EXAMPLES = 20


class InspectError(ValueError):
    """A dataset could not be read; the message names the file and the problem."""


def imbalance_ratio(counts: Iterable[float]) -> float | None:
    """Most frequent over least frequent class, over classes with a nonzero count.

    Returns ``None`` when fewer than one class is present. Absent classes are reported
    separately: an infinite ratio would say nothing about the classes that do occur.
    """
    values = [float(c) for c in counts if c > 0]
    if not values:
        return None
    return max(values) / min(values)


class ScaleAccumulator:
    """Streams object areas per class into COCO buckets and moments of the scale.

    The scale of an object is ``sqrt(area)``, so the coefficient of variation (std / mean)
    compares object sizes in pixels of side length, as COCO's buckets do. Memory is
    ``O(num_classes)`` whatever the number of objects.

    Args:
        num_classes: number of class slots ``K``; class indices are ``0 <= k < K``.
    """

    def __init__(self, *, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.buckets = np.zeros((self.num_classes, 3), dtype=np.int64)
        self.area_buckets = np.zeros((self.num_classes, 3), dtype=np.float64)
        self.n = np.zeros(self.num_classes, dtype=np.int64)
        self.s1 = np.zeros(self.num_classes, dtype=np.float64)
        self.s2 = np.zeros(self.num_classes, dtype=np.float64)

    def grow(self, num_classes: int) -> None:
        """Make room for class indices up to ``num_classes - 1`` (never shrinks)."""
        extra = int(num_classes) - self.num_classes
        if extra <= 0:
            return
        self.buckets = np.concatenate([self.buckets, np.zeros((extra, 3), np.int64)])
        self.area_buckets = np.concatenate([self.area_buckets, np.zeros((extra, 3))])
        self.n = np.concatenate([self.n, np.zeros(extra, np.int64)])
        self.s1 = np.concatenate([self.s1, np.zeros(extra)])
        self.s2 = np.concatenate([self.s2, np.zeros(extra)])
        self.num_classes = int(num_classes)

    def add(self, *, classes: np.ndarray, areas: np.ndarray) -> None:
        """Add objects.

        Shape:
            classes: ``(N,)`` integer class indices in ``[0, K)``.
            areas: ``(N,)`` object areas in pixels.
        """
        classes = np.asarray(classes, dtype=np.int64).ravel()
        areas = np.asarray(areas, dtype=np.float64).ravel()
        if classes.shape != areas.shape:
            raise ValueError(
                f"classes and areas must have the same length, got {classes.shape} "
                f"and {areas.shape}"
            )
        if classes.size == 0:
            return
        k = self.num_classes
        bucket = np.where(areas < SMALL_AREA, 0, np.where(areas < MEDIUM_AREA, 1, 2))
        self.buckets += np.bincount(classes * 3 + bucket, minlength=k * 3).reshape(k, 3)
        self.area_buckets += np.bincount(
            classes * 3 + bucket, weights=areas, minlength=k * 3
        ).reshape(k, 3)
        scale = np.sqrt(np.clip(areas, 0.0, None))
        self.n += np.bincount(classes, minlength=k)
        self.s1 += np.bincount(classes, weights=scale, minlength=k)
        self.s2 += np.bincount(classes, weights=scale * scale, minlength=k)

    def cv(self) -> np.ndarray:
        """Per-class coefficient of variation of the scale; NaN for fewer than 2 objects."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.s1 / self.n
            var = np.clip(self.s2 / self.n - mean * mean, 0.0, None)
            cv = np.sqrt(var) / mean
        cv[self.n < 2] = np.nan
        return cv

    def overall(self) -> dict:
        """Bucket counts and shares, mean scale and CV over all classes together."""
        n = int(self.n.sum())
        small, medium, large = (int(v) for v in self.buckets.sum(axis=0))
        if n == 0:
            return {"objects": 0, "small": 0, "medium": 0, "large": 0}
        mean = self.s1.sum() / n
        var = max(self.s2.sum() / n - mean * mean, 0.0)
        return {
            "objects": n,
            "small": small,
            "medium": medium,
            "large": large,
            "small_share": small / n,
            "medium_share": medium / n,
            "large_share": large / n,
            "scale_mean": float(mean),
            "scale_cv": float(math.sqrt(var) / mean) if n > 1 and mean > 0 else None,
        }

    def per_class(self, k: int) -> dict:
        """Bucket counts, small share, mean scale and scale CV of class index ``k``."""
        n = int(self.n[k])
        out = {
            "small": int(self.buckets[k, 0]),
            "medium": int(self.buckets[k, 1]),
            "large": int(self.buckets[k, 2]),
        }
        if n:
            out["small_share"] = out["small"] / n
            total = self.area_buckets[k].sum()
            # Share of the class's area in small objects: unlike small_share, a few specks
            # (label-map noise) barely move it.
            out["small_area_share"] = float(self.area_buckets[k, 0] / total) if total else 0.0
            out["scale_mean"] = float(self.s1[k] / n)
        out["scale_cv"] = finite_or_none(self.cv()[k])
        return out


class ProblemLog:
    """Count of one kind of problem plus the first few examples: memory stays flat however
    many files have the problem."""

    def __init__(self, limit: int = MAX_EXAMPLES) -> None:
        self.count = 0
        self.examples: list = []
        self.limit = limit

    def add(self, example) -> None:
        self.count += 1
        if len(self.examples) < self.limit:
            self.examples.append(example)

    def __bool__(self) -> bool:
        return self.count > 0

    def to_dict(self) -> dict:
        return {"count": self.count, "examples": list(self.examples)}


def finite_or_none(value: float) -> float | None:
    """``float(value)``, or ``None`` for NaN/inf so that the JSON stays standard."""
    value = float(value)
    return value if math.isfinite(value) else None


def examples(items: Iterable, limit: int = MAX_EXAMPLES) -> list:
    """The first ``limit`` items, as a list (reports keep examples, not everything)."""
    out = []
    for item in items:
        if len(out) >= limit:
            break
        out.append(item)
    return out


def shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Each value over the sum; all zeros when the sum is zero."""
    total = float(sum(counts.values()))
    return {k: (float(v) / total if total else 0.0) for k, v in counts.items()}
