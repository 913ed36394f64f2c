"""mmsegmentation / mmengine adapter: importing it registers ganaug's components.

Use it from a config with ``custom_imports = dict(imports=['ganaug.mmseg'],
allow_failed_imports=False)``.
"""

from ganaug.mmseg.adversarial import (
    AdversarialOptimWrapperConstructor,
    AdversarialSegmentor,
    median_frequency_from_dir,
)
from ganaug.mmseg.datasets import CAMVID_CLASSES, CamVidDataset
from ganaug.mmseg.losses import WeightedCrossEntropyLoss
from ganaug.mmseg.metrics import PerClassIoUMetric
from ganaug.mmseg.mixed_dataset import MixedRealSyntheticDataset, SyntheticRatioHook
from ganaug.mmseg.pix2pixhd import Pix2PixHD, Pix2PixHDSampleHook
from ganaug.mmseg.transforms import RareClassPaste
from ganaug.mmseg.validation import ValidateSegLabels

__all__ = [
    "AdversarialOptimWrapperConstructor",
    "AdversarialSegmentor",
    "CAMVID_CLASSES",
    "CamVidDataset",
    "MixedRealSyntheticDataset",
    "PerClassIoUMetric",
    "Pix2PixHD",
    "Pix2PixHDSampleHook",
    "RareClassPaste",
    "SyntheticRatioHook",
    "ValidateSegLabels",
    "WeightedCrossEntropyLoss",
    "median_frequency_from_dir",
]
