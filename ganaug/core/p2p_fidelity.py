"""FID and KID of synthetic vs real images with an in-domain feature extractor.

The usual Inception features need a download; here a small CNN is trained on the real
(image, label map) pairs to segment them, and its pooled encoder features feed
torch-fidelity through a registered feature extractor. Scores are therefore comparable
between runs that share the same extractor file, not with published Inception FIDs.

KID's subset size defaults to 1000 in torch-fidelity, more than small sets hold; it is set
to ``min(1000, n_real, n_fake)`` here and reported with the result.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["InDomainEncoder", "train_feature_extractor", "load_feature_extractor", "fid_kid"]

FEATURE_SIZE = (120, 160)  # (H, W) every image is resized to before feature extraction


class InDomainEncoder(nn.Module):
    """Four stride-2 conv blocks and a 1x1 segmentation head (trained, then head dropped).

    Shape:
        - Input: (B, 3, H, W) float in [0, 1].
        - :meth:`features`: (B, 5 * width + width) -- global average and 2x2 average pooled
          encoder output (content and coarse layout) plus mean and standard deviation of
          the 1/4-resolution features (texture, sharpness).
        - forward: (B, num_classes, H/16, W/16) logits.
    """

    def __init__(self, *, num_classes: int, width: int = 32):
        super().__init__()
        chans = [3, width // 4, width // 2, width, width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU(True)]
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.settings = dict(num_classes=num_classes, width=width)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def features(self, x: Tensor) -> Tensor:
        low = self.encoder[:6](x)  # 1/4 resolution: texture and sharpness live here
        f = self.encoder[6:](low)
        g = F.adaptive_avg_pool2d(f, 1).flatten(1)
        quad = F.adaptive_avg_pool2d(f, 2).flatten(1)
        return torch.cat([g, quad, low.mean((2, 3)), low.std((2, 3))], 1)


def _read_rgb(path: Path, size=FEATURE_SIZE) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: cannot be read as an image.")
    return cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)[..., ::-1]


def train_feature_extractor(
    image_paths: Sequence[Path],
    label_paths: Sequence[Path],
    *,
    num_classes: int,
    ignore_index: int,
    steps: int = 300,
    batch_size: int = 16,
    seed: int = 0,
) -> InDomainEncoder:
    """Train :class:`InDomainEncoder` to segment the real pairs (labels at 1/16 size)."""
    torch.manual_seed(seed)
    imgs = torch.from_numpy(np.stack([_read_rgb(Path(p)) for p in image_paths])).permute(0, 3, 1, 2)
    h, w = -(-FEATURE_SIZE[0] // 16), -(-FEATURE_SIZE[1] // 16)  # conv output sizes round up
    labels = []
    for p in label_paths:
        lb = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if lb is None or lb.ndim != 2:
            raise ValueError(f"{p}: not a single-channel label map.")
        labels.append(cv2.resize(lb, (w, h), interpolation=cv2.INTER_NEAREST))
    target = torch.from_numpy(np.stack(labels).astype(np.int64))
    target[target >= num_classes] = ignore_index
    net = InDomainEncoder(num_classes=num_classes)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(imgs), (batch_size,), generator=gen)
        x = imgs[idx].float() / 255
        if step % 2:
            x, y = x.flip(-1), target[idx].flip(-1)
        else:
            y = target[idx]
        loss = F.cross_entropy(net(x), y, ignore_index=ignore_index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            logger.debug("feature extractor step %d loss %.3f", step, loss.item())
    logger.info(
        "Trained the in-domain feature extractor for %d steps (last loss %.3f).", steps, loss.item()
    )
    return net.eval()


def save_feature_extractor(net: InDomainEncoder, path: str | os.PathLike) -> None:
    torch.save({"settings": net.settings, "state_dict": net.state_dict()}, path)


def load_feature_extractor(path: str | os.PathLike) -> InDomainEncoder:
    """Load a file written by :func:`save_feature_extractor`.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Feature extractor {path} does not exist; train one first.")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = InDomainEncoder(**ckpt["settings"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def _register(net: InDomainEncoder) -> str:
    """Register ``net`` with torch-fidelity under a name derived from its weights."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    digest = hashlib.sha256(
        b"".join(t.detach().cpu().numpy().tobytes() for t in net.state_dict().values())
    ).hexdigest()[:12]
    name = f"ganaug-indomain-{digest}"
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name

    class _Extractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = net

        @staticmethod
        def get_provided_features_list():
            return ("pool",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "pool"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, *FEATURE_SIZE, dtype=torch.uint8)

        def forward(self, x):
            # torch-fidelity hands uint8 (B, 3, H, W); features in float64 for stable stats
            return (self.net.features(x.float() / 255).double(),)

    register_feature_extractor(name, _Extractor)
    return name


class _ImageFolder(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(_read_rgb(self.paths[i]).copy()).permute(2, 0, 1)


def _images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} does not exist.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise FileNotFoundError(f"Image folder {folder} holds no .png/.jpg images.")
    return paths


def fid_kid(
    real_dir: str | os.PathLike,
    fake_dir: str | os.PathLike,
    *,
    extractor: InDomainEncoder,
    kid_subsets: int = 100,
) -> dict:
    """FID and KID (mean, std) between two image folders, via torch-fidelity.

    Returns:
        dict with ``fid``, ``kid_mean``, ``kid_std``, ``n_real``, ``n_fake``,
        ``kid_subset_size`` and ``note`` (how the subset size was chosen).

    Raises:
        ValueError: a folder holds fewer than 2 images (no covariance, no KID subset).
    """
    import torch_fidelity

    real, fake = _images(real_dir), _images(fake_dir)
    n = min(len(real), len(fake))
    if n < 2:
        raise ValueError(
            f"FID/KID need at least 2 images per side; got {len(real)} real, {len(fake)} fake."
        )
    subset = min(1000, n)
    note = (
        f"KID subset size {subset} = min(1000, {len(real)} real, {len(fake)} fake): "
        f"torch-fidelity's default 1000 needs at least that many images per side."
    )
    if n < 50:
        note += " Fewer than 50 images: KID and FID are noisy; compare runs only roughly."
    name = _register(extractor)
    metrics = torch_fidelity.calculate_metrics(
        input1=_ImageFolder(fake),
        input2=_ImageFolder(real),
        cuda=False,
        fid=True,
        kid=True,
        feature_extractor=name,
        kid_subset_size=subset,
        kid_subsets=kid_subsets,
        batch_size=32,
        verbose=False,
        save_cpu_ram=True,
    )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "kid_mean": float(metrics["kernel_inception_distance_mean"]),
        "kid_std": float(metrics["kernel_inception_distance_std"]),
        "n_real": len(real),
        "n_fake": len(fake),
        "kid_subset_size": subset,
        "feature_extractor": name,
        "note": note,
    }
