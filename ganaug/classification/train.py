"""timm-backed classifier training with the imbalance baselines.

Methods (``method=``):

* ``plain`` - cross-entropy on the data as it is.
* ``random_oversampling`` - every class resampled with replacement up to the largest class.
* ``class_weighted`` - cross-entropy weighted by inverse class frequency.
* ``focal`` - focal loss (Lin et al. 2017).
* ``gan`` - plain cross-entropy on real + generated images (the set comes from
  :mod:`ganaug.classification.oversample`).

Every method runs the same number of optimiser steps (``epochs`` passes over the *real*
training set), so oversampled runs get no extra compute.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganaug.classification.data import ImageSet

logger = logging.getLogger(__name__)

METHODS = ("plain", "random_oversampling", "class_weighted", "focal", "gan")


class UnknownModelError(ValueError):
    """The timm model name does not exist."""


def check_model_name(name: str) -> str:
    """Return ``name`` if timm knows it, else raise :class:`UnknownModelError` listing close
    names (difflib over ``timm.list_models()``)."""
    import timm

    if timm.is_model(name):
        return name
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise UnknownModelError(
        f"timm has no model named {name!r} ({len(names)} models known){hint}. "
        f"List them with timm.list_models('*pattern*')."
    )


def build_classifier(
    model_name: str,
    *,
    num_classes: int,
    in_chans: int = 1,
    pretrained_path: str | os.PathLike | None = None,
    model_kwargs: dict | None = None,
) -> nn.Module:
    """Create a timm model from scratch (never downloads), optionally loading weights from a
    local file. Tensors whose shape does not match (the classifier head, a 3-channel stem
    for 1-channel input) are skipped and logged.
    """
    import timm

    check_model_name(model_name)
    model = timm.create_model(
        model_name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        **(model_kwargs or {}),
    )
    if pretrained_path:
        try:
            state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise FileNotFoundError(f"cannot load weights file {pretrained_path}: {err}") from err
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(state) - set(usable))
        if not usable:
            raise ValueError(
                f"weights file {pretrained_path} shares no tensor (name and shape) with timm "
                f"model {model_name!r}"
            )
        model.load_state_dict(usable, strict=False)
        logger.info(
            "loaded %d tensors from %s (%d skipped: %s)",
            len(usable),
            pretrained_path,
            len(skipped),
            ", ".join(skipped[:5]),
        )
    return model


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class focal loss ``-(1 - p_t)^gamma * log p_t`` (optionally class-weighted).

    Shape:
        - logits: ``(B, K)``; targets: ``(B,)`` int64; output: scalar (or ``(B,)`` with
          ``reduction="none"``)
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"focal_loss expected logits (B, K) and targets (B,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    logp = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    loss = -((1.0 - logp.exp()) ** gamma) * logp
    if weight is not None:
        loss = loss * weight[targets]
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`."""

    def __init__(self, *, gamma: float = 2.0, weight: Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, gamma=self.gamma, weight=self.weight)


def inverse_frequency_weights(counts: list[int]) -> Tensor:
    """``w_k ∝ 1 / n_k``, scaled so that ``sum_k w_k n_k = N`` (the loss keeps its scale)."""
    c = torch.tensor(counts, dtype=torch.float32)
    if (c <= 0).any():
        raise ValueError(f"every class needs at least one training image, counts: {counts}")
    w = 1.0 / c
    return w * c.sum() / (w * c).sum()


@dataclass
class TrainConfig:
    """Classifier training settings (YAML keys under ``classifier:``)."""

    model: str = "test_resnet"
    epochs: int = 10  # passes over the real training set; sets the step count for all methods
    batch_size: int = 64
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: int = 1
    focal_gamma: float = 2.0
    hflip: bool = True
    pretrained_path: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    amp: bool = True  # used only when a CUDA device is present


def _epoch_indices(labels: Tensor, method: str, n_real: int, generator: torch.Generator) -> Tensor:
    """Indices for one pass; ``random_oversampling`` draws a class-balanced sample of the
    same size as the real set."""
    if method == "random_oversampling":
        counts = torch.bincount(labels).double()
        w = (1.0 / counts.clamp(min=1))[labels]
        return torch.multinomial(w, n_real, replacement=True, generator=generator)
    perm = torch.randperm(len(labels), generator=generator)
    return perm[:n_real] if len(labels) > n_real else perm


def _to_input(images: Tensor, device: torch.device) -> Tensor:
    return images.to(device, non_blocking=True).float().div(127.5).sub(1.0)


def train_classifier(
    train: ImageSet,
    *,
    method: str = "plain",
    config: TrainConfig | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    synthetic: ImageSet | None = None,
) -> nn.Module:
    """Train a timm classifier with one of :data:`METHODS`.

    Args:
        train: the real training set.
        method: see the module docstring.
        config: a :class:`TrainConfig`.
        seed: seeds weights, order and augmentation.
        device: default CUDA when available.
        synthetic: generated images added to ``train`` (``method="gan"`` only).

    Returns:
        the trained model, in eval mode.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gan" and synthetic is None:
        raise ValueError("method='gan' needs the generated set (synthetic=...)")
    cfg = config or TrainConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    data = train
    if method == "gan":
        from ganaug.classification.data import concat_sets

        data = concat_sets(train, synthetic)
    counts = train.class_counts()
    model = build_classifier(
        cfg.model,
        num_classes=train.num_classes,
        in_chans=train.images.shape[1],
        pretrained_path=cfg.pretrained_path,
        model_kwargs=cfg.model_kwargs,
    ).to(device)

    if method == "class_weighted":
        criterion: nn.Module = nn.CrossEntropyLoss(weight=inverse_frequency_weights(counts))
    elif method == "focal":
        criterion = FocalLoss(gamma=cfg.focal_gamma)
    else:
        criterion = nn.CrossEntropyLoss()
    criterion.to(device)

    n_real = len(train)
    bs = min(cfg.batch_size, n_real)
    steps_per_epoch = max(1, math.ceil(n_real / bs))
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        warmup_epochs=min(cfg.warmup_epochs, max(cfg.epochs - 1, 0)),
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    model.train()
    step = 0
    for epoch in range(cfg.epochs):
        idx = _epoch_indices(data.labels, method, n_real, gen)
        total = 0.0
        for b in range(steps_per_epoch):
            bi = idx[b * bs : (b + 1) * bs]
            if len(bi) == 0:
                break
            x = _to_input(data.images[bi], device)
            y = data.labels[bi].to(device)
            if cfg.hflip:
                flip = torch.rand(len(bi), generator=gen) < 0.5
                x[flip.to(device)] = x[flip.to(device)].flip(-1)
            with torch.autocast(device.type, enabled=use_amp):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            scheduler.step_update(num_updates=step)
            total += float(loss.detach())
        scheduler.step(epoch + 1)
        logger.debug("%s epoch %d: loss %.4f", method, epoch, total / steps_per_epoch)
    model.eval()
    return model


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, return_features: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Class predictions (and, optionally, pooled pre-logit features).

    Shape:
        - images: ``(N, C, H, W)`` uint8; output: ``(N,)`` int64 [, ``(N, F)`` float]
    """
    device = next(model.parameters()).device
    model.eval()
    preds, feats = [], []
    for i in range(0, len(images), batch_size):
        x = _to_input(images[i : i + batch_size], device)
        if return_features:
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            feats.append(f.float().cpu())
            logits = model.get_classifier()(f)
        else:
            logits = model(x)
        preds.append(logits.argmax(1).cpu())
    out = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    if return_features:
        return out, torch.cat(feats)
    return out


@torch.no_grad()
def predict_proba(model: nn.Module, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """Softmax probabilities ``(N, K)`` for uint8 images ``(N, C, H, W)``."""
    device = next(model.parameters()).device
    model.eval()
    out = [
        F.softmax(model(_to_input(images[i : i + batch_size], device)).float(), 1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def extract_features(model: nn.Module, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """Pooled pre-logit features ``(N, F)`` of a timm model for uint8 images."""
    return predict(model, images, batch_size=batch_size, return_features=True)[1]
