"""detectron2 adapter of ganaug; import it explicitly (``import ganaug.detectron2``).

Importing registers ``PerceptualGANROIHeads`` and ``AdversarialROIHeads`` in detectron2's
``ROI_HEADS_REGISTRY`` and the coco128 datasets in ``DatasetCatalog``. Needs detectron2,
installed by its own instructions (it is not on PyPI).
"""

from .config import MODEL_ZOO_PREFIX, add_ganaug_config, merge_ganaug_config_file
from .data import COCO128_SPLITS, class_counts, load_coco128, register_coco128
from .hooks import AdversaryOptimizerHook, find_adversaries, register_adversary_hook
from .roi_heads import AdversarialROIHeads, PerceptualGANROIHeads, track_original_sizes
from .train import GanaugTrainer, per_class_metrics, write_per_class_metrics

register_coco128()

__all__ = [
    "COCO128_SPLITS",
    "MODEL_ZOO_PREFIX",
    "AdversarialROIHeads",
    "AdversaryOptimizerHook",
    "GanaugTrainer",
    "PerceptualGANROIHeads",
    "add_ganaug_config",
    "class_counts",
    "find_adversaries",
    "load_coco128",
    "merge_ganaug_config_file",
    "per_class_metrics",
    "register_adversary_hook",
    "register_coco128",
    "track_original_sizes",
    "write_per_class_metrics",
]
