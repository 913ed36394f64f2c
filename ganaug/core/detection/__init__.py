"""Framework-free detection modules operating on pooled ROI features ``(N, C, S, S)``.

* :mod:`.pgan`: Perceptual GAN for small objects (Li et al., CVPR 2017).
* :mod:`.asdn`: adversarial spatial dropout of A-Fast-RCNN (Wang et al., CVPR 2017).
* :mod:`.astn`: adversarial spatial transformer (rotation) of A-Fast-RCNN.

Adapters (``ganaug.torchvision``, ``ganaug.detectron2``) place these between the ROI
pooler and the box head.
"""

from .asdn import (
    ASDN,
    ASDNMaskLoss,
    apply_drop_mask,
    asdn_adversarial_loss,
    asdn_adversarial_rois,
    asdn_drop_mask,
    asdn_mask_loss,
    asdn_stage1_targets,
    sliding_window_masks,
)
from .astn import ASTN, GradientReversal, grad_reverse, rotate_features
from .pgan import (
    DEFAULT_SMALL_AREA,
    PerceptualDiscriminator,
    PerceptualGAN,
    PerceptualGANLoss,
    PerceptualGenerator,
    box_areas,
    pgan_discriminator_loss,
    pgan_generator_loss,
    small_object_mask,
)

__all__ = [
    "ASDN",
    "ASDNMaskLoss",
    "ASTN",
    "DEFAULT_SMALL_AREA",
    "GradientReversal",
    "PerceptualDiscriminator",
    "PerceptualGAN",
    "PerceptualGANLoss",
    "PerceptualGenerator",
    "apply_drop_mask",
    "asdn_adversarial_loss",
    "asdn_adversarial_rois",
    "asdn_drop_mask",
    "asdn_mask_loss",
    "asdn_stage1_targets",
    "box_areas",
    "grad_reverse",
    "pgan_discriminator_loss",
    "pgan_generator_loss",
    "rotate_features",
    "sliding_window_masks",
    "small_object_mask",
]
