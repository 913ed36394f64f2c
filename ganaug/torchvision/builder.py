"""Builders for torchvision Faster R-CNN models with ganaug ROI heads, from scratch.

``build_faster_rcnn(variant=...)`` makes the baseline or a PGAN / ASDN / ASTN /
ASDN+ASTN model on a small backbone (``tiny``: a 4-stage CNN, or ``resnet18``) with an
FPN, no pretrained weights; ``weights`` loads a state dict from a path when given.
"""

from __future__ import annotations

import logging
import os
import pickle
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
    backbone_weights: str | os.PathLike | None = None,
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
        backbone_weights: path of pretrained weights for the backbone's body only, e.g.
            torchvision's ImageNet ``resnet50`` state dict saved with ``torch.save`` (its
            classifier ``fc.*`` is ignored); the FPN and the heads stay randomly
            initialised. Applied before ``weights``.

    The remaining arguments are forwarded to the ganaug heads (see
    :class:`~ganaug.torchvision.roi_heads.GanaugRoIHeads`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"build_faster_rcnn: variant must be one of {VARIANTS}, got {variant!r}")
    if num_classes < 1:
        raise ValueError(f"build_faster_rcnn: num_classes must be >= 1, got {num_classes}")
    for name, value in (
        ("asdn_hidden", asdn_hidden),
        ("astn_hidden", astn_hidden),
        ("pgan_gen_hidden", pgan_gen_hidden),
    ):
        # None means the default width; 0 or a negative width is a mistake, not "default".
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and bad:
            raise ValueError(
                f"build_faster_rcnn: {name} must be a positive integer or null (default), "
                f"got {value!r}"
            )
    if not 0.0 <= float(asdn_drop_fraction) <= 1.0:
        raise ValueError(
            f"build_faster_rcnn: asdn_drop_fraction must be in [0, 1], got {asdn_drop_fraction}"
        )
    if asdn_stage1_iters < 0 or asdn_stage1_max_rois < 1:
        raise ValueError(
            "build_faster_rcnn: expected asdn_stage1_iters >= 0 and asdn_stage1_max_rois >= 1, "
            f"got {asdn_stage1_iters} and {asdn_stage1_max_rois}"
        )
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
                gen_hidden=max(channels // 4, 1) if pgan_gen_hidden is None else pgan_gen_hidden,
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
                    hidden_channels=asdn_hidden if asdn_hidden is not None else adv_hidden,
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
                hidden_channels=astn_hidden if astn_hidden is not None else adv_hidden,
                loc_chunk_size=adversary_chunk_size,
                loc_checkpoint=ckpt_astn,
            )
        model.roi_heads = GanaugRoIHeads.from_roi_heads(model.roi_heads, **kwargs)

    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict (or a ganaug checkpoint's ``model`` entry) from ``path``.

    The state dict must come from a model of the same configuration (e.g. a ganaug
    checkpoint); a backbone-only state dict (such as torchvision's ImageNet ResNet) does
    not fit: its keys lack the ``backbone.body.`` prefix, and the error says so.
    """
    state = read_state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same keys, other shapes: another model configuration
        raise ValueError(
            f"weights {path} do not fit this model (another configuration?): "
            f"{str(err).splitlines()[-1].strip()}"
        ) from err
    if unexpected or (missing and len(missing) == len(model.state_dict())):
        raise ValueError(
            f"weights {path} do not fit this model: {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}), {len(missing)} missing (e.g. {missing[:3]}); a state "
            "dict of the whole detector (or a ganaug checkpoint) is expected"
        )
    if missing:
        logger.info(
            "weights %s: %d parameters left at their initial value, e.g. %s",
            path,
            len(missing),
            missing[:3],
        )


def load_backbone_weights(model: GanaugFasterRCNN, path: str | os.PathLike) -> None:
    """Load pretrained weights into the backbone's body (ResNet: ``backbone.body``).

    Every body parameter and buffer must be in the file; a classifier (``fc.*``) is
    ignored, any other extra key is an error (the file is for another network).
    """
    state = read_state_dict(path)
    body = getattr(model.backbone, "body", None)
    if body is None:  # the tiny backbone: stem + stages (its FPN stays random)
        body = model.backbone
        state = {k: v for k, v in state.items() if not k.startswith("fpn.")}
        wanted = {k for k in body.state_dict() if not k.startswith("fpn.")}
    else:
        wanted = set(body.state_dict())
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(
            f"backbone weights {path} do not fit this backbone: {str(err).splitlines()[-1].strip()}"
        ) from err
    missing = [k for k in missing if k in wanted]
    unexpected = [k for k in unexpected if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {path} do not fit this backbone: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    logger.info("backbone weights loaded from %s (%d tensors)", path, len(wanted))


def load_torch_file(
    path: str | os.PathLike, *, what: str, expected: str, weights_only: bool = True
):
    """``torch.load`` on CPU whose failures name the file: ``FileNotFoundError``, or a
    ``ValueError`` for a directory, an empty, truncated or non-PyTorch file.

    ``what`` names the file in messages ("weights", "checkpoint"), ``expected`` what it
    should have been ("a ganaug checkpoint").
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what} file {path} not found") from err
    except IsADirectoryError as err:
        raise ValueError(f"{what} {path} is a directory, not a file") from err
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in first:
            # torch's own text suggests weights_only=False, i.e. running the file's code.
            first = "it holds more than tensors and plain containers, or is not a torch file"
        raise ValueError(f"{what} {path}: not {expected} ({first})") from err


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict in ``path`` (a ganaug checkpoint's ``model`` entry, or a plain one).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file when it is missing, is
    not a PyTorch file, or holds no state dict.
    """
    state = load_torch_file(
        path, what="weights", expected="a PyTorch state dict or ganaug checkpoint"
    )
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"weights {path}: expected a state dict (parameter name -> tensor), got "
            f"{type(state).__name__}"
        )
    return state


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
