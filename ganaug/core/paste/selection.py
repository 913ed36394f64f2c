"""Imbalance-aware choice of which classes to paste, how many, and at what scale.

Three ways to set the class distribution of pastes:

* ``ClassSampler.inverse_frequency(counts, smoothing, power)``:
  ``p(c) ∝ (n_c + smoothing) ** -power`` from training-set counts;
* ``ClassSampler.target_distribution(counts, target)``: paste where the dataset falls
  short of a desired class distribution, ``p(c) ∝ max(t_c - f_c, 0)``;
* ``ClassSampler.metric_gaps(metrics, ...)``: from the last evaluation's per-class metric
  (AP, IoU, recall; higher is better), ``p(c) ∝ (best - m_c + eps) ** power``.

``ClassSampler.uniform(classes)`` is plain random copy-paste over classes, and
``ClassSampler(weights=...)`` takes any explicit paste distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ClassSampler"]


class ClassSampler:
    """Samples classes to paste and the scale policy for them.

    Args:
        weights: class id -> non-negative weight (normalised here).
        rare_classes: class ids counted as rare for ``rare_small_prob`` (default: the rarer
            half by weight, i.e. the classes with the highest paste weight).
        rare_small_prob: probability that a pasted rare-class instance is resized so its
            longer side falls in ``small_size`` pixels (addresses scale imbalance too).
        small_size: ``(min, max)`` longer side in pixels for those small pastes.
    """

    def __init__(
        self,
        *,
        weights: Mapping[int, float],
        rare_classes: Sequence[int] | None = None,
        rare_small_prob: float = 0.0,
        small_size: tuple[int, int] = (8, 32),
    ):
        if not weights:
            raise ValueError("ClassSampler: weights is empty; expected at least one class.")
        classes = [int(c) for c in weights]
        w = np.asarray([float(weights[c]) for c in weights], dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"ClassSampler: weights must be finite, non-negative and not all zero, got "
                f"{dict(zip(classes, w.tolist()))}."
            )
        if not 0.0 <= rare_small_prob <= 1.0:
            raise ValueError(f"rare_small_prob must be in [0, 1], got {rare_small_prob}.")
        if small_size[0] <= 0 or small_size[1] < small_size[0]:
            raise ValueError(f"small_size must be (min, max) with 0 < min <= max: {small_size}")
        self.classes = classes
        self.probs = w / w.sum()
        # What Generator.choice(p=...) does inside, minus its per-call validation of p
        # (same draws for the same generator state).
        self._cdf = np.cumsum(self.probs)
        self._cdf /= self._cdf[-1]
        if rare_classes is None:
            order = np.argsort(-self.probs, kind="stable")
            rare_classes = [classes[i] for i in order[: max(len(classes) // 2, 1)]]
        self.rare_classes = {int(c) for c in rare_classes}
        self.rare_small_prob = float(rare_small_prob)
        self.small_size = (int(small_size[0]), int(small_size[1]))

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def uniform(cls, classes: Sequence[int], **kwargs) -> ClassSampler:
        """Every class equally likely (random copy-paste baseline)."""
        return cls(weights={int(c): 1.0 for c in classes}, **kwargs)

    @classmethod
    def inverse_frequency(
        cls,
        counts: Mapping[int, int],
        *,
        smoothing: float = 1.0,
        power: float = 1.0,
        **kwargs,
    ) -> ClassSampler:
        """``p(c) ∝ (n_c + smoothing) ** -power``.

        ``power=0.5`` is the square-root rule; larger ``smoothing`` flattens the result
        towards uniform when counts are small.
        """
        if smoothing < 0 or power < 0:
            raise ValueError(f"smoothing and power must be >= 0, got {smoothing}, {power}.")
        if smoothing == 0 and any(n <= 0 for n in counts.values()):
            raise ValueError("inverse_frequency: a class has count 0; use smoothing > 0.")
        weights = {int(c): (float(n) + smoothing) ** -power for c, n in counts.items()}
        return cls(weights=weights, **kwargs)

    @classmethod
    def target_distribution(
        cls, counts: Mapping[int, int], target: Mapping[int, float], **kwargs
    ) -> ClassSampler:
        """Paste where the dataset falls short of ``target`` (class -> share, normalised).

        If the dataset already matches the target everywhere, pastes follow ``target``.
        """
        tot_t = float(sum(target.values()))
        tot_n = float(sum(counts.get(c, 0) for c in target))
        if tot_t <= 0:
            raise ValueError(f"target_distribution: target shares sum to {tot_t}, need > 0.")
        deficit = {}
        for c, t in target.items():
            f = counts.get(c, 0) / tot_n if tot_n > 0 else 0.0
            deficit[int(c)] = max(t / tot_t - f, 0.0)
        if sum(deficit.values()) <= 1e-12:
            deficit = {int(c): float(t) for c, t in target.items()}
        return cls(weights=deficit, **kwargs)

    @classmethod
    def metric_gaps(
        cls,
        metrics: Mapping[int, float],
        *,
        power: float = 1.0,
        eps: float = 0.01,
        reference: float | None = None,
        **kwargs,
    ) -> ClassSampler:
        """From per-class metrics (higher is better): weak classes get more pastes.

        Args:
            metrics: class id -> metric (e.g. last evaluation's AP or IoU, any scale).
            reference: the level to close the gap to (default: the best class's metric).
            eps: keeps the best class in play.
        """
        vals = {int(c): float(v) for c, v in metrics.items()}
        if any(not np.isfinite(v) for v in vals.values()):
            raise ValueError(f"metric_gaps: non-finite metric in {vals}.")
        ref = max(vals.values()) if reference is None else float(reference)
        weights = {c: (max(ref - v, 0.0) + eps) ** power for c, v in vals.items()}
        return cls(weights=weights, **kwargs)

    # -- sampling ----------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` class ids drawn independently from the paste distribution."""
        idx = self._cdf.searchsorted(rng.random(n), side="right")
        return [self.classes[i] for i in idx.tolist()]

    def restrict(self, available: Sequence[int]) -> ClassSampler:
        """A sampler over the classes in ``available`` only (renormalised)."""
        avail = set(int(c) for c in available)
        weights = {c: p for c, p in zip(self.classes, self.probs) if c in avail}
        if not weights or sum(weights.values()) <= 0:
            raise ValueError(
                f"ClassSampler.restrict: none of the classes {self.classes} with non-zero "
                f"weight is available (available: {sorted(avail)})."
            )
        return ClassSampler(
            weights=weights,
            rare_classes=[c for c in self.rare_classes if c in avail],
            rare_small_prob=self.rare_small_prob,
            small_size=self.small_size,
        )

    def small_side(self, rng: np.random.Generator, label: int) -> int | None:
        """Target longer side in pixels for a rare-class paste, or None for normal scale."""
        if self.rare_small_prob <= 0 or label not in self.rare_classes:
            return None
        if rng.random() >= self.rare_small_prob:
            return None
        return int(rng.integers(self.small_size[0], self.small_size[1] + 1))

    def as_dict(self) -> dict[int, float]:
        return {c: float(p) for c, p in zip(self.classes, self.probs)}

    def __repr__(self) -> str:
        top = sorted(self.as_dict().items(), key=lambda kv: -kv[1])[:5]
        return f"ClassSampler({len(self.classes)} classes, top {top})"
