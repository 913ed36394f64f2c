"""Learned task-aware compositing (after Tripathi et al., CVPR 2019).

"Learning to Generate Synthetic Data via Compositing": a *synthesizer* looks at a
background and a foreground and predicts where and how to place the foreground (an affine
transform applied through a spatial transformer); a *discriminator* judges whether the
composite looks real; the *target* network (the detector being trained) supplies the task
signal: the synthesizer is trained to make composites that raise the target's loss (hard
examples) while fooling the discriminator, and the target is trained on those composites.

The target is any callable ``target_fn(images, targets) -> dict of scalar losses``,
``images`` a list of ``(3, H, W)`` float tensors in ``[0, 1]`` and ``targets`` a list of
dicts with ``boxes`` ``(N, 4)`` float xyxy, ``labels`` ``(N,)`` int64 and, when present,
``masks`` ``(N, H, W)`` uint8 or ``label_map`` ``(H, W)`` int64. A torchvision detection
model in train mode is such a callable; see ``ganaug.torchvision.paste`` for helpers.

Two training modes:

* online, beside the target (:meth:`TaskAwarePaste.online_step`): one backward pass
  serves both; the composite reaches the target through a gradient-reversal layer, so the
  target's descent on its loss is the synthesizer's ascent on it.
* offline, against a frozen target loaded from a checkpoint
  (:meth:`TaskAwarePaste.offline_step`), then :meth:`TaskAwarePaste.compose` generates data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .instances import Instance

logger = logging.getLogger(__name__)

__all__ = [
    "GradientReversal",
    "grad_reverse",
    "PlacementSynthesizer",
    "RealismDiscriminator",
    "affine_from_params",
    "warp_foreground",
    "instances_to_rgba",
    "discriminator_loss",
    "DiscriminatorLoss",
    "generator_adversarial_loss",
    "GeneratorAdversarialLoss",
    "TaskAwarePaste",
    "export_composites",
]

TargetFn = Callable[[list[torch.Tensor], list[dict]], dict]


# -- gradient reversal ------------------------------------------------------------------
class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-weight``."""

    @staticmethod
    def forward(ctx, x, weight: float):
        ctx.weight = float(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Pass ``x`` through; gradients flowing back are scaled by ``-weight``."""
    return GradientReversal.apply(x, weight)


# -- spatial transformer ------------------------------------------------------------------
def affine_from_params(
    scale: torch.Tensor,
    angle: torch.Tensor,
    shift: torch.Tensor,
    *,
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Sampling matrices for ``F.affine_grid`` placing a square foreground on a background.

    The foreground canvas (square, normalised coords ``[-1, 1]``) appears with side
    ``scale * min(H, W)`` pixels, turned by ``angle`` radians (clockwise as displayed,
    y down: the left edge goes up), centred at ``shift`` (normalised background coords).

    Shape:
        scale, angle: ``(B,)``; shift: ``(B, 2)`` as ``(x, y)``; returns ``(B, 2, 3)``.
    """
    height, width = out_hw
    side = scale * min(height, width)  # (B,) pixels
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output normalised -> pixel offsets from the centre (D_out), undo the rotation, then
    # pixels -> foreground normalised coords (1 / (side / 2)).
    a = (
        torch.stack(
            [
                torch.stack([cos * (width / 2), sin * (height / 2)], dim=-1),
                torch.stack([-sin * (width / 2), cos * (height / 2)], dim=-1),
            ],
            dim=-2,
        )
        / (side / 2)[:, None, None]
    )
    b = -(a @ shift.unsqueeze(-1))
    return torch.cat([a, b], dim=-1)


def warp_foreground(fg_rgba: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int]):
    """Warp an RGBA foreground onto an ``out_hw`` canvas (zeros outside).

    Shape:
        fg_rgba: ``(B, 4, S, S)``; theta: ``(B, 2, 3)``; returns ``(B, 4, H, W)``.
    """
    grid = F.affine_grid(theta, [fg_rgba.shape[0], 4, *out_hw], align_corners=False)
    return F.grid_sample(fg_rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def instances_to_rgba(
    instances: Sequence[Instance], *, size: int = 64, device=None
) -> torch.Tensor:
    """Pad each instance to a centred square, resize to ``size`` and stack as RGBA in [0, 1].

    Shape:
        returns ``(B, 4, size, size)`` float32; channel 3 is the mask.
    """
    out = np.zeros((len(instances), size, size, 4), np.float32)
    for i, inst in enumerate(instances):
        img = inst.image if inst.image.shape[2] == 3 else np.repeat(inst.image, 3, axis=2)
        h, w = inst.size
        side = max(h, w)
        canvas = np.zeros((side, side, 4), np.uint8)
        y0, x0 = (side - h) // 2, (side - w) // 2
        canvas[y0 : y0 + h, x0 : x0 + w, :3] = img
        canvas[y0 : y0 + h, x0 : x0 + w, 3] = inst.mask.astype(np.uint8) * 255
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(canvas, (size, size), interpolation=interp) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(device)


def _conv_block(cin, cout, sn=False):
    conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1)
    if sn:
        conv = nn.utils.parametrizations.spectral_norm(conv)
    return nn.Sequential(conv, nn.LeakyReLU(0.2, inplace=True))


class PlacementSynthesizer(nn.Module):
    """Predicts the foreground's affine placement from background and foreground.

    Args:
        in_size: both inputs are resized to this side before the encoder.
        width: channels of the first conv layer (doubled per stage, 4 stages).
        scale_range: ``(min, max)`` foreground side as a share of ``min(H, W)``.
        max_angle: rotation limit in degrees.
        max_shift: the centre stays within this share of the half-extent (``<= 1``).
        noise_dim: a random code added to the head's input, so that one pair can give
            several placements (0 disables it).

    Shape:
        forward(bg ``(B, 3, H, W)``, fg ``(B, 4, S, S)``) ->
        dict ``scale (B,)``, ``angle (B,)`` radians, ``shift (B, 2)``.
    """

    def __init__(
        self,
        *,
        in_size: int = 64,
        width: int = 16,
        scale_range: tuple[float, float] = (0.15, 0.6),
        max_angle: float = 15.0,
        max_shift: float = 0.8,
        noise_dim: int = 8,
    ):
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < min <= max, got {scale_range}.")
        self.in_size = in_size
        self.scale_range = scale_range
        self.max_angle = math.radians(max_angle)
        self.max_shift = max_shift
        self.noise_dim = noise_dim
        chans = [7, width, width * 2, width * 4, width * 8]
        self.encoder = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans, chans[1:])])
        self.head = nn.Sequential(
            nn.Linear(chans[-1] + noise_dim, 64), nn.ReLU(inplace=True), nn.Linear(64, 4)
        )
        # Small last layer: training starts near a mid-size, upright, centred placement.
        nn.init.normal_(self.head[-1].weight, std=0.01)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, bg: torch.Tensor, fg: torch.Tensor, noise: torch.Tensor | None = None):
        size = (self.in_size, self.in_size)
        x = torch.cat(
            [
                F.interpolate(bg, size=size, mode="bilinear", align_corners=False),
                F.interpolate(fg, size=size, mode="bilinear", align_corners=False),
            ],
            dim=1,
        )
        feat = self.encoder(x).mean(dim=(2, 3))
        if self.noise_dim:
            if noise is None:
                noise = torch.randn(feat.shape[0], self.noise_dim, device=feat.device)
            feat = torch.cat([feat, noise], dim=1)
        raw = self.head(feat)
        lo, hi = self.scale_range
        return {
            "scale": lo + (hi - lo) * torch.sigmoid(raw[:, 0]),
            "angle": self.max_angle * torch.tanh(raw[:, 1]),
            "shift": self.max_shift * torch.tanh(raw[:, 2:4]),
        }


class RealismDiscriminator(nn.Module):
    """Judges real images against composites at ``in_size`` resolution.

    Shape:
        forward(images ``(B, 3, H, W)`` in [0, 1]) -> logits ``(B,)``.
    """

    def __init__(self, *, in_size: int = 64, width: int = 32):
        super().__init__()
        self.in_size = in_size
        chans = [3, width, width * 2, width * 4, width * 8]
        self.features = nn.Sequential(
            *[_conv_block(a, b, sn=True) for a, b in zip(chans, chans[1:])]
        )
        self.out = nn.utils.parametrizations.spectral_norm(nn.Linear(chans[-1], 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.in_size,) * 2, mode="bilinear", align_corners=False)
        return self.out(self.features(x * 2 - 1).mean(dim=(2, 3))).squeeze(1)


# -- losses ------------------------------------------------------------------------------
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss for the discriminator: ``softplus(-real) + softplus(fake)``.

    Shape:
        real_logits ``(B,)``, fake_logits ``(B',)`` -> scalar.
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss for the synthesizer: ``softplus(-fake)`` (fool D)."""
    return F.softplus(-fake_logits).mean()


class DiscriminatorLoss(nn.Module):
    """Module form of :func:`discriminator_loss`."""

    loss_name = "loss_paste_disc"

    def forward(self, real_logits, fake_logits):
        return discriminator_loss(real_logits, fake_logits)


class GeneratorAdversarialLoss(nn.Module):
    """Module form of :func:`generator_adversarial_loss`."""

    loss_name = "loss_paste_adv"

    def forward(self, fake_logits):
        return generator_adversarial_loss(fake_logits)


# -- the trainer ---------------------------------------------------------------------------
def _sum_losses(losses: dict) -> torch.Tensor:
    if not losses:
        raise ValueError("target_fn returned no losses; expected a dict of scalar tensors.")
    return sum(v for v in losses.values())


class TaskAwarePaste:
    """Synthesizer + discriminator, trained against a target network's loss.

    Args:
        synthesizer, discriminator: the two networks (defaults are built if None).
        lr_g, lr_d: Adam learning rates.
        task_weight: weight of the target's loss in the synthesizer objective (the
            gradient-reversal factor online).
        adv_weight: weight of the realism term.
        occlusion_thresh: an existing box covered beyond this share is dropped.
        min_pixels: a composite whose pasted mask has fewer pixels adds no object.
        fg_size: side of the RGBA foreground tensors.
        device: where the networks live.
    """

    def __init__(
        self,
        *,
        synthesizer: PlacementSynthesizer | None = None,
        discriminator: RealismDiscriminator | None = None,
        lr_g: float = 1e-4,
        lr_d: float = 2e-4,
        task_weight: float = 1.0,
        adv_weight: float = 0.5,
        occlusion_thresh: float = 0.7,
        min_pixels: int = 16,
        fg_size: int = 64,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.synthesizer = (synthesizer or PlacementSynthesizer()).to(self.device)
        self.discriminator = (discriminator or RealismDiscriminator()).to(self.device)
        self.opt_g = torch.optim.Adam(self.synthesizer.parameters(), lr=lr_g, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=(0.5, 0.999))
        self.task_weight = task_weight
        self.adv_weight = adv_weight
        self.occlusion_thresh = occlusion_thresh
        self.min_pixels = min_pixels
        self.fg_size = fg_size
        self.steps = 0

    # -- compositing ------------------------------------------------------------------
    def compose(
        self,
        images: list[torch.Tensor],
        targets: list[dict],
        foregrounds: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        *,
        noise: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[dict], dict]:
        """Place one foreground on each image with the synthesizer's predicted affine.

        Args:
            images: B tensors ``(3, H_i, W_i)`` in [0, 1] (sizes may differ).
            targets: B dicts (see module doc); tensors are not modified.
            foregrounds: ``(B, 4, S, S)`` RGBA from :func:`instances_to_rgba`.
            labels: ``(B,)`` class of each foreground.

        Returns:
            ``(composites, new_targets, aux)``: composites are differentiable w.r.t. the
            synthesizer; ``aux`` holds ``params`` and ``alpha`` (list of ``(H_i, W_i)``).
        """
        if len(images) != len(targets) or len(images) != len(foregrounds):
            raise ValueError(
                f"compose: got {len(images)} images, {len(targets)} targets and "
                f"{len(foregrounds)} foregrounds; expected the same number of each."
            )
        if foregrounds.ndim != 4 or foregrounds.shape[1] != 4:
            raise ValueError(f"compose: foregrounds must be (B, 4, S, S), got {foregrounds.shape}.")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        fg = foregrounds.to(self.device)
        size = (self.synthesizer.in_size,) * 2
        bg_small = torch.stack(
            [
                F.interpolate(im[None].to(self.device), size=size, mode="bilinear")[0]
                for im in images
            ]
        )
        params = self.synthesizer(bg_small, fg, noise=noise)
        composites, new_targets, alphas = [], [], []
        for i, image in enumerate(images):
            image = image.to(self.device)
            hw = tuple(image.shape[-2:])
            theta = affine_from_params(
                params["scale"][i : i + 1],
                params["angle"][i : i + 1],
                params["shift"][i : i + 1],
                out_hw=hw,
            )
            warped = warp_foreground(fg[i : i + 1], theta, hw)[0]
            alpha = warped[3:4]
            hard = (alpha[0] > 0.5).detach()
            if int(hard.sum()) < self.min_pixels:
                # Nothing visible enough to label: keep the image as it was.
                composites.append(image + 0 * alpha.sum())
                new_targets.append(dict(targets[i]))
                alphas.append(torch.zeros(hw, device=self.device))
                continue
            composites.append(warped[:3] * alpha + image * (1 - alpha))
            new_targets.append(self._update_target(targets[i], hard, int(labels[i])))
            alphas.append(alpha[0])
        return composites, new_targets, {"params": params, "alpha": alphas}

    def _update_target(self, target: dict, hard: torch.Tensor, label: int) -> dict:
        out = dict(target)
        dev = hard.device
        boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4)), dtype=torch.float32)
        boxes = boxes.reshape(-1, 4).to(dev)
        old_labels = torch.as_tensor(target.get("labels", []), dtype=torch.int64).to(dev)
        keep = torch.ones(len(boxes), dtype=torch.bool, device=dev)
        masks = target.get("masks")
        height, width = hard.shape
        if masks is not None:
            masks = torch.as_tensor(masks).to(dev).bool().reshape(-1, height, width)
            before = masks.flatten(1).sum(1).clamp(min=1)
            masks = masks & ~hard
            after = masks.flatten(1).sum(1)
            keep = (after > 0) & (1 - after / before <= self.occlusion_thresh)
            for k in torch.nonzero(keep & (after < before)).flatten().tolist():
                boxes[k] = _mask_box(masks[k])
        else:
            for k, b in enumerate(boxes):
                x1, y1 = int(b[0].floor().clamp(0, width)), int(b[1].floor().clamp(0, height))
                x2, y2 = int(b[2].ceil().clamp(0, width)), int(b[3].ceil().clamp(0, height))
                if x2 > x1 and y2 > y1:
                    covered = hard[y1:y2, x1:x2].float().mean()
                    keep[k] = bool(covered <= self.occlusion_thresh)
        out["boxes"] = torch.cat([boxes[keep], _mask_box(hard)[None]], dim=0)
        out["labels"] = torch.cat([old_labels[keep], torch.tensor([label], device=dev)])
        if masks is not None:
            out["masks"] = torch.cat([masks[keep], hard[None]], dim=0).to(torch.uint8)
        if "label_map" in target:
            lm = torch.as_tensor(target["label_map"]).to(dev).clone()
            lm[hard] = label
            out["label_map"] = lm
        return out

    # -- training steps ---------------------------------------------------------------
    def _d_step(self, real: list[torch.Tensor], fake: list[torch.Tensor]) -> float:
        self.discriminator.requires_grad_(True)
        size = (self.discriminator.in_size,) * 2
        real_b = torch.stack([F.interpolate(r[None], size=size, mode="bilinear")[0] for r in real])
        fake_b = torch.stack(
            [F.interpolate(f.detach()[None], size=size, mode="bilinear")[0] for f in fake]
        )
        loss = discriminator_loss(self.discriminator(real_b), self.discriminator(fake_b))
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return float(loss.detach())

    def _adv_loss(self, composites: list[torch.Tensor]) -> torch.Tensor:
        self.discriminator.requires_grad_(False)
        size = (self.discriminator.in_size,) * 2
        batch = torch.stack(
            [F.interpolate(c[None], size=size, mode="bilinear")[0] for c in composites]
        )
        return generator_adversarial_loss(self.discriminator(batch))

    def online_step(
        self,
        *,
        target_fn: TargetFn,
        target_optimizer: torch.optim.Optimizer,
        images: list[torch.Tensor],
        targets: list[dict],
        foregrounds: torch.Tensor,
        labels: Sequence[int],
    ) -> dict[str, float]:
        """One training step of target and synthesizer together (one backward pass).

        The target sees the composites and descends on its loss as usual; the gradient
        reversal makes the synthesizer ascend on the same loss (times ``task_weight``),
        and the realism term pulls it towards composites the discriminator accepts. Then
        the discriminator takes a step on real images vs the composites.

        Returns:
            the target's losses plus ``loss_paste_adv`` and ``loss_paste_disc`` as floats.
        """
        self.synthesizer.train()
        composites, new_targets, _ = self.compose(images, targets, foregrounds, labels)
        reversed_ = [grad_reverse(c, self.task_weight) for c in composites]
        losses = target_fn(reversed_, new_targets)
        task = _sum_losses(losses)
        adv = self._adv_loss(composites)
        target_optimizer.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        (task + self.adv_weight * adv).backward()
        target_optimizer.step()
        self.opt_g.step()
        d_loss = self._d_step([im.to(self.device) for im in images], composites)
        self.steps += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(loss_paste_adv=float(adv.detach()), loss_paste_disc=d_loss)
        return out

    def offline_step(
        self,
        *,
        target_fn: TargetFn,
        images: list[torch.Tensor],
        targets: list[dict],
        foregrounds: torch.Tensor,
        labels: Sequence[int],
    ) -> dict[str, float]:
        """One synthesizer + discriminator step against a frozen target.

        Only the synthesizer's parameters receive gradients (``torch.autograd.grad``), so
        the target's ``.grad`` fields are left alone. Put the target in the mode that
        returns losses (for torchvision: ``train()`` with BatchNorm frozen).
        """
        self.synthesizer.train()
        composites, new_targets, _ = self.compose(images, targets, foregrounds, labels)
        losses = target_fn(composites, new_targets)
        task = _sum_losses(losses)
        adv = self._adv_loss(composites)
        objective = -self.task_weight * task + self.adv_weight * adv
        params = [p for p in self.synthesizer.parameters() if p.requires_grad]
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        self.opt_g.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.opt_g.step()
        d_loss = self._d_step([im.to(self.device) for im in images], composites)
        self.steps += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(loss_paste_adv=float(adv.detach()), loss_paste_disc=d_loss)
        return out

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "synthesizer": self.synthesizer.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"synthesizer", "discriminator", "opt_g", "opt_d"} - set(state)
        if missing:
            raise KeyError(f"TaskAwarePaste checkpoint lacks {sorted(missing)}.")
        self.synthesizer.load_state_dict(state["synthesizer"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.steps = int(state.get("steps", 0))

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (temp file + rename)."""
        tmp = f"{path}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"Cannot load TaskAwarePaste checkpoint {path}: {err}") from err
        self.load_state_dict(state)


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    """``[x1, y1, x2, y2]`` (exclusive ends) of a non-empty ``(H, W)`` bool mask."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if len(ys) == 0:
        return torch.zeros(4, device=mask.device)
    return torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()


def export_composites(
    out_dir: str | os.PathLike,
    items: Sequence[tuple[torch.Tensor, dict]],
    *,
    categories: Sequence[dict],
    label_to_cat: dict[int, int] | None = None,
    manifest: dict | None = None,
) -> Path:
    """Write composites as a COCO-format set, atomically (staging folder + rename).

    Layout: ``OUT/images/000000.png``, ``OUT/annotations.json`` (boxes; category ids via
    ``label_to_cat``), ``OUT/manifest.json`` (``manifest`` plus counts). An existing
    ``OUT`` is replaced only once the new set is complete.

    Args:
        items: ``(image (3, H, W) in [0, 1], target with boxes/labels)`` pairs.
        categories: COCO ``categories`` entries for the JSON.
    """
    import json
    import shutil

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "images").mkdir(parents=True)
    images, annos, per_class = [], [], {}
    for i, (img, tgt) in enumerate(items):
        arr = (img.detach().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        arr = arr.permute(1, 2, 0).numpy()
        name = f"{i:06d}.png"
        if not cv2.imwrite(str(stage / "images" / name), cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)):
            raise OSError(f"export_composites: could not write {stage / 'images' / name}.")
        images.append({"id": i + 1, "file_name": name, "height": arr.shape[0],
                       "width": arr.shape[1]})  # fmt: skip
        for box, lab in zip(tgt["boxes"].tolist(), tgt["labels"].tolist()):
            cat = (label_to_cat or {}).get(int(lab), int(lab))
            x1, y1, x2, y2 = box
            annos.append({"id": len(annos) + 1, "image_id": i + 1, "category_id": cat,
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                          "iscrowd": 0})  # fmt: skip
            per_class[cat] = per_class.get(cat, 0) + 1
    coco = {"images": images, "annotations": annos, "categories": list(categories)}
    (stage / "annotations.json").write_text(json.dumps(coco))
    info = dict(manifest or {})
    info.update(num_images=len(images), num_objects=len(annos), objects_per_category=per_class)
    (stage / "manifest.json").write_text(json.dumps(info, indent=1))
    old = out.parent / f".{out.name}.old"
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(stage, out)
    if old.exists():
        shutil.rmtree(old)
    return out
