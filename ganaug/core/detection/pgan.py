"""Perceptual GAN for small objects on ROI features (Li et al., CVPR 2017).

The generator learns a residual that, added to a small proposal's pooled features, makes
them resemble the features of large objects. It sees the coarse pooled features and,
where the host exposes one, a finer feature level of the same ROI (the paper feeds
lower-layer features into the residual branch). The discriminator has two branches:

* an *adversarial* branch (:class:`PerceptualDiscriminator`) telling real large-object ROI
  features from generated small-object ones, and
* a *perceptual* branch, which is the host detector's own box head: its classification
  and regression losses on the generated features push the generator towards features
  that are useful for detection. Hosts compute those losses themselves (an adapter calls
  its box predictor on the output of :meth:`PerceptualGAN.enhance`).

The generator also runs at inference, on small proposals only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_SMALL_AREA",
    "PerceptualDiscriminator",
    "PerceptualGAN",
    "PerceptualGANLoss",
    "PerceptualGenerator",
    "box_areas",
    "pgan_discriminator_loss",
    "pgan_generator_loss",
    "small_object_mask",
]

#: COCO's rule for a small object: area below 32 x 32 input pixels.
DEFAULT_SMALL_AREA = 32.0 * 32.0


def _check_roi_features(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected ROI features of shape (N, C, S, S), got {got}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels (N, {channels}, S, S), got {tuple(x.shape)}"
        )


def box_areas(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``(x1, y1, x2, y2)`` boxes; degenerate boxes have area 0.

    Shape:
        - boxes: ``(N, 4)``
        - output: ``(N,)``
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"box_areas: expected boxes of shape (N, 4), got {tuple(boxes.shape)}")
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return wh[:, 0] * wh[:, 1]


def small_object_mask(
    boxes: torch.Tensor, *, area_threshold: float = DEFAULT_SMALL_AREA, scale: float = 1.0
) -> torch.Tensor:
    """Which boxes are small: ``area / scale**2 < area_threshold``.

    Args:
        boxes: ``(x1, y1, x2, y2)`` boxes in the coordinates of the (possibly resized)
            network input.
        area_threshold: threshold in *original input* pixels (default 32 x 32).
        scale: factor by which the host resized the input image before taking boxes
            (``resized = scale * original``); areas are divided by ``scale**2`` so the
            threshold keeps its meaning in original pixels.

    Shape:
        - boxes: ``(N, 4)``
        - output: ``(N,)`` bool
    """
    if scale <= 0:
        raise ValueError(f"small_object_mask: scale must be > 0, got {scale}")
    return box_areas(boxes) / (scale * scale) < area_threshold


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class PerceptualGenerator(nn.Module):
    """Residual generator: ``out = features + R(features, fine_features)``.

    ``R``: a 1x1 convolution fusing the coarse and fine features to ``hidden_channels``,
    ``num_blocks`` residual blocks of two 3x3 convolutions, and a 1x1 convolution back to
    ``C`` channels.

    Args:
        in_channels: channels ``C`` of the pooled ROI features.
        fine_channels: channels of the finer-level ROI features, 0 when the host has none.
        hidden_channels: width of the residual branch (default ``C``).
        num_blocks: residual blocks in the branch.

    The last convolution starts at zero, so an untrained generator is the identity and the
    detector it is plugged into behaves as before until the generator learns something.

    Shape:
        - features: ``(N, C, S, S)``
        - fine_features: ``(N, C_f, S_f, S_f)``, any ``S_f``; resampled to ``S x S``
        - output: ``(N, C, S, S)``
    """

    def __init__(
        self,
        *,
        in_channels: int,
        fine_channels: int = 0,
        hidden_channels: int | None = None,
        num_blocks: int = 2,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or fine_channels < 0 or num_blocks < 0:
            raise ValueError(
                "PerceptualGenerator: expected in_channels > 0, fine_channels >= 0, "
                f"num_blocks >= 0, got {in_channels}, {fine_channels}, {num_blocks}"
            )
        hidden = hidden_channels or in_channels
        self.in_channels = in_channels
        self.fine_channels = fine_channels
        # A 1x1 fusion of the coarse and fine features: the residual blocks' 3x3 convolutions
        # supply the spatial context, and a 3x3 stem over C + C_f channels would cost as
        # much as both blocks (the generator runs on every small proposal at inference).
        self.stem = nn.Conv2d(in_channels + fine_channels, hidden, 1)
        self.blocks = nn.Sequential(*[_ResBlock(hidden) for _ in range(num_blocks)])
        self.out = nn.Conv2d(hidden, in_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def residual(
        self, features: torch.Tensor, fine_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The learned residual ``R`` alone, shape ``(N, C, S, S)``."""
        _check_roi_features("PerceptualGenerator features", features, self.in_channels)
        x = features
        if self.fine_channels:
            if fine_features is None:
                raise ValueError(
                    f"PerceptualGenerator was built with fine_channels={self.fine_channels} "
                    "but got fine_features=None"
                )
            _check_roi_features("PerceptualGenerator fine_features", fine_features)
            if fine_features.shape[0] != features.shape[0] or (
                fine_features.shape[1] != self.fine_channels
            ):
                raise ValueError(
                    f"PerceptualGenerator: fine_features must be ({features.shape[0]}, "
                    f"{self.fine_channels}, S_f, S_f), got {tuple(fine_features.shape)}"
                )
            fine = fine_features
            if fine.shape[-2:] != features.shape[-2:]:
                fine = F.adaptive_avg_pool2d(fine, features.shape[-2:])
            x = torch.cat([features, fine], dim=1)
        elif fine_features is not None:
            raise ValueError(
                "PerceptualGenerator was built with fine_channels=0 but got fine_features"
            )
        return self.out(self.blocks(F.relu(self.stem(x))))

    def forward(
        self, features: torch.Tensor, fine_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return features + self.residual(features, fine_features)


class PerceptualDiscriminator(nn.Module):
    """Adversarial branch: one logit per ROI, high for real large-object features.

    Args:
        in_channels: channels ``C`` of the ROI features.
        hidden_channels: width of the convolutional trunk.

    Shape:
        - features: ``(N, C, S, S)``
        - output: ``(N,)`` logits
    """

    def __init__(self, *, in_channels: int, hidden_channels: int = 128) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, stride=2),
            nn.LeakyReLU(0.2),
        )
        self.fc = nn.Linear(hidden_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_roi_features("PerceptualDiscriminator features", features, self.in_channels)
        h = self.trunk(features).mean(dim=(2, 3))
        return self.fc(h).squeeze(1)


def pgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Adversarial-branch loss: BCE pushing real (large) up and generated (small) down.

    Either input may be empty (a batch without large or without small proposals); an empty
    side contributes 0. Returns a scalar that still depends on the non-empty side.

    Shape:
        - real_logits: ``(N_large,)``
        - fake_logits: ``(N_small,)``
    """
    loss = real_logits.new_zeros(())
    if real_logits.numel():
        loss = loss + F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    if fake_logits.numel():
        loss = loss + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return loss


def pgan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-log D(G(x))``; 0 for an empty batch.

    Shape:
        - fake_logits: ``(N_small,)``
    """
    if not fake_logits.numel():
        return fake_logits.sum()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class PerceptualGANLoss(nn.Module):
    """Module form of :func:`pgan_discriminator_loss` / :func:`pgan_generator_loss`.

    ``forward(fake_logits)`` gives the generator loss; ``forward(fake_logits, real_logits)``
    gives the discriminator loss.
    """

    def forward(
        self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        if real_logits is None:
            return pgan_generator_loss(fake_logits)
        return pgan_discriminator_loss(real_logits, fake_logits)


class PerceptualGAN(nn.Module):
    """Generator + adversarial discriminator + small/large routing, for ROI heads.

    Adapters call :meth:`enhance` on the pooled ROI features, run their box head on the
    result (the perceptual branch), add :meth:`generator_loss` to the detector's losses and
    step the discriminator on :meth:`discriminator_loss` with its own optimizer.

    Args:
        in_channels: channels ``C`` of the pooled ROI features.
        fine_channels: channels of the finer-level ROI features (0: none).
        small_area: area threshold in original input pixels (default 32 x 32).
        gen_hidden: width of the generator's residual branch (default ``C``).
        gen_blocks: residual blocks in the generator.
        disc_hidden: width of the discriminator.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        fine_channels: int = 0,
        small_area: float = DEFAULT_SMALL_AREA,
        gen_hidden: int | None = None,
        gen_blocks: int = 2,
        disc_hidden: int = 128,
    ) -> None:
        super().__init__()
        if small_area <= 0:
            raise ValueError(f"PerceptualGAN: small_area must be > 0, got {small_area}")
        self.small_area = float(small_area)
        self.generator = PerceptualGenerator(
            in_channels=in_channels,
            fine_channels=fine_channels,
            hidden_channels=gen_hidden,
            num_blocks=gen_blocks,
        )
        self.discriminator = PerceptualDiscriminator(
            in_channels=in_channels, hidden_channels=disc_hidden
        )

    @property
    def needs_fine_features(self) -> bool:
        return self.generator.fine_channels > 0

    def small_mask(self, boxes: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        """``(N,)`` bool: which ROIs are small (see :func:`small_object_mask`)."""
        return small_object_mask(boxes, area_threshold=self.small_area, scale=scale)

    def enhance(
        self,
        features: torch.Tensor,
        small: torch.Tensor,
        fine_features: torch.Tensor | None = None,
        *,
        inplace: bool = False,
    ) -> torch.Tensor:
        """Replace the features of small ROIs by the generator's output.

        Args:
            features: pooled features of all ROIs.
            small: bool mask of the small ROIs.
            fine_features: finer-level features of the *small* ROIs only (in the order of
                ``features[small]``), or None.
            inplace: write the generated rows into ``features`` itself instead of a copy
                (for inference, where the caller no longer needs the original rows: saves
                copying the whole ROI stack). Refused when autograd records ``features``.

        Shape:
            - features: ``(N, C, S, S)``
            - small: ``(N,)`` bool
            - fine_features: ``(N_small, C_f, S_f, S_f)``
            - output: ``(N, C, S, S)``; large rows are ``features`` unchanged
        """
        _check_roi_features("PerceptualGAN.enhance features", features)
        if small.shape != features.shape[:1] or small.dtype != torch.bool:
            raise ValueError(
                f"PerceptualGAN.enhance: small must be a bool tensor of shape "
                f"({features.shape[0]},), got {small.dtype} {tuple(small.shape)}"
            )
        if not bool(small.any()):
            return features
        if inplace and features.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "PerceptualGAN.enhance: inplace=True on features that autograd records; "
                "use it under torch.no_grad() (inference)"
            )
        generated = self.generator(features[small], fine_features)
        out = features if inplace else features.clone()
        out[small] = generated
        return out

    def generator_loss(self, generated_small: torch.Tensor) -> torch.Tensor:
        """Adversarial loss for the generator, without filling the discriminator's grads.

        The discriminator's parameters are frozen during this forward so that a single
        backward over all losses trains only the generator (and detector) here.

        Shape:
            - generated_small: ``(N_small, C, S, S)``
        """
        params = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            logits = self.discriminator(generated_small)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        return pgan_generator_loss(logits)

    def discriminator_loss(
        self, real_large: torch.Tensor, generated_small: torch.Tensor
    ) -> torch.Tensor:
        """Adversarial-branch loss; both inputs are detached so only D gets gradients.

        Shape:
            - real_large: ``(N_large, C, S, S)``
            - generated_small: ``(N_small, C, S, S)``
        """
        real = self.discriminator(real_large.detach())
        fake = self.discriminator(generated_small.detach())
        return pgan_discriminator_loss(real, fake)
