"""ROI heads for detectron2: Perceptual GAN and A-Fast-RCNN adversaries (ASDN, ASTN).

Both are :class:`StandardROIHeads` subclasses registered in ``ROI_HEADS_REGISTRY``; select
them with ``MODEL.ROI_HEADS.NAME`` and set their keys under ``MODEL.GANAUG`` (see
:func:`ganaug.detectron2.config.add_ganaug_config`). Only ``_forward_box`` changes, so
mask and keypoint heads keep working.

Networks with their own objective (the PGAN discriminator, ASDN, ASTN) are listed by
:meth:`adversaries`; :class:`ganaug.detectron2.hooks.AdversaryOptimizerHook` steps them with
their own optimizer. Their losses travel in the loss dict so that one backward (which DDP
needs) fills every gradient; each loss only reaches its own network.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.poolers import ROIPooler
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_first_n
from torch import nn

from ganaug.core.detection import (
    ASDN,
    ASTN,
    PerceptualGAN,
    apply_drop_mask,
    asdn_adversarial_loss,
    asdn_drop_mask,
    asdn_mask_loss,
    asdn_stage1_targets,
    box_areas,
    pgan_discriminator_loss,
    sliding_window_masks,
)

__all__ = [
    "AREA_REFERENCES",
    "AdversarialROIHeads",
    "PerceptualGANROIHeads",
    "track_original_sizes",
]

#: Where ``MODEL.GANAUG.PGAN.SMALL_AREA`` is measured: in the original image (before
#: detectron2's resize) or in the network input.
AREA_REFERENCES = ("original", "input")

logger = logging.getLogger(__name__)


def _touch(module: nn.Module) -> torch.Tensor:
    """Zero that depends on every parameter of ``module``.

    Added to a loss so that a network left unused in a batch (no small proposal, no
    foreground) still takes part in the backward, which DistributedDataParallel requires.
    """
    params = list(module.parameters())
    return sum((p.sum() * 0.0 for p in params[1:]), params[0].sum() * 0.0)


def _put_scalars(**values: float | torch.Tensor) -> None:
    try:
        storage = get_event_storage()
    except AssertionError:
        # Called outside a trainer (plain model(batch) in user code): nothing to log into.
        return
    for name, value in values.items():
        storage.put_scalar(name, float(value))


def _roi_channels(input_shape, in_features) -> int:
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        raise ValueError(
            f"ganaug ROI heads need the same channel count on all of {in_features}, "
            f"got {sorted(channels)}"
        )
    return channels.pop()


class _GanaugHeadMixin:
    """Iteration counter and the adversary listing shared by both heads."""

    def _init_counter(self) -> None:
        # A buffer, not the trainer's iteration, so that the ASDN stage survives a
        # checkpoint round trip and works outside a trainer.
        self.register_buffer("ganaug_iter", torch.zeros((), dtype=torch.long), persistent=True)

    def adversaries(self) -> dict[str, nn.Module]:
        """Networks stepped by their own optimizer, by name."""
        raise NotImplementedError

    def _gather_labels(self, proposals) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt = cat([p.gt_classes for p in proposals], dim=0)
        return boxes, gt


@ROI_HEADS_REGISTRY.register()
class PerceptualGANROIHeads(_GanaugHeadMixin, StandardROIHeads):
    """StandardROIHeads whose small proposals get Perceptual-GAN features.

    Training: the pooled features of small proposals (area < ``SMALL_AREA``) are replaced
    by the generator's output before the box head, so the host's classification and
    regression losses are the paper's perceptual branch; ``loss_pgan_gen`` is the
    generator's adversarial loss and ``loss_pgan_disc`` the discriminator's (which reaches
    only the discriminator). Inference: the generator runs on small proposals only.

    Event storage: ``pgan/num_small``, ``pgan/num_large``, ``pgan/disc_acc_real``,
    ``pgan/disc_acc_fake``, ``pgan/residual_norm``.
    """

    @configurable
    def __init__(
        self,
        *,
        pgan: PerceptualGAN,
        fine_feature: str = "",
        fine_pooler: ROIPooler | None = None,
        gen_adv_weight: float = 0.1,
        foreground_only: bool = True,
        area_reference: str = "original",
        **kwargs,
    ) -> None:
        """
        Args:
            pgan: generator + discriminator + small/large routing.
            area_reference: "original": ``pgan.small_area`` is in pixels of the original
                image (the ``height``/``width`` of each model input; needs
                :func:`track_original_sizes` on the model); "input": in pixels of the
                resized network input.
            fine_feature: backbone feature pooled again for the generator ("" = none).
            fine_pooler: pooler for ``fine_feature`` (required when it is set).
            gen_adv_weight: weight of the generator's adversarial loss.
            foreground_only: restrict the adversarial branch to foreground proposals.
            **kwargs: arguments of :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        if bool(fine_feature) != (fine_pooler is not None):
            raise ValueError(
                "PerceptualGANROIHeads: fine_feature and fine_pooler go together, got "
                f"fine_feature={fine_feature!r}, fine_pooler={fine_pooler!r}"
            )
        if bool(fine_feature) != pgan.needs_fine_features:
            raise ValueError(
                "PerceptualGANROIHeads: the generator's fine_channels must be > 0 exactly "
                f"when fine_feature is set, got {fine_feature!r} and "
                f"fine_channels={pgan.generator.fine_channels}"
            )
        self.pgan = pgan
        self.fine_feature = fine_feature
        self.fine_pooler = fine_pooler
        self.gen_adv_weight = float(gen_adv_weight)
        self.foreground_only = bool(foreground_only)
        if area_reference not in AREA_REFERENCES:
            raise ValueError(
                f"PerceptualGANROIHeads: area_reference must be one of {AREA_REFERENCES}, "
                f"got {area_reference!r}"
            )
        self.area_reference = area_reference
        # (height, width) of the original images of the current batch, set by the model's
        # forward pre-hook (track_original_sizes) and cleared after the forward.
        self._original_sizes: list[tuple[int, int]] | None = None
        # Per-image factor original area / input area of the current forward.
        self._area_factors: list[float] | None = None
        self._init_counter()

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        p = cfg.MODEL.GANAUG.PGAN
        channels = _roi_channels(input_shape, cfg.MODEL.ROI_HEADS.IN_FEATURES)
        fine_channels, fine_pooler = 0, None
        if p.FINE_FEATURE:
            if p.FINE_FEATURE not in input_shape:
                raise ValueError(
                    f"MODEL.GANAUG.PGAN.FINE_FEATURE={p.FINE_FEATURE!r} is not a backbone "
                    f"output; available: {sorted(input_shape)}"
                )
            spec = input_shape[p.FINE_FEATURE]
            fine_channels = spec.channels
            fine_pooler = ROIPooler(
                output_size=cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
                scales=(1.0 / spec.stride,),
                sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            )
        ret["pgan"] = PerceptualGAN(
            in_channels=channels,
            fine_channels=fine_channels,
            small_area=p.SMALL_AREA,
            gen_hidden=p.GEN_HIDDEN or None,
            gen_blocks=p.GEN_BLOCKS,
            disc_hidden=p.DISC_HIDDEN,
        )
        ret["fine_feature"] = p.FINE_FEATURE
        ret["fine_pooler"] = fine_pooler
        ret["gen_adv_weight"] = p.GEN_ADV_WEIGHT
        ret["foreground_only"] = p.FOREGROUND_ONLY
        ret["area_reference"] = p.AREA_REFERENCE
        return ret

    def adversaries(self) -> dict[str, nn.Module]:
        return {"pgan_discriminator": self.pgan.discriminator}

    def forward(self, images, features, proposals, targets=None):
        self._area_factors = self._original_area_factors(images.image_sizes)
        try:
            return super().forward(images, features, proposals, targets)
        finally:
            self._area_factors = None

    def _original_area_factors(self, image_sizes) -> list[float] | None:
        """Original area / input area per image, or None to measure in input pixels."""
        if self.area_reference == "input":
            return None
        sizes = self._original_sizes
        if sizes is None:
            log_first_n(
                logging.WARNING,
                "ganaug PerceptualGANROIHeads: MODEL.GANAUG.PGAN.AREA_REFERENCE is "
                "'original' but the model's inputs' original sizes are unknown (call "
                "ganaug.detectron2.track_original_sizes(model); GanaugTrainer does it): "
                "SMALL_AREA is applied in network-input pixels",
                n=1,
                name=__name__,
            )
            return None
        if len(sizes) != len(image_sizes):
            raise ValueError(
                f"PerceptualGANROIHeads: {len(image_sizes)} images reached the ROI head but "
                f"the model's forward saw {len(sizes)} inputs"
            )
        return [
            (float(oh) * float(ow)) / max(float(h) * float(w), 1.0)
            for (oh, ow), (h, w) in zip(sizes, image_sizes)
        ]

    def _small_mask(self, proposal_boxes) -> torch.Tensor:
        """``(N,)`` bool over all proposals: area below ``SMALL_AREA`` in the chosen pixels.

        detectron2 resizes every image (``ResizeShortestEdge``), so with the "original"
        reference each proposal's input-pixel area is scaled by its image's original / input
        area ratio before the comparison.
        """
        boxes = cat([b.tensor for b in proposal_boxes], dim=0)
        if self._area_factors is None:
            return self.pgan.small_mask(boxes)
        factors = torch.cat(
            [
                torch.full((len(b),), f, dtype=boxes.dtype, device=boxes.device)
                for b, f in zip(proposal_boxes, self._area_factors)
            ]
        )
        return box_areas(boxes) * factors < self.pgan.small_area

    def _enhance(self, features, proposal_boxes):
        """Pooled features, the same with small proposals enhanced, and the small mask.

        Shape:
            - output: two ``(N, C, S, S)`` and ``(N,)`` bool, N = all proposals; at
              inference without autograd both are the same tensor (enhanced in place)
        """
        feats = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(feats, proposal_boxes)
        small = self._small_mask(proposal_boxes)
        fine = None
        if self.fine_pooler is not None and bool(small.any()):
            # Only the small boxes, per image (ROIPooler wants per-image Boxes lists): at
            # inference most of the ~1000 proposals per image are not small.
            counts = [len(b) for b in proposal_boxes]
            small_boxes = [b[m] for b, m in zip(proposal_boxes, small.split(counts))]
            fine = self.fine_pooler([features[self.fine_feature]], small_boxes)
        # Inference: nothing else reads the pooled stack, the generated rows go into it.
        inplace = not self.training and not torch.is_grad_enabled()
        return pooled, self.pgan.enhance(pooled, small, fine, inplace=inplace), small

    def _forward_box(self, features, proposals):
        proposal_boxes = [p.proposal_boxes for p in proposals]
        pooled, enhanced, small = self._enhance(features, proposal_boxes)
        predictions = self.box_predictor(self.box_head(enhanced))
        if not self.training:
            pred_instances, _ = self.box_predictor.inference(predictions, proposals)
            return pred_instances

        self.ganaug_iter += 1
        losses = self.box_predictor.losses(predictions, proposals)
        _, gt = self._gather_labels(proposals)
        fg = (gt >= 0) & (gt < self.box_predictor.num_classes)
        keep = fg if self.foreground_only else torch.ones_like(fg)
        fake = enhanced[small & keep]
        real = enhanced[~small & keep]

        gen_loss = self.pgan.generator_loss(fake) if fake.numel() else fake.sum()
        # PerceptualGAN.discriminator_loss spelled out (detached inputs: only D learns from
        # it) so that the accuracies below reuse its logits instead of two more D passes.
        real_logits = self.pgan.discriminator(real.detach())
        fake_logits = self.pgan.discriminator(fake.detach())
        disc_loss = pgan_discriminator_loss(real_logits, fake_logits)
        losses["loss_pgan_gen"] = self.gen_adv_weight * gen_loss + _touch(self.pgan.generator)
        losses["loss_pgan_disc"] = disc_loss + _touch(self.pgan.discriminator)

        with torch.no_grad():
            stats = {"pgan/num_small": small.sum(), "pgan/num_large": (~small).sum()}
            if real.shape[0]:
                stats["pgan/disc_acc_real"] = (real_logits > 0).float().mean()
            if fake.shape[0]:
                stats["pgan/disc_acc_fake"] = (fake_logits < 0).float().mean()
            if bool(small.any()):
                # How far the generator moved small features (0 at initialisation).
                res = (enhanced - pooled)[small].flatten(1).norm(dim=1)
                stats["pgan/residual_norm"] = res.mean()
        _put_scalars(**stats)
        return losses


def track_original_sizes(model: nn.Module) -> bool:
    """Let the model's Perceptual-GAN heads see each input's original ``height``/``width``.

    detectron2 resizes images before the model and the ROI head only sees the resized
    sizes; the model's inputs (``batched_inputs``) carry the original ones. This registers
    a forward pre-hook on ``model`` (a ``GeneralizedRCNN``, DDP-wrapped or not) that hands
    them to every :class:`PerceptualGANROIHeads` inside, and a forward hook that clears
    them. Inputs without ``height``/``width`` count as not resized (detectron2's own rule
    in ``GeneralizedRCNN.inference``). Idempotent.

    Returns:
        True if the model has a Perceptual-GAN head (and now tracks sizes).
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    heads = [m for m in inner.modules() if isinstance(m, PerceptualGANROIHeads)]
    if not heads:
        return False
    if getattr(inner, "_ganaug_tracks_sizes", False):
        return True

    def before(module, args, kwargs):
        batched = args[0] if args else kwargs.get("batched_inputs")
        if batched is None:
            return
        sizes = []
        for x in batched:
            if "height" in x and "width" in x:
                sizes.append((int(x["height"]), int(x["width"])))
            else:
                sizes.append(tuple(int(v) for v in x["image"].shape[-2:]))
        for head in heads:
            head._original_sizes = sizes

    def after(module, args, kwargs, output):
        for head in heads:
            head._original_sizes = None

    inner.register_forward_pre_hook(before, with_kwargs=True)
    inner.register_forward_hook(after, with_kwargs=True, always_call=True)
    inner._ganaug_tracks_sizes = True
    return True


@ROI_HEADS_REGISTRY.register()
class AdversarialROIHeads(_GanaugHeadMixin, StandardROIHeads):
    """StandardROIHeads trained against ASDN and/or ASTN (A-Fast-RCNN); training only.

    Training, on foreground proposals: ASTN rotates channel groups of the pooled features
    (its angles get the detector's gradient reversed), then ASDN drops the cells it
    scores highest (after ``STAGE1_ITERS`` iterations; before that ASDN learns the
    sliding-window targets and the detector sees clean features). ``loss_asdn_mask``
    trains ASDN only. Inference is exactly :class:`StandardROIHeads`.

    Event storage: ``asdn/stage``, ``asdn/drop_fraction``, ``asdn/score_mean``,
    ``asdn/target_hit`` (stage 1: the top-scored window is the max-loss one),
    ``asdn/loss_raise`` (stage 2: occluded minus clean-reference loss),
    ``astn/abs_angle_deg``.
    """

    @configurable
    def __init__(
        self,
        *,
        asdn: ASDN | None = None,
        astn: ASTN | None = None,
        asdn_window: int = 0,
        asdn_drop_fraction: float = 1.0 / 3.0,
        asdn_sample: bool = True,
        asdn_stage1_iters: int = 1000,
        asdn_stage1_max_rois: int = 16,
        asdn_loss_weight: float = 1.0,
        **kwargs,
    ) -> None:
        """
        Args:
            asdn: mask network, or None to disable adversarial dropout.
            astn: rotation network, or None to disable adversarial rotation.
            asdn_window: stage-1 window side in cells (0: ``S // 3``).
            asdn_drop_fraction: fraction of cells dropped in stage 2.
            asdn_sample: sample the dropped cells instead of taking the top scores.
            asdn_stage1_iters: training iterations before joint training starts.
            asdn_stage1_max_rois: foreground ROIs searched per batch in stage 1.
            asdn_loss_weight: weight of ASDN's losses.
            **kwargs: arguments of :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        if asdn is None and astn is None:
            raise ValueError(
                "AdversarialROIHeads needs ASDN, ASTN or both: set "
                "MODEL.GANAUG.ASDN.ENABLED or MODEL.GANAUG.ASTN.ENABLED"
            )
        if asdn_stage1_iters < 0 or asdn_stage1_max_rois < 1:
            raise ValueError(
                "AdversarialROIHeads: expected asdn_stage1_iters >= 0 and "
                f"asdn_stage1_max_rois >= 1, got {asdn_stage1_iters}, {asdn_stage1_max_rois}"
            )
        self.asdn = asdn
        self.astn = astn
        self.asdn_window = asdn_window or None
        self.asdn_drop_fraction = float(asdn_drop_fraction)
        self.asdn_sample = bool(asdn_sample)
        self.asdn_stage1_iters = int(asdn_stage1_iters)
        self.asdn_stage1_max_rois = int(asdn_stage1_max_rois)
        self.asdn_loss_weight = float(asdn_loss_weight)
        self._init_counter()

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        g = cfg.MODEL.GANAUG
        channels = _roi_channels(input_shape, cfg.MODEL.ROI_HEADS.IN_FEATURES)
        ret["asdn"] = (
            ASDN(in_channels=channels, hidden_channels=g.ASDN.HIDDEN) if g.ASDN.ENABLED else None
        )
        ret["astn"] = (
            ASTN(
                in_channels=channels,
                num_groups=g.ASTN.NUM_GROUPS,
                max_angle=g.ASTN.MAX_ANGLE,
                hidden_channels=g.ASTN.HIDDEN,
                reverse_scale=g.ASTN.REVERSE_SCALE,
            )
            if g.ASTN.ENABLED
            else None
        )
        ret["asdn_window"] = g.ASDN.WINDOW
        ret["asdn_drop_fraction"] = g.ASDN.DROP_FRACTION
        ret["asdn_sample"] = g.ASDN.SAMPLE
        ret["asdn_stage1_iters"] = g.ASDN.STAGE1_ITERS
        ret["asdn_stage1_max_rois"] = g.ASDN.STAGE1_MAX_ROIS
        ret["asdn_loss_weight"] = g.ASDN.LOSS_WEIGHT
        return ret

    def adversaries(self) -> dict[str, nn.Module]:
        nets = {}
        if self.asdn is not None:
            nets["asdn"] = self.asdn
        if self.astn is not None:
            nets["astn"] = self.astn
        return nets

    @property
    def asdn_stage(self) -> int:
        """1 while ASDN pre-trains on sliding-window targets, 2 once joint training runs."""
        return 1 if int(self.ganaug_iter) < self.asdn_stage1_iters else 2

    def _per_roi_cls_loss(self, labels: torch.Tensor):
        def loss(occluded: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
            scores, _ = self.box_predictor(self.box_head(occluded))
            return F.cross_entropy(scores, labels[roi], reduction="none")

        return loss

    def _forward_box(self, features, proposals):
        if not self.training:
            return super()._forward_box(features, proposals)

        stage = self.asdn_stage  # before counting this iteration
        self.ganaug_iter += 1
        feats = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(feats, [p.proposal_boxes for p in proposals])
        _, gt = self._gather_labels(proposals)
        fg_idx = torch.nonzero((gt >= 0) & (gt < self.box_predictor.num_classes)).squeeze(1)
        if fg_idx.numel() == 0:
            log_first_n(
                logging.WARNING,
                "ganaug AdversarialROIHeads: a batch without foreground proposals; "
                "ASDN/ASTN skip it",
                n=1,
                name=__name__,
            )
        extra: dict[str, torch.Tensor] = {}
        stats: dict[str, float | torch.Tensor] = {}
        x = pooled

        if self.astn is not None:
            fg = x[fg_idx]
            if fg.shape[0]:
                rotated, angles = self.astn(fg)
                x = x.index_copy(0, fg_idx, rotated)
                stats["astn/abs_angle_deg"] = torch.rad2deg(angles.abs()).mean()
            astn_touch = _touch(self.astn)

        drop = None
        if self.asdn is not None:
            stats["asdn/stage"] = stage
            # ASDN reads detached features: its loss must not train the backbone.
            logits = self.asdn(x[fg_idx].detach())
            if fg_idx.numel():
                stats["asdn/score_mean"] = torch.sigmoid(logits).mean().detach()
            if stage == 1:
                extra["loss_asdn_mask"] = self._asdn_stage1(x, fg_idx, gt, logits, stats)
            else:
                drop = asdn_drop_mask(
                    logits.detach(), drop_fraction=self.asdn_drop_fraction, sample=self.asdn_sample
                )
                x = x.index_copy(0, fg_idx, apply_drop_mask(x[fg_idx], drop))
                stats["asdn/drop_fraction"] = drop.mean() if drop.numel() else 0.0
            extra.setdefault("loss_asdn_mask", logits.sum() * 0.0)
            extra["loss_asdn_mask"] = extra["loss_asdn_mask"] + _touch(self.asdn)

        predictions = self.box_predictor(self.box_head(x))
        losses = self.box_predictor.losses(predictions, proposals)

        if drop is not None and fg_idx.numel():
            with torch.no_grad():
                scores = predictions[0][fg_idx]
                occluded = F.cross_entropy(scores, gt[fg_idx], reduction="none")
            adv = asdn_adversarial_loss(logits, drop, occluded)
            extra["loss_asdn_mask"] = extra["loss_asdn_mask"] + self.asdn_loss_weight * adv
            stats["asdn/loss_raise"] = (occluded - occluded.median()).clamp(min=0).mean()

        if self.astn is not None:
            # ASTN learns through the reversed detector gradient, so it has no loss entry.
            losses["loss_cls"] = losses["loss_cls"] + astn_touch
        losses.update(extra)
        _put_scalars(**stats)
        return losses

    def _asdn_stage1(self, x, fg_idx, gt, logits, stats) -> torch.Tensor:
        """Stage-1 mask loss on up to ``asdn_stage1_max_rois`` foreground ROIs."""
        n = min(fg_idx.numel(), self.asdn_stage1_max_rois)
        if n == 0:
            return logits.sum() * 0.0
        # The first foreground ROIs are a random subset already: detectron2 shuffles
        # the sampled proposals.
        sel = fg_idx[:n]
        targets, best = asdn_stage1_targets(
            x[sel].detach(),
            self._per_roi_cls_loss(gt[sel]),
            window=self.asdn_window,
        )
        sub = logits[:n]
        with torch.no_grad():
            # Score of each window = summed logits inside it; hit if ASDN ranks the target
            # window first.
            windows = sliding_window_masks(sub.shape[-1], window=self.asdn_window).to(sub)
            window_scores = torch.einsum("nhw,khw->nk", sub, windows)
            stats["asdn/target_hit"] = (window_scores.argmax(dim=1) == best).float().mean()
        return self.asdn_loss_weight * asdn_mask_loss(sub, targets)
