"""Which layout a dataset path has, and where its parts are.

Three layouts are recognised:

- ``coco``: a COCO instances JSON file, or a folder holding one (``annotations/*.json``
  or ``*.json``), images in the folder named after the file (``instances_train2017.json``
  -> ``train2017/``) or ``images/``;
- ``labelmap``: image folders paired with single-channel label-map folders: CamVid's
  ``train/`` + ``trainannot/``, mmseg's ``img_dir/<split>`` + ``ann_dir/<split>``,
  ``images/`` + ``annotations|labels|masks/`` (optionally with ``<split>`` below), VOC's
  ``JPEGImages/`` + ``SegmentationClass/``;
- ``classfolder``: one sub-folder of images per class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ganaug.inspect._common import IMAGE_EXTENSIONS, InspectError

FORMATS = ("coco", "labelmap", "classfolder")

_ANNOT_SUFFIXES = ("annot", "_annot", "_annotations", "_labels", "_masks", "_gt")
_PAIRED_DIRS = (
    ("img_dir", "ann_dir"),
    ("images", "annotations"),
    ("images", "labels"),
    ("images", "masks"),
    ("JPEGImages", "SegmentationClass"),
)


@dataclass(frozen=True)
class Split:
    """One image folder and the label-map folder that goes with it."""

    name: str
    images: Path
    labels: Path


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file()
    )


def find_labelmap_splits(root: str | Path) -> list[Split]:
    """Image/label folder pairs under ``root`` (empty list when there are none)."""
    root = Path(root)
    if not root.is_dir():
        return []
    splits: list[Split] = []
    for img_name, ann_name in _PAIRED_DIRS:
        img, ann = root / img_name, root / ann_name
        if not (img.is_dir() and ann.is_dir()):
            continue
        if _has_images(ann):
            splits.append(Split(img_name, img, ann))
        for sub in sorted(p for p in ann.iterdir() if p.is_dir()):
            if (img / sub.name).is_dir() and _has_images(sub):
                splits.append(Split(sub.name, img / sub.name, sub))
    if splits:
        return splits
    dirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    for name in sorted(dirs):
        for suffix in _ANNOT_SUFFIXES:
            ann = dirs.get(name + suffix)
            if ann is not None and _has_images(ann) and _has_images(dirs[name]):
                splits.append(Split(name, dirs[name], ann))
                break
    return splits


def find_coco_json(root: str | Path) -> tuple[Path, Path | None]:
    """The COCO JSON file under ``root`` (or ``root`` itself) and its image folder."""
    root = Path(root)
    if root.is_file():
        return root, _coco_images_dir(root, root.parent)
    candidates = sorted(root.glob("annotations/*.json")) + sorted(root.glob("*.json"))
    instances = [p for p in candidates if p.name.startswith("instances")]
    pool = instances or candidates
    train = [p for p in pool if "train" in p.stem]
    pool = train or pool
    if not pool:
        raise InspectError(
            f"{root}: no COCO JSON file found (looked for annotations/*.json and *.json)"
        )
    if len(pool) > 1:
        raise InspectError(
            f"{root}: several COCO JSON files ({', '.join(p.name for p in pool)}): "
            f"pass the one to inspect as PATH"
        )
    base = root if pool[0].parent == root else pool[0].parent.parent
    return pool[0], _coco_images_dir(pool[0], base)


def _coco_images_dir(json_path: Path, base: Path) -> Path | None:
    stem = json_path.stem
    names = [stem.split("_", 1)[1]] if "_" in stem else []
    for name in [*names, "images", "train2017", "val2017"]:
        cand = base / name
        if cand.is_dir():
            return cand
    return None


def _looks_like_coco(path: Path) -> bool:
    """Cheap check: the first few kB of the file mention COCO's top-level keys."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return any(k in head for k in (b'"annotations"', b'"images"', b'"categories"'))


def class_folders(root: str | Path) -> list[Path]:
    """Sub-folders of ``root`` that hold image files directly."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if _has_images(p)]


def detect_format(path: str | Path) -> str:
    """Return ``"coco"``, ``"labelmap"`` or ``"classfolder"`` for a dataset path.

    Raises:
        InspectError: the path does not exist or matches none of the layouts, with what
            was looked for.
    """
    path = Path(path)
    if not path.exists():
        raise InspectError(f"{path}: does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        raise InspectError(f"{path}: a file that is not a .json annotation file")
    jsons = list(path.glob("annotations/*.json")) + list(path.glob("*.json"))
    if any(_looks_like_coco(p) for p in jsons):
        return "coco"
    if find_labelmap_splits(path):
        return "labelmap"
    if len(class_folders(path)) >= 2:
        return "classfolder"
    raise InspectError(
        f"{path}: no known dataset layout (a COCO JSON, image + label-map folders such as "
        f"train/ + trainannot/ or img_dir/ + ann_dir/, or one image folder per class); "
        f"choose one with --format"
    )


def load_json_quick(path: Path) -> dict:
    """Read a small JSON side file (class names), naming the file on failure."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InspectError(f"{path}: cannot be read as JSON: {err}") from err
