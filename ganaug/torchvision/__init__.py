"""torchvision adapter: Faster R-CNN ``RoIHeads`` with PGAN / ASDN / ASTN, builder, engine.

Import explicitly (``import ganaug.torchvision``); the core modules stay framework-free.
"""

from .builder import (
    VARIANTS,
    GanaugFasterRCNN,
    TinyFPNBackbone,
    adversary_parameters,
    build_faster_rcnn,
    detector_parameters,
)
from .roi_heads import AUX_PREFIX, GanaugRoIHeads

__all__ = [
    "AUX_PREFIX",
    "VARIANTS",
    "GanaugFasterRCNN",
    "GanaugRoIHeads",
    "TinyFPNBackbone",
    "adversary_parameters",
    "build_faster_rcnn",
    "detector_parameters",
]
