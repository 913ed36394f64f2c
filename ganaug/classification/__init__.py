"""GAN oversampling for imbalanced image classification, with timm classifiers.

Modules: ``data`` (image folders, long-tailed Fashion-MNIST), ``oversample`` (per-class
generation, filtering, atomic writing), ``train`` (timm training and the baselines),
``metrics``, ``quality`` (per-class FID/KID) and ``compare`` (the ``ganaug cls-compare``
command). timm and torch-fidelity are imported lazily (extra ``ganaug[timm]``).
"""
