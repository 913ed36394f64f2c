"""ganaug: GAN-based fixes for data imbalance in detection, segmentation and classification.

Core modules are plain PyTorch. Framework adapters register into their host's registries
when imported explicitly: ``ganaug.mmseg``, ``ganaug.torchvision``, ``ganaug.detectron2``.
"""

__version__ = "0.1.0"
