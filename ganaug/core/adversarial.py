"""Adversarial training of segmentors with a label-map discriminator.

Luc et al. 2016 ("Semantic Segmentation using Adversarial Networks") train a discriminator
to tell ground-truth label maps from the segmentor's predicted class-probability maps, each
shown together with the image, and add the discriminator's verdict on predictions to the
segmentor's loss. Class-weighted cross-entropy (median-frequency weights) follows the
weighted variants used for imbalanced segmentation (e.g. Rezaei et al.'s Voxel-GAN).

Everything here is plain PyTorch; the mmseg adapter lives in :mod:`ganaug.mmseg`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

ADV_LOSS_TYPES = ("vanilla", "lsgan", "hinge")


class LabelMapDiscriminator(nn.Module):
    """Fully convolutional PatchGAN-style discriminator over (image, label map) pairs.

    The image and a class-probability map (softmax of a segmentor, or one-hot ground truth)
    are concatenated along channels; each output cell judges one patch.

    Args:
        num_classes: channels of the probability map.
        in_channels: image channels.
        base_channels: channels of the first convolution; doubled at each stride-2 layer.
        num_layers: number of stride-2 convolutions (each halves the resolution).
        downsample: average-pool factor applied to both inputs first; the discriminator
            judges layouts, not fine texture, so working at reduced resolution keeps its
            cost small next to the segmentor's.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.

    Shape:
        - image: ``(B, in_channels, H, W)``
        - prob: ``(B, num_classes, H, W)``
        - output: ``(B, 1, H', W')`` raw scores (logits), ``H' ~ H / (downsample * 2**num_layers)``
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 32,
        num_layers: int = 3,
        downsample: int = 2,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.downsample = downsample

        layers: list[nn.Module] = []
        ch_in = in_channels + num_classes
        ch = base_channels
        for i in range(num_layers):
            layers.append(nn.Conv2d(ch_in, ch, kernel_size=4, stride=2, padding=1))
            # No normalisation on the first layer, as in PatchGAN: it sees raw inputs.
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(ch))
            elif i > 0 and norm == "instance":
                layers.append(nn.InstanceNorm2d(ch, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch_in, ch = ch, ch * 2
        layers.append(nn.Conv2d(ch_in, 1, kernel_size=3, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or prob.dim() != 4:
            raise ValueError(
                f"expected image (B, C, H, W) and prob (B, K, H, W), got shapes "
                f"{tuple(image.shape)} and {tuple(prob.shape)}"
            )
        if image.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} image channels, got {image.shape[1]}")
        if prob.shape[1] != self.num_classes:
            raise ValueError(
                f"expected {self.num_classes} probability channels, got {prob.shape[1]}"
            )
        if image.shape[0] != prob.shape[0] or image.shape[2:] != prob.shape[2:]:
            raise ValueError(
                f"image {tuple(image.shape)} and prob {tuple(prob.shape)} differ in batch "
                "or spatial size"
            )
        x = torch.cat([image, prob.to(image.dtype)], dim=1)
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample, ceil_mode=True)
        return self.net(x)


def one_hot_label_map(
    label: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """One-hot encode a label map; ignored pixels become all-zero vectors.

    Shape:
        - label: ``(B, H, W)`` integer
        - output: ``(B, num_classes, H, W)`` float
    """
    if label.dim() != 3:
        raise ValueError(f"expected label (B, H, W), got shape {tuple(label.shape)}")
    valid = torch.ones_like(label, dtype=torch.bool)
    if ignore_index is not None:
        valid = label != ignore_index
    bad = valid & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = torch.unique(label[bad]).tolist()
        raise ValueError(
            f"label values {values[:10]} are outside [0, {num_classes}) and are not the "
            f"ignore index {ignore_index}"
        )
    safe = torch.where(valid, label, torch.zeros_like(label)).long()
    out = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(torch.float32)
    return out * valid.unsqueeze(1)


def adversarial_loss(
    pred: torch.Tensor, target_is_real: bool, loss_type: str = "vanilla", *, for_disc: bool
) -> torch.Tensor:
    """GAN loss on discriminator scores.

    Args:
        pred: raw discriminator scores, any shape; averaged over all elements.
        target_is_real: whether ``pred`` should be judged real.
        loss_type: ``"vanilla"`` (binary cross-entropy on logits; the generator uses the
            non-saturating form), ``"lsgan"`` (least squares to 1/0) or ``"hinge"``.
        for_disc: whether the loss trains the discriminator. Only hinge differs: the
            discriminator gets the margin form, the generator ``-mean(pred)``.

    Returns:
        A scalar tensor.
    """
    if loss_type == "vanilla":
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        return F.binary_cross_entropy_with_logits(pred, target)
    if loss_type == "lsgan":
        target = 1.0 if target_is_real else 0.0
        return torch.mean((pred - target) ** 2)
    if loss_type == "hinge":
        if for_disc:
            sign = -1.0 if target_is_real else 1.0
            return torch.mean(F.relu(1.0 + sign * pred))
        if not target_is_real:
            raise ValueError("the hinge generator loss is defined for target_is_real=True only")
        return -torch.mean(pred)
    raise ValueError(f"loss_type must be one of {ADV_LOSS_TYPES}, got {loss_type!r}")


class AdversarialLoss(nn.Module):
    """Module form of :func:`adversarial_loss` with a weight.

    Args:
        loss_type: see :func:`adversarial_loss`.
        loss_weight: multiplies the loss.
    """

    def __init__(self, *, loss_type: str = "vanilla", loss_weight: float = 1.0) -> None:
        super().__init__()
        if loss_type not in ADV_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {ADV_LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target_is_real: bool, *, for_disc: bool) -> torch.Tensor:
        loss = adversarial_loss(pred, target_is_real, self.loss_type, for_disc=for_disc)
        return self.loss_weight * loss


def median_frequency_weights(
    counts: Iterable[float] | np.ndarray, *, max_weight: float | None = None
) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015): ``median(f) / f_c``.

    Args:
        counts: pixel count per class (length K). Classes with zero pixels get weight 0,
            since they cannot contribute to the loss anyway.
        max_weight: optional cap, to keep a nearly absent class from dominating.

    Returns:
        float32 array of shape ``(K,)``.
    """
    c = np.asarray(list(counts) if not isinstance(counts, np.ndarray) else counts, np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {c.shape}")
    if (c < 0).any():
        raise ValueError(f"counts must be non-negative, got {c.tolist()}")
    present = c > 0
    if not present.any():
        raise ValueError("all class counts are zero: no labelled pixels")
    freq = c / c.sum()
    median = np.median(freq[present])
    weights = np.zeros_like(freq)
    weights[present] = median / freq[present]
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return weights.astype(np.float32)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Toggle gradients of all parameters of ``module`` (freeze D while updating S)."""
    for p in module.parameters():
        p.requires_grad_(flag)


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Class-weighted pixel cross-entropy, averaged over the weights of labelled pixels.

    ``sum_i w[y_i] * CE_i / sum_i w[y_i]`` over pixels whose label is not ``ignore_index``,
    as ``torch.nn.functional.cross_entropy`` with ``weight=`` computes it; an all-ignored
    batch gives 0 (with a gradient) instead of NaN.

    Shape:
        - logits: ``(B, K, H, W)``
        - target: ``(B, H, W)`` integer labels in ``[0, K)`` or ``ignore_index``
        - class_weight: ``(K,)``
    """
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"expected logits (B, K, H, W) and target (B, H, W), got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    if class_weight is not None and class_weight.numel() != logits.shape[1]:
        raise ValueError(
            f"class_weight has {class_weight.numel()} entries, logits have {logits.shape[1]} "
            "classes"
        )
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    weight = None if class_weight is None else class_weight.to(logits)
    return F.cross_entropy(logits, target.long(), weight=weight, ignore_index=ignore_index)
