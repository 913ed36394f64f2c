"""Image-classification data: class-per-folder image sets and long-tailed Fashion-MNIST.

Images are held in memory as ``uint8`` tensors of shape ``(N, C, H, W)``; the sets used here
(magnetic-tile, Fashion-MNIST subsets) are small enough, and it keeps GAN and classifier
training free of decoding cost.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FASHION_MNIST_ENV = "GANAUG_FASHION_MNIST"
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"  # Debian dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DatasetError(ValueError):
    """A dataset on disk is not usable; the message names the path and the problem."""


class EmptyClassError(DatasetError):
    """A class folder holds no images."""


class UnreadableImageError(DatasetError):
    """An image file could not be decoded."""


class ClassNotFoundError(DatasetError):
    """A requested class is not present in the data."""


@dataclass
class ImageSet:
    """An in-memory labelled image set.

    Attributes:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64 in ``[0, len(class_names))``.
        class_names: one name per class index.
        sources: one string per image (file path, or ``"<set>:<index>"``).
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSet.labels must have shape ({self.images.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
            )
        if not self.sources:
            self.sources = [f"item:{i}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, index: Tensor | list[int]) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            self.images[index],
            self.labels[index],
            list(self.class_names),
            [self.sources[i] for i in index.tolist()],
        )

    def as_float(self) -> Tensor:
        """Images as float in ``[-1, 1]`` (the GAN's range)."""
        return self.images.float().div(127.5).sub(1.0)

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError as err:
            raise ClassNotFoundError(
                f"class {name!r} is not in the data; available classes: {self.class_names}"
            ) from err


def concat_sets(a: ImageSet, b: ImageSet) -> ImageSet:
    if a.class_names != b.class_names:
        raise ValueError(
            f"cannot concatenate sets with different classes: {a.class_names} vs {b.class_names}"
        )
    return ImageSet(
        torch.cat([a.images, b.images]),
        torch.cat([a.labels, b.labels]),
        list(a.class_names),
        a.sources + b.sources,
    )


def load_image(path: str | os.PathLike, *, image_size: int, channels: int) -> Tensor:
    """Decode, convert and resize one image.

    Shape:
        - output: ``(channels, image_size, image_size)`` uint8

    Raises:
        UnreadableImageError: the file cannot be decoded (message names the file).
    """
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def load_image_folder(
    root: str | os.PathLike,
    *,
    image_size: int = 64,
    channels: int = 1,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    classes: list[str] | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """Load ``root/<class>/<image>`` into memory.

    Args:
        root: folder with one sub-folder per class.
        image_size: images are resized to ``image_size`` x ``image_size``.
        channels: 1 (greyscale) or 3 (RGB).
        extensions: file suffixes counted as images (lower case). Magnetic-tile keeps masks
            as ``.png`` beside its ``.jpg`` images, so its loader passes ``(".jpg",)``.
        classes: class folders to use, in this order (default: all, sorted).
        skip_unreadable: log and skip undecodable files instead of raising.

    Raises:
        DatasetError: ``root`` is missing or has no class folders.
        ClassNotFoundError: a name in ``classes`` has no folder.
        EmptyClassError: a class folder holds no file with one of ``extensions``.
        UnreadableImageError: a file cannot be decoded (unless ``skip_unreadable``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = available
    missing = [c for c in classes if c not in available]
    if missing:
        raise ClassNotFoundError(
            f"requested class(es) {missing} not found under {root}; available: {available}"
        )
    if not classes:
        raise DatasetError(f"image folder {root} has no class sub-folders")

    images, labels, sources = [], [], []
    for k, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in extensions
        )
        if not files:
            raise EmptyClassError(
                f"class folder {root / name} holds no images (looked for {', '.join(extensions)})"
            )
        n_ok = 0
        for f in files:
            try:
                images.append(load_image(f, image_size=image_size, channels=channels))
            except UnreadableImageError as err:
                if not skip_unreadable:
                    raise
                logger.warning("skipping %s", err)
                continue
            labels.append(k)
            sources.append(str(f))
            n_ok += 1
        if n_ok == 0:
            raise EmptyClassError(f"class folder {root / name} has no readable image")
    logger.info("loaded %d images in %d classes from %s", len(labels), len(classes), root)
    return ImageSet(torch.stack(images), torch.tensor(labels), list(classes), sources)


def load_magnetic_tile(
    root: str | os.PathLike | None = None, *, image_size: int = 64, **kwargs
) -> ImageSet:
    """Magnetic-tile defects (6 classes, greyscale, ``.jpg`` images beside ``.png`` masks).

    ``root`` defaults to ``dataset_dir("magnetic-tile")`` under the data root.
    """
    if root is None:
        from ganaug.data_root import dataset_dir

        root = dataset_dir("magnetic-tile")
    return load_image_folder(
        root, image_size=image_size, channels=1, extensions=(".jpg", ".jpeg"), **kwargs
    )


def stratified_split(
    data: ImageSet, *, test_fraction: float = 0.3, seed: int = 0, min_test: int = 1
) -> tuple[ImageSet, ImageSet]:
    """Split every class with the same test fraction (at least ``min_test`` test images and
    one training image per class)."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for k in range(data.num_classes):
        idx = torch.nonzero(data.labels == k).flatten()
        if len(idx) < 2:
            raise DatasetError(
                f"class {data.class_names[k]!r} has {len(idx)} image(s): a train/test split "
                f"needs at least 2"
            )
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = min(len(idx) - 1, max(min_test, round(test_fraction * len(idx))))
        test_idx += idx[:n_test].tolist()
        train_idx += idx[n_test:].tolist()
    return data.subset(sorted(train_idx)), data.subset(sorted(test_idx))


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain), as used by (Fashion-)MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DatasetError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of the Fashion-MNIST IDX files: ``root``, ``$GANAUG_FASHION_MNIST``, or the
    Debian package's ``/usr/share/datasets/fashion-mnist``."""
    path = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT)
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        raise DatasetError(
            f"Fashion-MNIST not found at {path}: install the Debian package "
            f"(apt-get install dataset-fashion-mnist) or set {FASHION_MNIST_ENV} to a folder "
            f"holding train-images-idx3-ubyte.gz and the other IDX files"
        )
    return path


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Exponential profile ``n_k = n_max * IF^(-k / (K - 1))`` (Cui et al. 2019)."""
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    return [
        max(1, int(n_max * imbalance_factor ** (-k / (num_classes - 1))))
        for k in range(num_classes)
    ]


def load_fashion_mnist_lt(
    root: str | os.PathLike | None = None,
    *,
    imbalance_factor: float = 100.0,
    n_max: int = 6000,
    test_per_class: int | None = None,
    image_size: int = 28,
    seed: int = 0,
) -> tuple[ImageSet, ImageSet]:
    """Long-tailed Fashion-MNIST: class ``k`` keeps ``n_max * IF^(-k/9)`` training images
    (class 0 is the head); the test set stays balanced.

    Args:
        imbalance_factor: head/tail ratio (10, 50, 100 are usual).
        n_max: head-class size (6000 = the full class; smaller for quick CPU runs).
        test_per_class: balanced test subset size per class (default: all 1000).
        image_size: resize from 28 (e.g. 32 for GANs that need a power of two).
        seed: which images are kept.

    Returns:
        ``(train, test)`` ImageSets with ``(N, 1, image_size, image_size)`` images.
    """
    d = fashion_mnist_dir(root)
    rng = np.random.default_rng(seed)
    out = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
        y = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if split == "train":
            counts = long_tail_counts(n_max, 10, imbalance_factor)
        else:
            counts = [test_per_class or int((y == k).sum()) for k in range(10)]
        keep = []
        for k, n in enumerate(counts):
            idx = np.flatnonzero(y == k)
            keep.append(np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False)))
        keep = np.concatenate(keep)
        imgs = torch.from_numpy(x[keep].copy())[:, None]
        if image_size != 28:
            imgs = (
                torch.nn.functional.interpolate(
                    imgs.float(), size=(image_size, image_size), mode="bilinear"
                )
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        out.append(
            ImageSet(
                imgs,
                torch.from_numpy(y[keep]),
                list(FASHION_MNIST_CLASSES),
                [f"fashion-mnist-{split}:{i}" for i in keep.tolist()],
            )
        )
    logger.info(
        "long-tailed Fashion-MNIST (IF %g): train counts %s",
        imbalance_factor,
        out[0].class_counts(),
    )
    return out[0], out[1]
