"""Adversarial Spatial Dropout Network (ASDN) of A-Fast-RCNN (Wang et al., CVPR 2017).

ASDN predicts, for each ROI, an occlusion score per cell of the ``S x S`` pooled grid.

* Stage 1 (pre-training): the target for each ROI is the window (default ``S // 3`` cells
  square) whose zeroing raises the detector's classification loss most, found by sliding
  it over the grid (:func:`asdn_stage1_targets`); ASDN learns it with a per-cell BCE.
* Stage 2 (joint): the highest-scoring cells (default a third, drawn with sampling) are
  dropped from the ROI features fed to the detector (:func:`asdn_drop_mask`). ASDN keeps
  learning to produce the masks that hurt the detector most (:func:`asdn_adversarial_loss`).

Gradient isolation: ASDN reads *detached* features (its loss must not train the backbone)
and the mask applied to the detector is a *detached* binary tensor (the detector's loss
must not train ASDN); ASDN learns only through its own loss, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._chunks import run_in_chunks

__all__ = [
    "ASDN",
    "ASDNMaskLoss",
    "apply_drop_mask",
    "asdn_adversarial_loss",
    "asdn_adversarial_rois",
    "asdn_drop_mask",
    "asdn_mask_loss",
    "asdn_stage1_targets",
    "sliding_window_masks",
]


def _check_roi_features(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected ROI features of shape (N, C, S, S), got {got}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels (N, {channels}, S, S), got {tuple(x.shape)}"
        )


class ASDN(nn.Module):
    """Mask network: ROI features to per-cell occlusion logits.

    Args:
        in_channels: channels ``C`` of the pooled ROI features.
        hidden_channels: width of the two 3x3 convolutions.
        chunk_size: ROIs per call of the network (0: all at once). Chunks bound the
            temporaries of the forward and of the backward of the convolutions.
        checkpoint: with gradients, keep no activations of the chunks for the backward
            pass and recompute them there (less peak memory, one more forward).

    Shape:
        - features: ``(N, C, S, S)``
        - output: ``(N, S, S)`` logits (higher = drop this cell)
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_channels: int = 64,
        chunk_size: int = 64,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if chunk_size < 0:
            raise ValueError(f"ASDN: chunk_size must be >= 0, got {chunk_size}")
        self.in_channels = in_channels
        self.chunk_size = int(chunk_size)
        self.checkpoint = bool(checkpoint)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_roi_features("ASDN features", features, self.in_channels)
        logits = run_in_chunks(
            self.body, features, chunk_size=self.chunk_size, checkpoint_chunks=self.checkpoint
        )
        return logits.squeeze(1)


def sliding_window_masks(
    roi_size: int, *, window: int | None = None, stride: int = 1, device=None
) -> torch.Tensor:
    """All placements of a square window on the ``S x S`` grid, as binary masks.

    Args:
        roi_size: ``S``.
        window: side of the window in cells (default ``max(1, S // 3)``).
        stride: step between placements.

    Shape:
        - output: ``(K, S, S)`` float, 1 inside the window; ``K = ((S - w) // stride + 1)**2``
    """
    window = max(1, roi_size // 3) if window is None else window
    if not 1 <= window <= roi_size or stride < 1:
        raise ValueError(
            f"sliding_window_masks: expected 1 <= window <= S={roi_size} and stride >= 1, "
            f"got window={window}, stride={stride}"
        )
    starts = range(0, roi_size - window + 1, stride)
    masks = []
    for y in starts:
        for x in starts:
            m = torch.zeros(roi_size, roi_size, device=device)
            m[y : y + window, x : x + window] = 1.0
            masks.append(m)
    return torch.stack(masks)


@torch.no_grad()
def asdn_stage1_targets(
    features: torch.Tensor,
    per_roi_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    window: int | None = None,
    stride: int = 1,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 ASDN targets: per ROI, the window whose zeroing maximises the loss.

    Args:
        features: pooled ROI features, used as given (no gradient is recorded).
        per_roi_loss: host callback ``(occluded_features, roi_index) -> (M,) losses`` giving
            the detector's classification loss of each occluded ROI; ``roi_index`` tells which
            original ROI each row of ``occluded_features`` belongs to, so the callback can
            look up its label.
        window: window side in cells (default ``S // 3``).
        stride: sliding step in cells.
        chunk_size: occluded copies evaluated per callback call (bounds memory).

    Returns:
        ``(targets, best)``: the chosen masks and, per ROI, the index of the chosen window
        in :func:`sliding_window_masks`.

    Shape:
        - features: ``(N, C, S, S)``
        - targets: ``(N, S, S)`` float in {0, 1}
        - best: ``(N,)`` long
    """
    _check_roi_features("asdn_stage1_targets features", features)
    n, _, s, _ = features.shape
    windows = sliding_window_masks(s, window=window, stride=stride, device=features.device)
    k = windows.shape[0]
    if n == 0:
        return features.new_zeros(0, s, s), torch.zeros(0, dtype=torch.long)

    # Row r of the flattened (N * K) batch is ROI r // K occluded by window r % K.
    losses = []
    total = n * k
    for start in range(0, total, chunk_size):
        idx = torch.arange(start, min(start + chunk_size, total), device=features.device)
        roi, win = idx // k, idx % k
        occluded = features[roi] * (1.0 - windows[win]).unsqueeze(1).to(features.dtype)
        out = per_roi_loss(occluded, roi)
        if out.shape != roi.shape:
            raise ValueError(
                f"asdn_stage1_targets: per_roi_loss must return one loss per row, shape "
                f"{tuple(roi.shape)}, got {tuple(out.shape)}"
            )
        losses.append(out.float())
    best = torch.cat(losses).view(n, k).argmax(dim=1)
    return windows[best], best


def asdn_mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-cell BCE between ASDN logits and binary target masks (mean; 0 if empty).

    Shape:
        - logits, targets: ``(N, S, S)``
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"asdn_mask_loss: logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)} must have the same shape (N, S, S)"
        )
    if not logits.numel():
        return logits.sum()
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


class ASDNMaskLoss(nn.Module):
    """Module form of :func:`asdn_mask_loss`."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return asdn_mask_loss(logits, targets)


@torch.no_grad()
def asdn_drop_mask(
    logits: torch.Tensor,
    *,
    drop_fraction: float = 1.0 / 3.0,
    sample: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Binary drop mask from ASDN scores: ``round(drop_fraction * S * S)`` cells per ROI.

    With ``sample`` the cells are drawn without replacement with probability proportional
    to their sigmoid score (Gumbel top-k), so the detector meets varied occlusions; without
    it the top-scoring cells are dropped deterministically. The result carries no gradient.

    Shape:
        - logits: ``(N, S, S)``
        - output: ``(N, S, S)`` float, 1 = dropped cell
    """
    if logits.dim() != 3:
        raise ValueError(f"asdn_drop_mask: expected logits (N, S, S), got {tuple(logits.shape)}")
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"asdn_drop_mask: drop_fraction must be in [0, 1], got {drop_fraction}")
    n, s, _ = logits.shape
    k = int(round(drop_fraction * s * s))
    flat = logits.reshape(n, s * s).float()
    mask = torch.zeros_like(flat)
    if n == 0 or k == 0:
        return mask.view(n, s, s).to(logits.dtype)
    scores = F.logsigmoid(flat)
    if sample:
        u = torch.rand(flat.shape, generator=generator, device=flat.device)
        scores = scores - torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    top = scores.topk(k, dim=1).indices
    mask.scatter_(1, top, 1.0)
    return mask.view(n, s, s).to(logits.dtype)


def apply_drop_mask(features: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Zero the dropped cells in every channel; the mask is detached on purpose.

    Shape:
        - features: ``(N, C, S, S)``
        - drop: ``(N, S, S)`` (1 = drop)
        - output: ``(N, C, S, S)``
    """
    _check_roi_features("apply_drop_mask features", features)
    if drop.shape != (features.shape[0], *features.shape[-2:]):
        raise ValueError(
            f"apply_drop_mask: drop must be (N, S, S) = ({features.shape[0]}, "
            f"{features.shape[2]}, {features.shape[3]}), got {tuple(drop.shape)}"
        )
    return features * (1.0 - drop.detach()).unsqueeze(1).to(features.dtype)


def asdn_adversarial_rois(
    occluded_loss: torch.Tensor, clean_loss: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices of the ROIs that :func:`asdn_adversarial_loss` trains on.

    Those whose occluded classification loss is above the reference (the clean loss when
    given, else the batch median). A host can compute ASDN's scores for all ROIs under
    ``no_grad``, then run ASDN's trainable forward on these ROIs only and pass that subset
    to :func:`asdn_adversarial_loss`: the gradient is the same and the other ROIs keep no
    activations for the backward pass.

    Shape:
        - occluded_loss, clean_loss: ``(N,)``
        - output: ``(M,)`` long, ``M <= N``
    """
    if occluded_loss.dim() != 1:
        raise ValueError(
            f"asdn_adversarial_rois: expected occluded_loss (N,), got {tuple(occluded_loss.shape)}"
        )
    if not occluded_loss.numel():
        return torch.zeros(0, dtype=torch.long, device=occluded_loss.device)
    occluded_loss = occluded_loss.detach()
    reference = _loss_reference(occluded_loss, clean_loss, "asdn_adversarial_rois")
    return torch.where(occluded_loss > reference)[0]


def _loss_reference(
    occluded_loss: torch.Tensor, clean_loss: torch.Tensor | None, caller: str
) -> torch.Tensor:
    """The loss a ROI's occluded loss must exceed: its clean loss, else the batch median."""
    if clean_loss is None:
        return occluded_loss.detach().median()
    if clean_loss.shape != occluded_loss.shape:
        raise ValueError(
            f"{caller}: clean_loss {tuple(clean_loss.shape)} and occluded_loss "
            f"{tuple(occluded_loss.shape)} must both be (N,)"
        )
    return clean_loss.detach()


def asdn_adversarial_loss(
    logits: torch.Tensor,
    drop: torch.Tensor,
    occluded_loss: torch.Tensor,
    clean_loss: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stage-2 ASDN loss: reinforce the sampled masks that hurt the detector.

    For ROIs whose classification loss under the sampled mask is above the reference, the
    mask becomes the target (BCE, pulling the scores of the dropped cells up and the rest
    down); the other ROIs are ignored. The reference is the ROI's loss on clean features
    when given, else the median occluded loss of the batch (saves a second forward of the
    box head: the harder half of the masks is reinforced). This makes ASDN follow the
    detector as it learns to cope with its occlusions, which is how we read the paper's
    joint training. All targets and
    weights are detached: only ``logits`` receives gradients.

    Shape:
        - logits: ``(N, S, S)`` ASDN logits (with gradient)
        - drop: ``(N, S, S)`` sampled drop mask
        - occluded_loss, clean_loss: ``(N,)`` per-ROI classification losses
        - output: scalar (0 when no ROI qualifies)
    """
    if logits.shape != drop.shape or occluded_loss.shape != logits.shape[:1]:
        raise ValueError(
            f"asdn_adversarial_loss: expected logits/drop (N, S, S) and occluded_loss (N,), "
            f"got {tuple(logits.shape)}, {tuple(drop.shape)}, {tuple(occluded_loss.shape)}"
        )
    if not logits.numel():
        return logits.sum()
    reference = _loss_reference(occluded_loss, clean_loss, "asdn_adversarial_loss")
    weight = (occluded_loss.detach() > reference).to(logits.dtype)
    if not bool(weight.any()):
        return logits.sum() * 0.0
    per_roi = F.binary_cross_entropy_with_logits(
        logits, drop.detach().to(logits.dtype), reduction="none"
    ).mean(dim=(1, 2))
    return (per_roi * weight).sum() / weight.sum()
