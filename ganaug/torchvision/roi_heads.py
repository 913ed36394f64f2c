"""``RoIHeads`` for torchvision's Faster R-CNN with Perceptual GAN, ASDN and/or ASTN.

The ganaug modules sit between the box ROI pooler and the box head, on the pooled
features ``(N, C, S, S)``:

* PGAN: small proposals (area below ``small_area`` original pixels) get the generator's
  features, in training and at inference. The detector's own Fast R-CNN losses on the
  generated features are the perceptual branch; the generator's adversarial loss is added
  to them; the discriminator's loss is returned under ``aux_loss_pgan_disc``.
* ASDN: stage 1 (first ``asdn_stage1_iters`` training steps) learns the max-loss window
  (``aux_loss_asdn``) while the detector trains on clean features; stage 2 drops the
  sampled top cells from the features the detector trains on and keeps training ASDN
  adversarially (``aux_loss_asdn``).
* ASTN: rotates channel groups; trained through gradient reversal by the detector's loss.
* ASDN and ASTN are skipped at inference.

Losses whose key starts with ``aux_`` train only the adversarial networks (their inputs
are detached), so one backward over *all* returned losses is correct; the caller steps
:func:`adversary_parameters` with their own optimizer. Mask and keypoint heads are not
supported by this class.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

from ganaug.core.detection import (
    ASDN,
    ASTN,
    PerceptualGAN,
    apply_drop_mask,
    asdn_adversarial_loss,
    asdn_adversarial_rois,
    asdn_drop_mask,
    asdn_mask_loss,
    asdn_stage1_targets,
    rotate_features,
)

__all__ = ["AUX_PREFIX", "GanaugRoIHeads"]

logger = logging.getLogger(__name__)

#: Loss keys with this prefix train only adversarial networks (see the module docstring).
AUX_PREFIX = "aux_"


class GanaugRoIHeads(RoIHeads):
    """Box-only ``RoIHeads`` with optional PGAN, ASDN and ASTN on the pooled features.

    Takes every argument of :class:`torchvision.models.detection.roi_heads.RoIHeads` for
    the box branch (positionally or by name), plus, keyword-only:

    Args:
        pgan: a :class:`~ganaug.core.detection.PerceptualGAN`, or None.
        fine_roi_pool: pooler giving the finer-level ROI features that ``pgan`` takes
            (needed when ``pgan.needs_fine_features``), e.g. ``MultiScaleRoIAlign(["0"])``.
        pgan_adv_weight: weight of the generator's adversarial loss.
        asdn: an :class:`~ganaug.core.detection.ASDN`, or None.
        asdn_stage1_iters: training steps of stage 1 (max-loss window supervision).
        asdn_window: stage-1 window side in cells (default ``S // 3``).
        asdn_stage1_max_rois: foreground ROIs per step used for stage-1 targets (the
            sliding search runs the box head ``K`` times per ROI, so it is capped).
        asdn_drop_fraction: share of cells dropped in stage 2 (default 1/3).
        asdn_sample: draw the dropped cells by score instead of taking the top ones.
        astn: an :class:`~ganaug.core.detection.ASTN`, or None.

    After each training forward, ``last_stats`` holds floats for logging (mask share,
    mean |angle| in degrees, number of small ROIs, ASDN stage).
    """

    def __init__(
        self,
        *args,
        pgan: PerceptualGAN | None = None,
        fine_roi_pool: nn.Module | None = None,
        pgan_adv_weight: float = 0.1,
        asdn: ASDN | None = None,
        asdn_stage1_iters: int = 200,
        asdn_window: int | None = None,
        asdn_stage1_max_rois: int = 32,
        asdn_drop_fraction: float = 1.0 / 3.0,
        asdn_sample: bool = True,
        astn: ASTN | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.has_mask() or self.has_keypoint():
            raise ValueError(
                "GanaugRoIHeads supports the box branch only; got mask or keypoint heads"
            )
        if pgan is not None and pgan.needs_fine_features and fine_roi_pool is None:
            raise ValueError(
                "GanaugRoIHeads: the PerceptualGAN takes fine features "
                f"(fine_channels={pgan.generator.fine_channels}) but fine_roi_pool is None"
            )
        self.pgan = pgan
        self.fine_roi_pool = fine_roi_pool if pgan is not None else None
        self.pgan_adv_weight = float(pgan_adv_weight)
        self.asdn = asdn
        self.asdn_stage1_iters = int(asdn_stage1_iters)
        self.asdn_window = asdn_window
        self.asdn_stage1_max_rois = int(asdn_stage1_max_rois)
        self.asdn_drop_fraction = float(asdn_drop_fraction)
        self.asdn_sample = bool(asdn_sample)
        self.astn = astn
        # Counts training forwards: decides the ASDN stage and is saved in checkpoints.
        self.register_buffer("train_iter", torch.zeros((), dtype=torch.long))
        # Original (pre-resize) image sizes of the current batch, set by GanaugFasterRCNN;
        # small/large routing needs them to express the area threshold in input pixels.
        self.original_image_sizes: list[tuple[int, int]] | None = None
        self.last_stats: dict[str, float] = {}
        self._warned_empty = False

    @classmethod
    def from_roi_heads(cls, base: RoIHeads, **kwargs) -> GanaugRoIHeads:
        """Copy the box settings and modules of a standard ``RoIHeads``, adding ganaug's."""
        head = cls(
            base.box_roi_pool,
            base.box_head,
            base.box_predictor,
            base.proposal_matcher.high_threshold,
            base.proposal_matcher.low_threshold,
            base.fg_bg_sampler.batch_size_per_image,
            base.fg_bg_sampler.positive_fraction,
            base.box_coder.weights,
            base.score_thresh,
            base.nms_thresh,
            base.detections_per_img,
            **kwargs,
        )
        return head

    def adversary_modules(self) -> dict[str, nn.Module]:
        """Networks with their own objective, to be stepped by a separate optimizer."""
        out: dict[str, nn.Module] = {}
        if self.pgan is not None:
            out["pgan_disc"] = self.pgan.discriminator
        if self.asdn is not None:
            out["asdn"] = self.asdn
        if self.astn is not None:
            out["astn"] = self.astn
        return out

    # -- helpers -------------------------------------------------------------------------

    def _predict(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box_predictor(self.box_head(pooled))

    def _scales(self, image_shapes: list[tuple[int, int]]) -> list[float]:
        sizes = self.original_image_sizes
        if sizes is None or len(sizes) != len(image_shapes):
            return [1.0] * len(image_shapes)
        return [
            math.sqrt((h * w) / max(oh * ow, 1)) for (h, w), (oh, ow) in zip(image_shapes, sizes)
        ]

    def _small_mask(self, proposals: list[torch.Tensor], image_shapes) -> torch.Tensor:
        masks = [
            self.pgan.small_mask(p, scale=s) for p, s in zip(proposals, self._scales(image_shapes))
        ]
        if not masks:
            return torch.zeros(0, dtype=torch.bool)
        return torch.cat(masks)

    def _enhance_small(self, pooled, features, proposals, image_shapes, inplace=False):
        small = self._small_mask(proposals, image_shapes).to(pooled.device)
        fine = None
        if self.fine_roi_pool is not None and bool(small.any()):
            counts = [len(p) for p in proposals]
            small_per_image = small.split(counts)
            small_props = [p[m] for p, m in zip(proposals, small_per_image)]
            fine = self.fine_roi_pool(features, small_props, image_shapes)
        return self.pgan.enhance(pooled, small, fine, inplace=inplace), small

    def _stage1_targets(self, pooled: torch.Tensor, labels: torch.Tensor):
        fg = torch.where(labels > 0)[0][: self.asdn_stage1_max_rois]
        fg_labels = labels[fg]

        def per_roi_loss(occluded: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
            logits, _ = self._predict(occluded)
            return F.cross_entropy(logits, fg_labels[roi], reduction="none")

        # As many occluded copies per box-head call as the batch has ROIs: the search's
        # transient memory stays that of one ROI stack, whatever the number of windows.
        targets, _ = asdn_stage1_targets(
            pooled[fg],
            per_roi_loss,
            window=self.asdn_window,
            chunk_size=max(pooled.shape[0], 1),
        )
        return fg, targets

    # -- forward -------------------------------------------------------------------------

    def forward(self, features, proposals, image_shapes, targets=None):
        """Same contract as ``RoIHeads.forward`` (box branch only)."""
        if targets is not None:
            for t in targets:
                if not t["boxes"].is_floating_point():
                    raise TypeError(f"target boxes must be float, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")

        if not self.training:
            pooled = self.box_roi_pool(features, proposals, image_shapes)
            if self.pgan is not None and pooled.shape[0]:
                # Nothing else reads the pooled stack: the generated rows go into it.
                inplace = not torch.is_grad_enabled()
                pooled, _ = self._enhance_small(
                    pooled, features, proposals, image_shapes, inplace=inplace
                )
            class_logits, box_regression = self._predict(pooled)
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [
                {"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)
            ]
            return result, {}

        if targets is None:
            raise ValueError("GanaugRoIHeads: targets are required in training mode")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        flat_labels = torch.cat(labels) if labels else pooled.new_zeros(0, dtype=torch.long)
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        step = int(self.train_iter)
        self.train_iter += 1

        if self.pgan is not None:
            enhanced, small = self._enhance_small(pooled, features, proposals, image_shapes)
            fg = flat_labels > 0
            stats["pgan/small_rois"] = float(small.sum())
            stats["pgan/small_fg_rois"] = float((small & fg).sum())
            gen_small = enhanced[small & fg]
            losses["loss_pgan_gen"] = self.pgan_adv_weight * self.pgan.generator_loss(gen_small)
            losses[AUX_PREFIX + "loss_pgan_disc"] = self.pgan.discriminator_loss(
                pooled[~small & fg], gen_small
            )
            pooled = enhanced

        pre_astn = angles = None
        if self.astn is not None:
            pre_astn = pooled.detach()
            pooled, angles = self.astn(pooled)
            stats["astn/mean_abs_angle_deg"] = (
                float(angles.abs().mean().rad2deg()) if angles.numel() else 0.0
            )

        drop = None
        asdn_input = None
        if self.asdn is not None:
            # ASDN reads detached features. Its trainable forward runs only on the ROIs its
            # loss uses, so the other ROIs keep no ASDN activations for the backward pass.
            asdn_input = pooled.detach()
            if step < self.asdn_stage1_iters:
                stats["asdn/stage"] = 1.0
                fg_idx, mask_targets = self._stage1_targets(asdn_input, flat_labels)
                losses[AUX_PREFIX + "loss_asdn"] = asdn_mask_loss(
                    self.asdn(asdn_input[fg_idx]), mask_targets
                )
                asdn_input = None
            else:
                stats["asdn/stage"] = 2.0
                with torch.no_grad():
                    scores = self.asdn(asdn_input)
                drop = asdn_drop_mask(
                    scores, drop_fraction=self.asdn_drop_fraction, sample=self.asdn_sample
                )
                del scores
                pooled = apply_drop_mask(pooled, drop)
                if pre_astn is not None:
                    # Nothing else keeps the clean rotated stack (grid_sample's backward
                    # keeps its input and grid, the masking keeps only the mask): let it go
                    # and recompute ASDN's input for the ROIs its loss uses.
                    asdn_input = None
                stats["asdn/dropped_share"] = float(drop.mean()) if drop.numel() else 0.0

        class_logits, box_regression = self._predict(pooled)
        if flat_labels.numel():
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
        else:
            # No proposal at all in the batch: cross-entropy of nothing would be NaN.
            if not self._warned_empty:
                self._warned_empty = True
                logger.warning(
                    "GanaugRoIHeads: a batch without any proposal; box losses set to 0 "
                    "(logged once)"
                )
            loss_classifier = loss_box_reg = class_logits.sum() + box_regression.sum()
        losses["loss_classifier"] = loss_classifier
        losses["loss_box_reg"] = loss_box_reg

        if drop is not None:
            occluded_loss = F.cross_entropy(class_logits.detach(), flat_labels, reduction="none")
            rois = asdn_adversarial_rois(occluded_loss)
            # The selected ROIs are those above the batch median; passing that median as
            # their reference makes the subset's loss equal the full batch's (the other
            # ROIs have weight 0 there).
            reference = occluded_loss.median() if rois.numel() else occluded_loss.sum()
            if asdn_input is None:
                with torch.no_grad():
                    selected = rotate_features(pre_astn[rois], angles[rois])
            else:
                selected = asdn_input[rois]
            losses[AUX_PREFIX + "loss_asdn"] = asdn_adversarial_loss(
                self.asdn(selected),
                drop[rois],
                occluded_loss[rois],
                clean_loss=reference.expand(rois.numel()),
            )
        self.last_stats = stats
        return [], losses
