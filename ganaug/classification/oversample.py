"""GAN oversampling: per-class generation up to balanced or user-given counts, an optional
quality filter, and atomic writing of the generated set with a manifest.

Filters (``filter=``):

* ``none`` - keep every generated image.
* ``confidence`` - keep images that a classifier trained on real data assigns to their
  intended class with probability >= ``confidence_threshold``.
* ``knn`` - nearest-neighbour outlier removal (as Huang et al.'s weather pipeline removes
  generated samples far from the real data): ``n / (1 - knn_reject)`` candidates are drawn
  and the ``knn_reject`` share farthest from their ``knn_k``-th nearest *real* image of the
  same class is dropped. The cut is relative because an absolute one (e.g. the spread of
  the real images among themselves) rejects everything from a GAN trained for minutes, in
  the features of a classifier that has seen exactly those real images.

For ``confidence``, candidates are drawn in rounds until enough pass; when ``max_rounds`` is
reached the best remaining candidates fill the gap and a warning says how many.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ganaug.classification.data import ClassNotFoundError, DatasetError, ImageSet

logger = logging.getLogger(__name__)

FILTERS = ("none", "confidence", "knn")
MANIFEST = "manifest.json"


@dataclass
class OversampleConfig:
    """How many images to generate and which to keep (YAML keys under ``oversample:``)."""

    target: str | dict = "balanced"  # "balanced" (= largest class) or {class name: count}
    mix: float = 1.0  # share of each class's gap filled by generated images; rest: real copies
    filter: str = "none"  # none | confidence | knn
    confidence_threshold: float = 0.5
    knn_k: int = 3
    knn_reject: float = 0.25  # share of candidates dropped as outliers by filter="knn"
    candidate_factor: float = 1.5  # candidates drawn per needed image in each filter round
    max_rounds: int = 3
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.filter not in FILTERS:
            raise ValueError(f"oversample filter must be one of {FILTERS}, got {self.filter!r}")
        if not 0.0 <= self.knn_reject < 1.0:
            raise ValueError(f"oversample knn_reject must be in [0, 1), got {self.knn_reject}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"oversample mix must be in [0, 1], got {self.mix}")
        if not (isinstance(self.target, dict) or self.target == "balanced"):
            raise ValueError(
                f"oversample target must be 'balanced' or a mapping class -> count, "
                f"got {self.target!r}"
            )


def plan_counts(counts: list[int], class_names: list[str], target: str | dict) -> list[int]:
    """Images to add per class so that class ``k`` reaches its target.

    Raises:
        ClassNotFoundError: ``target`` names a class that is not in ``class_names``, or asks
            for images of a class with no real image (nothing to learn it from).
    """
    if target == "balanced":
        goal = [max(counts)] * len(counts)
    else:
        unknown = [c for c in target if c not in class_names]
        if unknown:
            raise ClassNotFoundError(
                f"oversample target names class(es) {unknown} absent from the data; "
                f"available: {class_names}"
            )
        goal = [int(target.get(c, n)) for c, n in zip(class_names, counts)]
    for name, n, g in zip(class_names, counts, goal):
        if g > n and n == 0:
            raise ClassNotFoundError(
                f"class {name!r} has no real training image, so no generator can learn it; "
                f"drop it from the target"
            )
    return [max(0, g - n) for g, n in zip(goal, counts)]


def _to_uint8(x: Tensor) -> Tensor:
    """``[-1, 1]`` floats to uint8."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def knn_outlier_scores(
    cand_feats: Tensor, real_feats: Tensor, *, k: int = 3, quantile: float = 0.95
) -> tuple[Tensor, float]:
    """Distance of each candidate to its ``k``-th nearest real sample, and the threshold:
    the ``quantile`` of real samples' distance to their ``k``-th nearest *other* real sample.

    Shape:
        - cand_feats: ``(M, F)``; real_feats: ``(N, F)``; output: ``(M,)``, float
    """
    n = len(real_feats)
    if n < 2:
        # One real image gives no spread to compare with: accept everything.
        return torch.zeros(len(cand_feats)), float("inf")
    k_eff = min(k, n - 1)
    d_cr = torch.cdist(cand_feats.double(), real_feats.double())
    scores = d_cr.topk(k_eff, dim=1, largest=False).values[:, -1]
    d_rr = torch.cdist(real_feats.double(), real_feats.double())
    d_rr.fill_diagonal_(float("inf"))
    ref = d_rr.topk(k_eff, dim=1, largest=False).values[:, -1]
    return scores.float(), float(torch.quantile(ref, quantile))


class Oversampler:
    """Generates per-class synthetic images from a trained class-conditional sampler.

    Args:
        sample_fn: ``labels (M,) int64 -> images (M, C, H, W)`` float in ``[-1, 1]``
            (e.g. ``CGANTrainer.sample``).
        config: an :class:`OversampleConfig`.
        classifier: ``uint8 images -> probabilities (M, K)``, needed by ``filter="confidence"``.
        feature_fn: ``uint8 images -> features (M, F)`` for ``filter="knn"`` (default: pixels).
        seed: RNG seed for the real copies in a partial mix.
    """

    def __init__(
        self,
        *,
        sample_fn: Callable[[Tensor], Tensor],
        config: OversampleConfig | None = None,
        classifier: Callable[[Tensor], Tensor] | None = None,
        feature_fn: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.cfg = config or OversampleConfig()
        if self.cfg.filter == "confidence" and classifier is None:
            raise ValueError("filter='confidence' needs a classifier (uint8 images -> probs)")
        self.sample_fn = sample_fn
        self.classifier = classifier
        self.feature_fn = feature_fn or (lambda x: x.flatten(1).float() / 255.0)
        self.seed = seed
        self.stats: dict[str, dict] = {}

    def _knn_filtered(self, k: int, n: int, real_k: Tensor) -> Tensor:
        m = max(n, int(np.ceil(n / (1.0 - self.cfg.knn_reject))))
        cand = _to_uint8(self.sample_fn(torch.full((m,), k, dtype=torch.long)))
        dist, _ = knn_outlier_scores(
            self.feature_fn(cand), self.feature_fn(real_k), k=self.cfg.knn_k
        )
        self._last_accept = n / m
        return cand[dist.argsort()[:n]]

    def _generate_class(self, k: int, n: int, real_k: Tensor) -> Tensor:
        if n == 0:
            return torch.empty((0,) + tuple(real_k.shape[1:]), dtype=torch.uint8)
        if self.cfg.filter == "none":
            return _to_uint8(self.sample_fn(torch.full((n,), k, dtype=torch.long)))
        if self.cfg.filter == "knn":
            return self._knn_filtered(k, n, real_k)
        kept: list[Tensor] = []
        rejected: list[tuple[Tensor, Tensor]] = []
        n_kept, drawn = 0, 0
        for _ in range(self.cfg.max_rounds):
            m = max(1, int(np.ceil((n - n_kept) * self.cfg.candidate_factor)))
            cand = _to_uint8(self.sample_fn(torch.full((m,), k, dtype=torch.long)))
            drawn += m
            score = self.classifier(cand)[:, k]
            ok = score >= self.cfg.confidence_threshold
            kept.append(cand[ok])
            rejected.append((cand[~ok], score[~ok]))
            n_kept += int(ok.sum())
            if n_kept >= n:
                break
        out = torch.cat(kept)[:n]
        if len(out) < n:
            rest = torch.cat([c for c, _ in rejected])
            rest_score = torch.cat([s for _, s in rejected])
            best = rest_score.argsort(descending=True)[: n - len(out)]
            logger.warning(
                "class %d: only %d of %d generated images passed the %s filter after %d "
                "candidates; filling with the %d best rejected ones",
                k,
                len(out),
                n,
                self.cfg.filter,
                drawn,
                len(best),
            )
            out = torch.cat([out, rest[best]])
        self._last_accept = n_kept / max(drawn, 1)
        return out

    def generate(self, real: ImageSet) -> ImageSet:
        """The images to add to ``real``: generated (and, for ``mix < 1``, real copies).

        Returns:
            an :class:`ImageSet` whose sources say ``generated:<class>:<i>`` or
            ``copy:<original source>``.
        """
        counts = real.class_counts()
        need = plan_counts(counts, real.class_names, self.cfg.target)
        g = torch.Generator().manual_seed(self.seed)
        images, labels, sources = [], [], []
        for k, (name, n) in enumerate(zip(real.class_names, need)):
            n_gen = int(round(n * self.cfg.mix))
            n_copy = n - n_gen
            idx_k = torch.nonzero(real.labels == k).flatten()
            self._last_accept = 1.0
            t0 = time.perf_counter()
            gen = self._generate_class(k, n_gen, real.images[idx_k])
            images.append(gen)
            labels += [k] * len(gen)
            sources += [f"generated:{name}:{i}" for i in range(len(gen))]
            if n_copy:
                pick = idx_k[torch.randint(len(idx_k), (n_copy,), generator=g)]
                images.append(real.images[pick])
                labels += [k] * n_copy
                sources += [f"copy:{real.sources[i]}" for i in pick.tolist()]
            self.stats[name] = {
                "real": counts[k],
                "generated": len(gen),
                "copied": n_copy,
                "filter_accept_rate": self._last_accept,
                "seconds": time.perf_counter() - t0,
            }
        shape = (0,) + tuple(real.images.shape[1:])
        imgs = torch.cat(images) if images else torch.empty(shape, dtype=torch.uint8)
        logger.info("oversampler: %s", {k: v["generated"] for k, v in self.stats.items()})
        return ImageSet(
            imgs, torch.tensor(labels, dtype=torch.long), list(real.class_names), sources
        )


def _folder_name(k: int, name: str) -> str:
    return f"{k:03d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def write_image_set(
    data: ImageSet,
    out_dir: str | os.PathLike,
    *,
    manifest: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` as ``out_dir/<k>_<class>/<i>.png`` plus ``manifest.json``, atomically:
    everything goes to a temporary sibling folder that is renamed into place at the end, so
    a crash never leaves a half-written set under ``out_dir``.

    The manifest holds class names, folder names, per-class counts, the file list with each
    image's source, and whatever ``manifest`` adds.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        folders = [_folder_name(k, n) for k, n in enumerate(data.class_names)]
        for f in folders:
            (tmp / f).mkdir()
        files = []
        arr = data.images.permute(0, 2, 3, 1).numpy()
        for i, (lab, src) in enumerate(zip(data.labels.tolist(), data.sources)):
            rel = f"{folders[lab]}/{i:06d}.png"
            img = arr[i, :, :, 0] if arr.shape[-1] == 1 else arr[i]
            Image.fromarray(img).save(tmp / rel)
            files.append({"file": rel, "label": lab, "source": src})
        doc = {
            "format": "ganaug-image-set/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "class_names": list(data.class_names),
            "folders": folders,
            "counts": dict(zip(data.class_names, data.class_counts())),
            "image_shape": list(data.images.shape[1:]),
            "files": files,
            **(manifest or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=1, default=str))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d images to %s", len(data), out_dir)
    return out_dir


def read_image_set(path: str | os.PathLike) -> ImageSet:
    """Read a set written by :func:`write_image_set` (checks the manifest's file list)."""
    path = Path(path)
    man_path = path / MANIFEST
    if not man_path.is_file():
        raise DatasetError(f"{path} has no {MANIFEST}: not a set written by ganaug")
    try:
        doc = json.loads(man_path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{man_path} is not valid JSON: {err}") from err
    from ganaug.classification.data import load_image

    c, h, w = doc["image_shape"]
    imgs, labels, sources = [], [], []
    for item in doc["files"]:
        imgs.append(load_image(path / item["file"], image_size=h, channels=c))
        labels.append(item["label"])
        sources.append(item["source"])
    images = torch.stack(imgs) if imgs else torch.empty((0, c, h, w), dtype=torch.uint8)
    return ImageSet(images, torch.tensor(labels, dtype=torch.long), doc["class_names"], sources)


def config_dict(cfg: OversampleConfig) -> dict:
    return asdict(cfg)
