"""Builders for torchvision Faster R-CNN models with ganaug ROI heads, from scratch.

``build_faster_rcnn(variant=...)`` makes the baseline or a PGAN / ASDN / ASTN /
ASDN+ASTN model on a small backbone (``tiny``: a 4-stage CNN, or ``resnet18``) with an
FPN, no pretrained weights; ``weights`` loads a state dict from a path when given.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ganaug.core.detection import ASDN, ASTN, DEFAULT_SMALL_AREA, PerceptualGAN

from .roi_heads import GanaugRoIHeads

__all__ = [
    "VARIANTS",
    "GanaugFasterRCNN",
    "TinyFPNBackbone",
    "adversary_parameters",
    "build_faster_rcnn",
    "detector_parameters",
]

logger = logging.getLogger(__name__)

VARIANTS = ("baseline", "pgan", "asdn", "astn", "asdn+astn")


class TinyFPNBackbone(nn.Module):
    """Four conv stages (strides 4, 8, 16, 32) + FPN + max-pool level, for tiny budgets.

    Shape:
        - input: ``(B, 3, H, W)``
        - output: OrderedDict ``"0".."3", "pool"`` of ``(B, out_channels, H/s, W/s)``
    """

    def __init__(self, *, widths=(32, 64, 128, 256), out_channels: int = 64) -> None:
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        # A single strided conv as stem keeps the full-resolution cost low.
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], widths[0]
        for w in widths:
            stages.append(block(cin, w, 2))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(
            list(widths), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        x = self.stem(x)
        feats = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(i)] = x
        return self.fpn(feats)


class GanaugFasterRCNN(FasterRCNN):
    """``FasterRCNN`` that tells its ROI heads the original image sizes.

    torchvision resizes images before the heads see them; the PGAN's small/large threshold
    is in original pixels, so the heads need the resize factor of each image.
    """

    def forward(self, images, targets=None):
        if isinstance(self.roi_heads, GanaugRoIHeads):
            self.roi_heads.original_image_sizes = [
                (int(im.shape[-2]), int(im.shape[-1])) for im in images
            ]
        try:
            return super().forward(images, targets)
        finally:
            if isinstance(self.roi_heads, GanaugRoIHeads):
                self.roi_heads.original_image_sizes = None


def build_faster_rcnn(
    *,
    num_classes: int,
    variant: str = "baseline",
    backbone: str = "tiny",
    fpn_channels: int = 64,
    min_size: int = 320,
    max_size: int = 512,
    roi_size: int = 7,
    representation_size: int = 256,
    rpn_batch_size_per_image: int = 128,
    box_batch_size_per_image: int = 128,
    rpn_post_nms_top_n_train: int = 500,
    rpn_post_nms_top_n_test: int = 300,
    box_score_thresh: float = 0.05,
    box_detections_per_img: int = 100,
    small_area: float = DEFAULT_SMALL_AREA,
    pgan_fine: bool = True,
    pgan_adv_weight: float = 0.1,
    pgan_gen_blocks: int = 2,
    pgan_gen_hidden: int | None = None,
    asdn_stage1_iters: int = 200,
    asdn_drop_fraction: float = 1.0 / 3.0,
    asdn_sample: bool = True,
    asdn_stage1_max_rois: int = 32,
    asdn_hidden: int | None = None,
    astn_groups: int = 4,
    astn_max_angle: float = 10.0,
    astn_hidden: int | None = None,
    adversary_chunk_size: int = 64,
    adversary_checkpoint: bool | str = False,
    weights: str | os.PathLike | None = None,
) -> GanaugFasterRCNN:
    """Faster R-CNN (FPN) with the baseline or a ganaug ROI head, randomly initialised.

    Args:
        num_classes: foreground classes (the predictor gets ``num_classes + 1`` outputs).
        variant: one of ``baseline``, ``pgan``, ``asdn``, ``astn``, ``asdn+astn``.
        backbone: ``tiny`` (:class:`TinyFPNBackbone`), ``resnet18`` or ``resnet50``
            (torchvision's ResNet + FPN, 256 channels, no pretrained weights).
        fpn_channels: FPN width (``tiny`` only; resnet18's FPN has 256).
        min_size, max_size: torchvision's resize bounds.
        box_score_thresh: detections scoring below this are dropped at inference
            (torchvision's default 0.05; a detector barely past initialisation scores few
            boxes above it, so short from-scratch runs are evaluated with e.g. 0.001).
        box_detections_per_img: most detections kept per image.
        roi_size: ``S`` of the pooled ROI features.
        small_area: PGAN small/large threshold in original pixels.
        pgan_fine: give the PGAN generator the finest FPN level of each small ROI.
        pgan_gen_hidden: width of the generator's residual branch (default: a quarter of
            the ROI channels: 16 on the tiny backbone, 64 on ResNet-FPN).
        asdn_hidden, astn_hidden: width of ASDN's convolutions and of ASTN's localisation
            network (default: half the ROI channels, at most 64, i.e. 32 on the tiny
            backbone and 64 on ResNet-FPN; on the tiny backbone the 64-wide nets cost more
            per ROI than the box head, see docs/readme/detection.md).
        adversary_chunk_size: ROIs per call of the ASDN and ASTN networks (bounds the
            temporaries of their convolutions; 0: all ROIs at once).
        adversary_checkpoint: recompute ASDN's and ASTN's activations in the backward
            pass instead of keeping them (less peak memory for one more forward of these
            networks; see docs/readme/detection.md). ``"asdn"`` or ``"astn"``: only that
            network. Default False: with the default widths the kept activations are small
            (tiny backbone: 1.15x the baseline's peak for both adversaries, within the 1.2x
            target) and recomputing them costs time.
        weights: path of a state dict saved from a model of the same configuration (a
            ganaug checkpoint's ``"model"`` entry is accepted too).

    The remaining arguments are forwarded to the ganaug heads (see
    :class:`~ganaug.torchvision.roi_heads.GanaugRoIHeads`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"build_faster_rcnn: variant must be one of {VARIANTS}, got {variant!r}")
    if num_classes < 1:
        raise ValueError(f"build_faster_rcnn: num_classes must be >= 1, got {num_classes}")
    if backbone == "tiny":
        body = TinyFPNBackbone(out_channels=fpn_channels)
    elif backbone in ("resnet18", "resnet50"):
        body = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5)
    else:
        raise ValueError(
            "build_faster_rcnn: backbone must be 'tiny', 'resnet18' or 'resnet50', "
            f"got {backbone!r}"
        )
    channels = body.out_channels

    anchors = AnchorGenerator(
        sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
    )
    box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=roi_size, sampling_ratio=2)
    box_head = TwoMLPHead(channels * roi_size * roi_size, representation_size)
    predictor = FastRCNNPredictor(representation_size, num_classes + 1)
    model = GanaugFasterRCNN(
        body,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=600,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=predictor,
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img,
    )

    if variant != "baseline":
        kwargs: dict = {}
        if variant == "pgan":
            kwargs["pgan"] = PerceptualGAN(
                in_channels=channels,
                fine_channels=channels if pgan_fine else 0,
                small_area=small_area,
                gen_blocks=pgan_gen_blocks,
                # A quarter of the ROI width keeps the generator cheap: it runs on every
                # small proposal at inference too (hundreds per image), see
                # docs/readme/detection.md.
                gen_hidden=pgan_gen_hidden or max(channels // 4, 1),
            )
            kwargs["pgan_adv_weight"] = pgan_adv_weight
            if pgan_fine:
                # One sample per bin: a small ROI spans only a few cells of the finest
                # level, so 2 x 2 samples per bin would re-read the same cells (and
                # torchvision's CPU RoIAlign makes this the generator's largest cost).
                kwargs["fine_roi_pool"] = MultiScaleRoIAlign(
                    ["0"], output_size=roi_size, sampling_ratio=1
                )
        if adversary_checkpoint not in (True, False, "asdn", "astn"):
            raise ValueError(
                "adversary_checkpoint must be true, false, 'asdn' or 'astn', got "
                f"{adversary_checkpoint!r}"
            )
        adv_hidden = min(64, max(channels // 2, 8))
        ckpt_asdn = adversary_checkpoint in (True, "asdn")
        ckpt_astn = adversary_checkpoint in (True, "astn")
        if "asdn" in variant:
            kwargs.update(
                asdn=ASDN(
                    in_channels=channels,
                    hidden_channels=asdn_hidden or adv_hidden,
                    chunk_size=adversary_chunk_size,
                    checkpoint=ckpt_asdn,
                ),
                asdn_stage1_iters=asdn_stage1_iters,
                asdn_drop_fraction=asdn_drop_fraction,
                asdn_sample=asdn_sample,
                asdn_stage1_max_rois=asdn_stage1_max_rois,
            )
        if "astn" in variant:
            kwargs["astn"] = ASTN(
                in_channels=channels,
                num_groups=astn_groups,
                max_angle=astn_max_angle,
                hidden_channels=astn_hidden or adv_hidden,
                loc_chunk_size=adversary_chunk_size,
                loc_checkpoint=ckpt_astn,
            )
        model.roi_heads = GanaugRoIHeads.from_roi_heads(model.roi_heads, **kwargs)

    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict (or a ganaug checkpoint's ``model`` entry) from ``path``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"weights file {path} not found") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (missing and len(missing) == len(model.state_dict())):
        raise ValueError(
            f"weights {path} do not fit this model: {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}), {len(missing)} missing (e.g. {missing[:3]})"
        )
    if missing:
        logger.info(
            "weights %s: %d parameters left at their initial value, e.g. %s",
            path,
            len(missing),
            missing[:3],
        )


def _adversary_ids(model: nn.Module) -> set[int]:
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, GanaugRoIHeads):
        return set()
    return {id(p) for m in heads.adversary_modules().values() for p in m.parameters()}


def adversary_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the discriminator / ASDN / ASTN (their own optimizer)."""
    ids = _adversary_ids(model)
    return [p for p in model.parameters() if id(p) in ids]


def detector_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable parameter except :func:`adversary_parameters`."""
    ids = _adversary_ids(model)
    return [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
