"""Atomic, resumable writer of synthetic (image, label map) sets with a manifest.

Layout of a finished set ``OUT``::

    OUT/images/<name>.png   RGB image (generated)
    OUT/labels/<name>.png   single-channel label map it was generated from
    OUT/manifest.json       sources, generator checkpoint + sha256, seed, class statistics

Work happens in a staging folder ``.<OUT name>.partial`` next to ``OUT``: every file is
written to a temporary name and renamed, so no half-written file is ever visible; finished
items survive an interruption and a rerun with the same fingerprint (same sources, seed and
checkpoint hash) skips them. Only when all items exist is the staging folder swapped in
place of ``OUT`` by renames; until then a previous ``OUT`` stays untouched and valid. If a
run dies between the two renames of the swap, the next run restores the previous set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "sha256_file",
    "check_writable",
    "SyntheticSetWriter",
    "write_synthetic_set",
    "is_valid_set",
]

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_writable(folder: str | os.PathLike) -> Path:
    """Make sure files can be created where ``folder`` will live.

    Creates the parent if needed and writes/removes a probe file there.

    Raises:
        PermissionError: the parent folder cannot be created or written, naming it.
    """
    folder = Path(folder).absolute()
    parent = folder.parent
    probe = parent / f".{folder.name}.probe-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"Output folder {folder} is not writable: cannot create files in {parent} "
            f"({err.strerror or err}). Choose another output folder."
        ) from err
    return folder


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _encode_png(arr: np.ndarray, where: str) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"Could not encode {where} as PNG (array shape {arr.shape}, {arr.dtype}).")
    return buf.tobytes()


def is_valid_set(folder: str | os.PathLike) -> bool:
    """True when ``folder`` has a manifest and every image/label it lists."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return all(
        (folder / "images" / it["name"]).is_file() and (folder / "labels" / it["name"]).is_file()
        for it in manifest.get("items", [])
    )


class SyntheticSetWriter:
    """Stage items in ``.<name>.partial`` and swap the finished set into ``out_dir``.

    Args:
        out_dir: final folder of the set.
        fingerprint: JSON-able dict identifying the run (sources, seed, checkpoint hash...);
            a staging folder made with another fingerprint is discarded, not resumed.

    Raises:
        PermissionError: ``out_dir``'s parent is not writable.
    """

    def __init__(self, out_dir: str | os.PathLike, *, fingerprint: dict):
        self.out_dir = check_writable(out_dir)
        self.staging = self.out_dir.with_name(f".{self.out_dir.name}.partial")
        self.old = self.out_dir.with_name(f".{self.out_dir.name}.old")
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self._recover_swap()
        self._open_staging()

    def _recover_swap(self) -> None:
        # A run that died between "OUT -> .old" and ".partial -> OUT" left no OUT: restore.
        if self.old.exists() and not self.out_dir.exists():
            logger.warning("Restoring %s from an interrupted swap (%s).", self.out_dir, self.old)
            os.replace(self.old, self.out_dir)
        elif self.old.exists():
            shutil.rmtree(self.old)

    def _open_staging(self) -> None:
        fp_file = self.staging / "fingerprint.json"
        if self.staging.exists():
            try:
                same = json.loads(fp_file.read_text()) == self.fingerprint
            except (OSError, ValueError):
                same = False
            if not same:
                logger.info("Discarding staging folder %s from a different run.", self.staging)
                shutil.rmtree(self.staging)
        (self.staging / "images").mkdir(parents=True, exist_ok=True)
        (self.staging / "labels").mkdir(parents=True, exist_ok=True)
        if not fp_file.exists():
            _atomic_write_bytes(fp_file, json.dumps(self.fingerprint, indent=1).encode())

    def done(self, name: str) -> bool:
        """Whether item ``name`` is complete in staging (its image is written last)."""
        return (self.staging / "images" / name).is_file()

    def write(self, name: str, *, image: np.ndarray, label: np.ndarray) -> None:
        """Write one item. image: (H, W, 3) uint8 RGB; label: (H, W) uint8."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{name}: image must be (H, W, 3) uint8; got {image.shape} {image.dtype}."
            )
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"{name}: label {label.shape} and image {image.shape[:2]} sizes differ."
            )
        _atomic_write_bytes(
            self.staging / "labels" / name, _encode_png(label.astype(np.uint8), name)
        )
        bgr = np.ascontiguousarray(image[..., ::-1])
        _atomic_write_bytes(self.staging / "images" / name, _encode_png(bgr, name))

    def commit(self, manifest: dict) -> Path:
        """Write the manifest and swap the staging folder into place. Returns ``out_dir``."""
        missing = [it["name"] for it in manifest.get("items", []) if not self.done(it["name"])]
        if missing:
            raise RuntimeError(
                f"Cannot commit {self.out_dir}: {len(missing)} items are not written yet "
                f"(first: {missing[:3]})."
            )
        (self.staging / "fingerprint.json").unlink(missing_ok=True)
        _atomic_write_bytes(self.staging / MANIFEST, json.dumps(manifest, indent=1).encode())
        if self.out_dir.exists():
            os.replace(self.out_dir, self.old)
        os.replace(self.staging, self.out_dir)
        if self.old.exists():
            shutil.rmtree(self.old)
        return self.out_dir


def write_synthetic_set(
    out_dir: str | os.PathLike,
    *,
    names: Sequence[str],
    labels: Sequence[np.ndarray],
    generate: Callable[[list[np.ndarray]], list[np.ndarray]],
    seed: int,
    checkpoint: str | os.PathLike | None,
    records: Sequence[dict] | None = None,
    class_stats: dict | None = None,
    batch_size: int = 8,
    extra: dict | None = None,
) -> Path:
    """Generate an image for each label map and write the set atomically and resumably.

    Args:
        out_dir: final folder.
        names: file names (``*.png``) of the items, unique.
        labels: (H, W) uint8 label maps, in the resolution of the images to generate.
        generate: maps a list of label maps to a list of (H, W, 3) uint8 RGB images.
        seed: the run's seed (recorded; part of the resume fingerprint).
        checkpoint: generator checkpoint file, hashed into the manifest.
        records: per-item provenance (base map, pasted segments) for the manifest.
        class_stats: before/after class statistics for the manifest.
        batch_size: label maps per ``generate`` call.

    Returns:
        ``out_dir`` as a Path.
    """
    if len(names) != len(labels) or len(set(names)) != len(names):
        raise ValueError(
            f"Need unique names, one per label map; got {len(names)} names for {len(labels)} maps."
        )
    ckpt_info = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"Generator checkpoint {path} does not exist.")
        ckpt_info = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    records = list(records) if records is not None else [{} for _ in names]
    fingerprint = {
        "seed": seed,
        "checkpoint_sha256": ckpt_info and ckpt_info["sha256"],
        "items": len(names),
        "labels_sha256": hashlib.sha256(
            b"".join(np.ascontiguousarray(m).tobytes() for m in labels)
        ).hexdigest(),
    }
    writer = SyntheticSetWriter(out_dir, fingerprint=fingerprint)
    todo = [i for i, n in enumerate(names) if not writer.done(n)]
    if len(todo) < len(names):
        logger.info(
            "Resuming %s: %d of %d items already written.",
            out_dir,
            len(names) - len(todo),
            len(names),
        )
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        images = generate([labels[i] for i in idx])
        for i, img in zip(idx, images):
            writer.write(names[i], image=img, label=labels[i])
        logger.debug("Wrote %d/%d items.", start + len(idx), len(todo))
    elapsed = time.perf_counter() - t0
    manifest = {
        "format": "ganaug-synthetic-set/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seed": seed,
        "generator_checkpoint": ckpt_info,
        "num_items": len(names),
        "class_stats": class_stats or {},
        "items": [{"name": n, **r} for n, r in zip(names, records)],
        **(extra or {}),
    }
    out = writer.commit(manifest)
    logger.info(
        "Wrote %d synthetic items to %s (%.1f s for %d new).", len(names), out, elapsed, len(todo)
    )
    return out
