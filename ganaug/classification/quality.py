"""Per-class FID and KID with an in-domain feature extractor.

Inception features (ImageNet, 299 px RGB, a download) say little about 32 px greyscale
defects, so features come from a classifier trained on the real training set of the same
domain (any ``uint8 images -> (N, F)`` callable). The statistics are torch-fidelity's own
(``fid_features_to_statistics`` / ``fid_statistics_to_metric`` / ``kid_features_to_metric``).

Small classes: FID is computed whenever both sides have at least 2 images (eigenvalue form,
valid for singular covariances, but biased upwards for few samples: compare classes of
similar size only); KID shrinks its subset size to the smaller side and is reported as
``None`` below 2 images. Both numbers carry the sample counts used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from ganaug.classification.data import ImageSet

logger = logging.getLogger(__name__)


def fid_kid(
    real_feats: Tensor, fake_feats: Tensor, *, kid_subsets: int = 50, seed: int = 0
) -> dict:
    """FID and KID (mean, std) between two feature sets.

    Shape:
        - real_feats: ``(N, F)``; fake_feats: ``(M, F)``
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    n, m = len(real_feats), len(fake_feats)
    out: dict = {"n_real": n, "n_fake": m, "fid": None, "kid": None, "kid_std": None}
    if n < 2 or m < 2:
        return out
    real_feats, fake_feats = real_feats.double(), fake_feats.double()
    out["fid"] = fid_statistics_to_metric(
        fid_features_to_statistics(real_feats), fid_features_to_statistics(fake_feats), False
    )["frechet_inception_distance"]
    kid = kid_features_to_metric(
        real_feats,
        fake_feats,
        kid_subsets=kid_subsets,
        kid_subset_size=min(n, m, 1000),
        rng_seed=seed,
        verbose=False,
    )
    out["kid"] = kid["kernel_inception_distance_mean"]
    out["kid_std"] = kid["kernel_inception_distance_std"]
    out["kid_subset_size"] = min(n, m, 1000)
    return out


def per_class_fid_kid(
    real: ImageSet,
    fake: ImageSet,
    *,
    feature_fn: Callable[[Tensor], Tensor],
    seed: int = 0,
) -> dict[str, dict]:
    """``{class name: fid_kid(...)}`` over the classes of ``real``; ``fake`` is typically the
    generated part of an oversampled set."""
    if real.class_names != fake.class_names:
        raise ValueError(
            f"real and generated sets have different classes: {real.class_names} vs "
            f"{fake.class_names}"
        )
    out = {}
    for k, name in enumerate(real.class_names):
        r = real.images[real.labels == k]
        f = fake.images[fake.labels == k]
        fr = feature_fn(r) if len(r) else torch.empty(0, 1)
        ff = feature_fn(f) if len(f) else torch.empty(0, fr.shape[1])
        if len(r) < 2 or len(f) < 2:
            logger.info("class %r: FID/KID skipped (%d real, %d generated)", name, len(r), len(f))
        out[name] = fid_kid(fr, ff, seed=seed)
    return out
