"""Paste synthesis: imbalance-aware copy-paste and learned task-aware compositing.

Framework-free (numpy, OpenCV, pycocotools, PyTorch). Adapters:
``ganaug.torchvision.paste``, ``ganaug.mmseg.transforms``, ``ganaug.detectron2.paste_mapper``.
"""

from .composite import BLEND_MODES, Placement, blend, jitter_instance, paste_instances
from .copy_paste import CopyPaste, InstanceBank, read_image
from .instances import (
    Instance,
    ann_to_mask,
    instances_from_binary_mask,
    instances_from_boxes,
    instances_from_coco_anns,
    instances_from_label_map,
    mask_to_box,
)
from .selection import ClassSampler

__all__ = [
    "BLEND_MODES",
    "ClassSampler",
    "CopyPaste",
    "Instance",
    "InstanceBank",
    "Placement",
    "ann_to_mask",
    "blend",
    "instances_from_binary_mask",
    "instances_from_boxes",
    "instances_from_coco_anns",
    "instances_from_label_map",
    "jitter_instance",
    "mask_to_box",
    "paste_instances",
    "read_image",
]
