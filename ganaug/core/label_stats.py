"""Class statistics of label-map folders, streamed one file at a time."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def check_image_file(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is an intact image file.

    Checks the suffix, the leading magic bytes and PIL's structural ``verify`` (no pixel
    decoding), so it is cheap enough to run over a whole folder.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{path}: not an image file (suffix {path.suffix!r}; expected one of "
            f"{', '.join(IMAGE_SUFFIXES)}). Remove it from the image folder."
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(m) for m in _MAGIC):
        raise ValueError(
            f"{path}: has an image suffix but its content is not a PNG/JPEG/BMP/TIFF image "
            f"(first bytes {head!r})"
        )
    # PIL's verify walks the chunks without decoding pixels: a truncated or corrupt PNG
    # fails here, naming the file, rather than deep inside a data-loader worker.
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: corrupt or truncated image file: {err}") from err


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label PNG as a 2-D integer array, naming the file on error."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read label map: {err}") from err
    if arr.ndim != 2:
        raise ValueError(f"{path}: label map must be single-channel (H, W), got shape {arr.shape}")
    return arr


def class_pixel_counts_from_files(
    label_paths: Iterable[str | os.PathLike],
    num_classes: int,
    *,
    ignore_values: Iterable[int] = (255,),
) -> np.ndarray:
    """Pixel count per class over label-map files, reading one map at a time.

    Memory stays flat in the number of files; for maps already in memory see
    :func:`ganaug.core.rebalance.class_pixel_counts`.

    Args:
        label_paths: label PNG files.
        num_classes: K; values in ``[0, K)`` are counted.
        ignore_values: values skipped silently (void / ignore).

    Raises:
        ValueError: a map holds a value outside ``[0, K)`` that is not ignored; the message
            names the file and the values.

    Returns:
        int64 array of shape ``(K,)``.
    """
    ignore = set(int(v) for v in ignore_values)
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in label_paths:
        arr = read_label_map(path)
        binc = np.bincount(arr.ravel().astype(np.int64), minlength=num_classes)
        extra = [v for v in np.nonzero(binc[num_classes:])[0] + num_classes if v not in ignore]
        if extra:
            raise ValueError(
                f"{path}: label values {extra[:10]} are outside [0, {num_classes}) and not "
                f"in the ignored values {sorted(ignore)}"
            )
        counts += binc[:num_classes]
    return counts
