"""Adversarial segmentor for mmsegmentation (Luc et al. 2016).

``AdversarialSegmentor`` wraps any segmentor config (an ``EncoderDecoder``, say) and adds a
label-map discriminator trained with its own optimizer. Config sketch::

    model = dict(
        type='AdversarialSegmentor',
        segmentor=_base_.model,                     # any mmseg segmentor config
        discriminator=dict(type='LabelMapDiscriminator', base_channels=32),
        adv_loss_type='vanilla', adv_weight=0.05, warmup_iters=100)
    # class-weighted CE (Rezaei et al.'s weighted variants) goes in the segmentor's head:
    # decode_head=dict(loss_decode=dict(type='WeightedCrossEntropyLoss',
    #     class_weight=dict(type='median_frequency', seg_map_dir=..., num_classes=K)))
    optim_wrapper = dict(
        constructor='AdversarialOptimWrapperConstructor',
        segmentor=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3)),
        discriminator=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=2e-4)))
    # under torchrun (distributed), each network gets its own DDP wrapper:
    model_wrapper_cfg = dict(type='MMSeparateDistributedDataParallel')

Inference is the wrapped segmentor's own: the discriminator is never run outside training.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from ganaug.core.adversarial import (
    ADV_LOSS_TYPES,
    LabelMapDiscriminator,
    adversarial_loss,
    median_frequency_weights,
    one_hot_label_map,
    set_requires_grad,
)
from ganaug.core.label_stats import IMAGE_SUFFIXES, class_pixel_counts_from_files

MODELS.register_module(module=LabelMapDiscriminator)


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper, or the module itself."""
    return module.module if hasattr(module, "module") else module


class _Capture:
    value = None


@contextlib.contextmanager
def _capture_output(module: nn.Module):
    """Record what ``module.forward`` returns while the context is open.

    mmseg's decode heads call ``self.forward(...)`` directly (not ``self(...)``), which
    bypasses forward hooks, so the bound method is shadowed on the instance instead.
    """
    cap = _Capture()
    original = module.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        cap.value = out
        return out

    module.forward = forward
    try:
        yield cap
    finally:
        del module.forward


def median_frequency_from_dir(
    seg_map_dir: str, num_classes: int, void_values: Sequence[int] = (255,), max_weight=None
) -> list[float]:
    """Median-frequency class weights from every label map in ``seg_map_dir``."""
    if not os.path.isdir(seg_map_dir):
        raise FileNotFoundError(f"class_weight: label folder {seg_map_dir!r} does not exist")
    paths = sorted(
        os.path.join(seg_map_dir, n)
        for n in os.listdir(seg_map_dir)
        if n.lower().endswith(IMAGE_SUFFIXES)
    )
    if not paths:
        raise ValueError(f"class_weight: no label maps in {seg_map_dir}")
    counts = class_pixel_counts_from_files(paths, num_classes, ignore_values=void_values)
    return median_frequency_weights(counts, max_weight=max_weight).tolist()


@MODELS.register_module()
class AdversarialSegmentor(BaseModel):
    """A segmentor trained against a label-map discriminator.

    Args:
        segmentor: config of any mmseg segmentor exposing ``decode_head`` (EncoderDecoder
            and subclasses). Its ``data_preprocessor`` is used for the whole model.
        discriminator: config of the discriminator; ``num_classes`` is filled in from the
            segmentor's decode head. Default: ``LabelMapDiscriminator`` with its defaults.
        adv_loss_type: ``"vanilla"``, ``"lsgan"`` or ``"hinge"``.
        adv_weight: weight of the adversarial term in the segmentor's loss.
        warmup_iters: train steps during which the segmentor ignores the discriminator
            (the discriminator still learns), so it does not chase an untrained critic.
        data_preprocessor: used for the segmentor when its own config has none (the
            Runner passes the config's top-level ``data_preprocessor`` here).
        init_cfg: mmengine init config.

    ``train_step`` expects an :class:`OptimWrapperDict` with keys ``segmentor`` and
    ``discriminator`` (built by :class:`AdversarialOptimWrapperConstructor`).
    """

    def __init__(
        self,
        segmentor: dict,
        discriminator: dict | None = None,
        adv_loss_type: str = "vanilla",
        adv_weight: float = 0.05,
        warmup_iters: int = 0,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if adv_loss_type not in ADV_LOSS_TYPES:
            raise ValueError(
                f"adv_loss_type must be one of {ADV_LOSS_TYPES}, got {adv_loss_type!r}"
            )
        if adv_weight < 0:
            raise ValueError(f"adv_weight must be >= 0, got {adv_weight}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        segmentor = copy.deepcopy(dict(segmentor))
        if data_preprocessor is not None and segmentor.get("data_preprocessor") is None:
            # mmengine's Runner passes the config's top-level data_preprocessor here.
            segmentor["data_preprocessor"] = data_preprocessor
        self.segmentor = MODELS.build(segmentor)
        if not hasattr(self.segmentor, "decode_head"):
            raise TypeError(
                f"AdversarialSegmentor needs a segmentor with a decode_head (an "
                f"EncoderDecoder); {type(self.segmentor).__name__} has none"
            )
        # One preprocessor for the whole model: the segmentor's (normalisation, padding).
        self.data_preprocessor = self.segmentor.data_preprocessor
        head = self.segmentor.decode_head
        self.num_classes = head.num_classes
        self.ignore_index = head.ignore_index

        d_cfg = dict(type="LabelMapDiscriminator") if discriminator is None else discriminator
        d_cfg = copy.deepcopy(dict(d_cfg))
        d_cfg.setdefault("num_classes", self.num_classes)
        if d_cfg["num_classes"] != self.num_classes:
            raise ValueError(
                f"discriminator num_classes={d_cfg['num_classes']} differs from the "
                f"segmentor's decode head ({self.num_classes})"
            )
        self.discriminator = MODELS.build(d_cfg)
        self.adv_loss_type = adv_loss_type
        self.adv_weight = float(adv_weight)
        self.warmup_iters = int(warmup_iters)
        # Persisted so that warm-up continues correctly after a resume.
        self.register_buffer("num_train_steps", torch.zeros((), dtype=torch.long))

    # Inference and plain forward: exactly the wrapped segmentor's.
    def forward(self, inputs, data_samples=None, mode: str = "tensor"):
        return self.segmentor(inputs, data_samples, mode=mode)

    def _ground_truth(self, data_samples, size) -> torch.Tensor:
        gt = torch.stack([s.gt_sem_seg.data for s in data_samples]).squeeze(1)
        if tuple(gt.shape[-2:]) != tuple(size):
            raise ValueError(
                f"ground truth {tuple(gt.shape[-2:])} and inputs {tuple(size)} differ in size"
            )
        return gt

    def train_step(self, data, optim_wrapper: OptimWrapperDict) -> dict[str, torch.Tensor]:
        """One segmentor forward, one discriminator update, one segmentor update.

        Shapes: inputs ``(B, 3, H, W)``, decode-head logits ``(B, K, h, w)`` resized to
        ``(H, W)``, label maps ``(B, H, W)``.
        """
        if not isinstance(optim_wrapper, OptimWrapperDict) or not {
            "segmentor",
            "discriminator",
        } <= set(optim_wrapper.keys()):
            raise TypeError(
                "AdversarialSegmentor.train_step needs an OptimWrapperDict with keys "
                "'segmentor' and 'discriminator'; set optim_wrapper.constructor="
                "'AdversarialOptimWrapperConstructor' in the config"
            )
        seg_ow = optim_wrapper["segmentor"]
        disc_ow = optim_wrapper["discriminator"]
        data = self.data_preprocessor(data, True)
        inputs, data_samples = data["inputs"], data["data_samples"]
        seg_core = _unwrap(self.segmentor)

        # Segmentor forward through its (possibly DDP-wrapped) module, so distributed
        # gradient sync sees it; the decode head's logits are captured on the way.
        with seg_ow.optim_context(self.segmentor), _capture_output(seg_core.decode_head) as cap:
            losses = self.segmentor(inputs, data_samples, mode="loss")
        logits = cap.value
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            raise TypeError(
                f"decode head {type(seg_core.decode_head).__name__} returned "
                f"{type(logits).__name__} from forward; AdversarialSegmentor needs "
                "(B, K, h, w) logits"
            )
        logits = F.interpolate(
            logits, size=inputs.shape[2:], mode="bilinear", align_corners=seg_core.align_corners
        )
        gt = self._ground_truth(data_samples, inputs.shape[2:])
        valid = (gt != self.ignore_index).unsqueeze(1)
        # Void pixels are blanked in both maps so they cannot give the discriminator away.
        fake = F.softmax(logits, dim=1) * valid
        real = one_hot_label_map(gt, self.num_classes, self.ignore_index)

        # Discriminator update on (real, detached fake): no gradient reaches the segmentor.
        set_requires_grad(self.discriminator, True)
        with disc_ow.optim_context(self.discriminator):
            scores = self.discriminator(
                torch.cat([inputs, inputs]), torch.cat([real, fake.detach()])
            )
            real_s, fake_s = scores.chunk(2)
            loss_d_real = adversarial_loss(real_s, True, self.adv_loss_type, for_disc=True)
            loss_d_fake = adversarial_loss(fake_s, False, self.adv_loss_type, for_disc=True)
            loss_disc = 0.5 * (loss_d_real + loss_d_fake)
        disc_ow.update_params(loss_disc)

        # Segmentor update; the discriminator is frozen so it gathers no gradient.
        set_requires_grad(self.discriminator, False)
        if int(self.num_train_steps) >= self.warmup_iters and self.adv_weight > 0:
            with seg_ow.optim_context(self.segmentor):
                g_scores = self.discriminator(inputs, fake)
                losses["loss_adv"] = self.adv_weight * adversarial_loss(
                    g_scores, True, self.adv_loss_type, for_disc=False
                )
        parsed, log_vars = self.parse_losses(losses)
        seg_ow.update_params(parsed)
        set_requires_grad(self.discriminator, True)

        self.num_train_steps += 1
        log_vars["loss_disc"] = loss_disc.detach()
        log_vars["disc_real_score"] = real_s.detach().mean()
        log_vars["disc_fake_score"] = fake_s.detach().mean()
        return log_vars


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class AdversarialOptimWrapperConstructor:
    """Builds one optimizer wrapper per named sub-network into an :class:`OptimWrapperDict`.

    The config's keys other than ``constructor`` name attributes of the model
    (``segmentor``, ``discriminator``); each value is an ordinary ``optim_wrapper`` config,
    which may carry its own ``paramwise_cfg``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if paramwise_cfg:
            raise ValueError(
                "AdversarialOptimWrapperConstructor: put paramwise_cfg inside each network's "
                "optim wrapper config, not at the top level"
            )
        if not isinstance(optim_wrapper_cfg, dict) or not optim_wrapper_cfg:
            raise TypeError(
                "AdversarialOptimWrapperConstructor expects a dict of per-network configs, "
                f"got {optim_wrapper_cfg!r}"
            )
        for name, cfg in optim_wrapper_cfg.items():
            if not isinstance(cfg, dict):
                raise TypeError(
                    f"optim_wrapper.{name} must be an optim wrapper config dict, got {cfg!r}"
                )
        self.optim_wrapper_cfg = optim_wrapper_cfg

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        model = _unwrap(model)
        wrappers = {}
        for name, cfg in self.optim_wrapper_cfg.items():
            sub = getattr(model, name, None)
            if not isinstance(sub, nn.Module):
                raise AttributeError(
                    f"optim_wrapper has a config for {name!r} but {type(model).__name__} has "
                    f"no sub-network of that name"
                )
            cfg = copy.deepcopy(dict(cfg))
            paramwise = cfg.pop("paramwise_cfg", None)
            wrappers[name] = DefaultOptimWrapperConstructor(cfg, paramwise)(sub)
        return OptimWrapperDict(**wrappers)
