"""Adversarial Spatial Transformer Network (ASTN) of A-Fast-RCNN (Wang et al., CVPR 2017).

A localisation network predicts, per ROI and per channel group, a rotation bounded to
``±max_angle`` degrees; the groups of the pooled ROI features are rotated through an
affine grid (the paper splits channels so that each group sees a different deformation).
ASTN is trained to *raise* the detector's loss. :class:`ASTN` does this with a gradient
reversal on the predicted angles, so one backward of the detector's loss trains the
detector to minimise it and ASTN to maximise it; the caller steps ASTN's parameters with
their own optimizer. The localisation network reads detached features, so the reversed
gradient never reaches the backbone. Training-only: callers skip ASTN at inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._chunks import run_in_chunks

__all__ = ["ASTN", "GradientReversal", "grad_reverse", "rotate_features"]


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Functional form of :class:`GradientReversal`."""
    return GradientReversal.apply(x, scale)


def rotate_features(
    features: torch.Tensor, angles: torch.Tensor, *, align_corners: bool = False
) -> torch.Tensor:
    """Rotate each channel group of ROI features about the ROI centre.

    Channels are split into ``G = angles.shape[1]`` equal consecutive groups; group ``g`` of
    ROI ``n`` is rotated by ``angles[n, g]`` radians about the centre, positive angles
    turning the +x axis towards +y (clockwise as displayed, since y points down), with
    bilinear sampling and zero padding outside.

    Shape:
        - features: ``(N, C, S, S)``, ``C`` divisible by ``G``
        - angles: ``(N, G)`` radians
        - output: ``(N, C, S, S)``
    """
    if features.dim() != 4:
        raise ValueError(f"rotate_features: expected (N, C, S, S), got {tuple(features.shape)}")
    n, c, h, w = features.shape
    if angles.dim() != 2 or angles.shape[0] != n or c % angles.shape[1]:
        raise ValueError(
            f"rotate_features: expected angles (N={n}, G) with C={c} divisible by G, "
            f"got {tuple(angles.shape)}"
        )
    g = angles.shape[1]
    if n == 0:
        return features
    a = angles.reshape(n * g).to(features.dtype)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # affine_grid maps output coords to input coords: rotating the content by +a means
    # sampling the input at the output position rotated by -a.
    theta = torch.stack(
        [torch.stack([cos, sin, zero], dim=1), torch.stack([-sin, cos, zero], dim=1)], dim=1
    )
    x = features.reshape(n * g, c // g, h, w)
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.reshape(n, c, h, w)


class ASTN(nn.Module):
    """Localisation network + per-group rotation, trained adversarially.

    Args:
        in_channels: channels ``C`` of the pooled ROI features.
        num_groups: channel groups ``G`` (``C`` must be divisible by it); each gets its own
            angle.
        max_angle: bound on the rotation, in degrees (default 10).
        hidden_channels: width of the localisation network.
        reverse_scale: gradient-reversal factor on the angles; 0 freezes ASTN's learning,
            e.g. when the caller trains it in a separate step instead.
        loc_chunk_size: ROIs per call of the localisation network (0: all at once);
            bounds the temporaries of its forward and backward.
        loc_checkpoint: with gradients, keep no activations of the localisation network
            and recompute them in the backward pass (less memory, one more forward).

    The last layer starts at zero, so an untrained ASTN does not rotate.

    Shape:
        - features: ``(N, C, S, S)``
        - output: ``(rotated (N, C, S, S), angles (N, G) in radians)``
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_groups: int = 4,
        max_angle: float = 10.0,
        hidden_channels: int = 64,
        reverse_scale: float = 1.0,
        loc_chunk_size: int = 64,
        loc_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_groups < 1 or in_channels % num_groups:
            raise ValueError(
                f"ASTN: in_channels={in_channels} must be divisible by num_groups={num_groups}"
            )
        if not 0.0 < max_angle <= 180.0:
            raise ValueError(f"ASTN: max_angle must be in (0, 180] degrees, got {max_angle}")
        self.in_channels = in_channels
        self.num_groups = num_groups
        self.max_angle = float(max_angle)
        self.reverse_scale = float(reverse_scale)
        if loc_chunk_size < 0:
            raise ValueError(f"ASTN: loc_chunk_size must be >= 0, got {loc_chunk_size}")
        self.loc_chunk_size = int(loc_chunk_size)
        self.loc_checkpoint = bool(loc_checkpoint)
        self.loc = nn.Sequential(
            # Stride 2: the angles need the ROI's layout, not every cell; a quarter of the
            # positions makes the network (and its kept activations) 4x cheaper.
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden_channels, hidden_channels),
            nn.ReLU(inplace=True),
        )
        self.angle = nn.Linear(hidden_channels, num_groups)
        nn.init.zeros_(self.angle.weight)
        nn.init.zeros_(self.angle.bias)

    def predict_angles(self, features: torch.Tensor) -> torch.Tensor:
        """Bounded angles in radians, ``(N, G)``; reads ``features`` detached."""
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"ASTN: expected features (N, {self.in_channels}, S, S), "
                f"got {tuple(features.shape)}"
            )
        logits = run_in_chunks(
            self._loc_logits,
            features.detach(),
            chunk_size=self.loc_chunk_size,
            checkpoint_chunks=self.loc_checkpoint,
        )
        return math.radians(self.max_angle) * torch.tanh(logits)

    def _loc_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.angle(self.loc(x))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = self.predict_angles(features)
        if features.shape[0] == 0:
            return features, angles
        rotated = rotate_features(features, grad_reverse(angles, self.reverse_scale))
        return rotated, angles.detach()
