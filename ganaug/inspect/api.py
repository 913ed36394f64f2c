"""One entry point over the three layouts: detect, read, add recommendations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ganaug.inspect import formats
from ganaug.inspect._common import InspectError

logger = logging.getLogger(__name__)


def load_class_names(spec: str | Sequence[str] | None) -> list[str] | None:
    """Class names from a list, a comma-separated string, or a file.

    A file holds one name per line (``.txt``) or a JSON list / ``{"classes": [...]}``.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [str(s) for s in spec]
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = formats.load_json_quick(path)
            names = data.get("classes") if isinstance(data, dict) else data
            if not isinstance(names, list):
                raise InspectError(
                    f"{path}: expected a JSON list of class names or {{'classes': [...]}}, "
                    f"got {type(names).__name__}"
                )
            return [str(n) for n in names]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [s.strip() for s in spec.split(",") if s.strip()]


def inspect_dataset(
    path: str | Path,
    *,
    fmt: str | None = None,
    classes: str | Sequence[str] | None = None,
    ignore_index: int | None = None,
    split: str | None = None,
    images_dir: str | Path | None = None,
    strict: bool = False,
    occlusion_iou: float = 0.3,
    mask_overlap: bool = True,
    check_images: str = "auto",
    components: bool = True,
    recommend: bool = True,
) -> dict:
    """Inspect a dataset and return the report dict (see the format readers for keys).

    Args:
        path: COCO JSON file or folder, label-map dataset folder, or class-folder root.
        fmt: ``"coco"``, ``"labelmap"`` or ``"classfolder"``; detected when ``None``.
        classes: declared class names (list, comma-separated string or file path).
        ignore_index: label-map value for unlabelled pixels (default 255; 11 for CamVid).
        split: label-map split to read (``"all"`` for every split); default ``train``
            when there is one, else all.
        images_dir: COCO image folder, when not beside the JSON.
        strict: raise on the first unreadable file instead of reporting it.
        recommend: add ``recommendations`` (see :mod:`ganaug.inspect.recommend`).
    """
    path = Path(path)
    fmt = fmt or formats.detect_format(path)
    if fmt not in formats.FORMATS:
        raise InspectError(f"unknown format {fmt!r}: expected one of {formats.FORMATS}")
    names = load_class_names(classes)
    logger.info("inspecting %s as %s", path, fmt)

    if fmt == "coco":
        from ganaug.inspect.coco import inspect_coco

        json_path, found_images = formats.find_coco_json(path)
        report = inspect_coco(
            json_path,
            images_dir=images_dir or found_images,
            occlusion_iou=occlusion_iou,
            mask_overlap=mask_overlap,
            check_images=check_images,
        )
    elif fmt == "labelmap":
        from ganaug.inspect import labelmap

        splits = formats.find_labelmap_splits(path)
        if not splits:
            raise InspectError(
                f"{path}: no image/label-map folder pairs (train/ + trainannot/, "
                f"img_dir/ + ann_dir/, images/ + annotations/ ...)"
            )
        available = [s.name for s in splits]
        if split is None:
            chosen = [s for s in splits if s.name == "train"] or splits
        elif split == "all":
            chosen = splits
        else:
            chosen = [s for s in splits if s.name == split]
            if not chosen:
                raise InspectError(f"{path}: no split {split!r}; found {available}")
        if len(chosen) < len(splits):
            logger.info(
                "reading split(s) %s of %s (--split all reads every one)",
                [s.name for s in chosen],
                available,
            )
        if names is None and _is_camvid(path, splits):
            logger.info("CamVid layout: using its 11 class names, 11 = void (--classes overrides)")
            names = list(labelmap.CAMVID_CLASSES)
            if ignore_index is None:
                ignore_index = labelmap.CAMVID_IGNORE
        report = labelmap.inspect_labelmaps(
            chosen,
            classes=names,
            ignore_index=255 if ignore_index is None else ignore_index,
            components=components,
            strict=strict,
        )
    else:
        from ganaug.inspect.classfolder import inspect_classfolders

        report = inspect_classfolders(path, classes=names, strict=strict)

    report["name"] = _dataset_name(path)
    if recommend:
        from ganaug.inspect.recommend import recommend as make_recommendations

        report["recommendations"] = make_recommendations(report)
    return report


def _is_camvid(path: Path, splits) -> bool:
    # The SegNet CamVid release pairs X/ with Xannot/; the name check keeps other datasets
    # with that layout from getting CamVid's class names.
    return "camvid" in str(path.resolve()).lower() and all(
        s.labels.name == s.images.name + "annot" for s in splits
    )


def _dataset_name(path: Path) -> str:
    path = path.resolve()
    if path.is_file():
        parts = [p for p in path.parts if p not in ("annotations", path.name)]
        return f"{parts[-1]}_{path.stem}" if parts else path.stem
    return path.name
