"""Class-weighted cross-entropy for mmseg decode heads."""

from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS
from torch import nn

from ganaug.core.adversarial import weighted_cross_entropy
from ganaug.mmseg.adversarial import median_frequency_from_dir


@MODELS.register_module()
class WeightedCrossEntropyLoss(nn.Module):
    """Pixel cross-entropy with per-class weights, for ``decode_head.loss_decode``.

    mmseg 1.2's ``CrossEntropyLoss(class_weight=...)`` fails on label maps that contain the
    ignore index (it indexes the weights with 255); this loss handles them.

    Args:
        class_weight: ``None``, a list of K weights, or ``dict(type='median_frequency',
            seg_map_dir=..., num_classes=K, void_values=[...], max_weight=None)``, computed
            once from the training label maps (Eigen & Fergus' median-frequency balancing).
        loss_weight: multiplies the loss.
        loss_name: key in the loss dict (mmseg sums every key starting with ``loss_``).
    """

    def __init__(
        self,
        class_weight: list | dict | None = None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_ce",
    ) -> None:
        super().__init__()
        if isinstance(class_weight, dict):
            cfg = dict(class_weight)
            kind = cfg.pop("type", None)
            if kind != "median_frequency":
                raise ValueError(
                    f"class_weight dict must have type='median_frequency', got {kind!r}"
                )
            if "seg_map_dir" not in cfg or "num_classes" not in cfg:
                raise ValueError("median_frequency class_weight needs seg_map_dir and num_classes")
            class_weight = median_frequency_from_dir(
                cfg["seg_map_dir"],
                cfg["num_classes"],
                void_values=cfg.get("void_values", (255,)),
                max_weight=cfg.get("max_weight"),
            )
            print_log(
                "WeightedCrossEntropyLoss: median-frequency weights "
                + ", ".join(f"{w:.3g}" for w in class_weight),
                logger="current",
            )
        weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    def forward(self, cls_score, label, weight=None, ignore_index=255, **kwargs):
        if weight is not None:
            raise ValueError("WeightedCrossEntropyLoss does not take per-pixel weights")
        loss = weighted_cross_entropy(cls_score, label, self.class_weight, ignore_index)
        return self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        return self._loss_name
