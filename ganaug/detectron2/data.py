"""coco128 in detectron2's DatasetCatalog/MetadataCatalog, read from the ganaug data root.

Registered names:

* ``coco128``: all 128 images (the usual choice for this sample: train and evaluate on it).
* ``coco128_train`` / ``coco128_val``: a fixed 3:1 split by image id (every 4th image
  in id order goes to val), for a held-out figure.

Records are checked on load: boxes are clipped to the image, zero-area boxes are dropped
(each with a warning logged once per dataset), missing files raise an error naming them.
Images without annotations stay in the list; ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``
decides whether training skips them, as for any detectron2 dataset.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from ganaug.data_root import dataset_dir

__all__ = ["COCO128_SPLITS", "class_counts", "coco128_files", "load_coco128", "register_coco128"]

logger = logging.getLogger(__name__)

COCO128_SPLITS = ("coco128", "coco128_train", "coco128_val")
_JSON = Path("annotations") / "instances_train2017.json"
_IMAGES = Path("train2017")


def _sanitize(records: list[dict], dataset_name: str) -> list[dict]:
    clipped = dropped = 0
    for rec in records:
        w, h = rec["width"], rec["height"]
        kept = []
        for ann in rec.get("annotations", []):
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            x1, y1 = min(max(box[0], 0.0), w), min(max(box[1], 0.0), h)
            x2, y2 = min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)
            if (x1, y1, x2, y2) != tuple(box):
                clipped += 1
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                dropped += 1
                continue
            ann["bbox"], ann["bbox_mode"] = [x1, y1, x2, y2], BoxMode.XYXY_ABS
            kept.append(ann)
        rec["annotations"] = kept
    if clipped:
        logger.warning("%s: clipped %d boxes reaching outside their image", dataset_name, clipped)
    if dropped:
        logger.warning("%s: dropped %d boxes of zero area", dataset_name, dropped)
    return records


def coco128_files(root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(json_file, image_root)`` of coco128 under the data root (all splits share them).

    Not stored as ``json_file`` metadata of the splits: ``COCOEvaluator`` would take that
    file, with all 128 images, as the ground truth of a 32-image split.
    """
    base = dataset_dir("coco128", root)
    return base / _JSON, base / _IMAGES


def load_coco128(
    name: str = "coco128",
    root: str | os.PathLike | None = None,
    *,
    metadata_name: str | None = None,
) -> list[dict]:
    """detectron2 dataset dicts of coco128 (or one of its splits), boxes checked.

    Args:
        name: one of :data:`COCO128_SPLITS`.
        root: data root overriding ``GANAUG_DATA_ROOT`` (see :mod:`ganaug.data_root`).
        metadata_name: MetadataCatalog entry that receives the class names (default
            ``name``); detectron2 refuses to change them once set.
    """
    if name not in COCO128_SPLITS:
        raise ValueError(f"load_coco128: name must be one of {COCO128_SPLITS}, got {name!r}")
    base = dataset_dir("coco128", root)
    json_file, image_root = base / _JSON, base / _IMAGES
    for path in (json_file, image_root):
        if not path.exists():
            raise FileNotFoundError(f"coco128: expected {path} under the data root {base}")
    records = load_coco_json(str(json_file), str(image_root), dataset_name=metadata_name or name)
    records.sort(key=lambda r: r["image_id"])
    if name == "coco128_train":
        records = [r for i, r in enumerate(records) if i % 4 != 3]
    elif name == "coco128_val":
        records = [r for i, r in enumerate(records) if i % 4 == 3]
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"coco128: {len(missing)} images listed in {json_file} are missing, e.g. {missing[0]}"
        )
    return _sanitize(records, name)


def register_coco128(root: str | os.PathLike | None = None) -> list[str]:
    """Register :data:`COCO128_SPLITS` (idempotent); returns the names registered now.

    The data root is read when a dataset is first loaded, not at registration, so that
    importing the adapter works on machines without the sample data.
    """
    registered = []
    for name in COCO128_SPLITS:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda n=name: load_coco128(n, root))
        # thing_classes etc. are filled by load_coco_json on first load; the evaluator
        # converts the records to a COCO json of its own for the splits.
        MetadataCatalog.get(name).set(evaluator_type="coco")
        registered.append(name)
    return registered


def class_counts(dataset_names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Annotated instances per class name over the given registered datasets.

    Crowd regions are left out: detectron2's mapper drops them from training targets.
    """
    counts: Counter[str] = Counter()
    for name in dataset_names:
        records = DatasetCatalog.get(name)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        for rec in records:
            for ann in rec.get("annotations", []):
                if ann.get("iscrowd", 0):
                    continue
                cid = ann["category_id"]
                counts[classes[cid] if classes else str(cid)] += 1
    return dict(counts)
