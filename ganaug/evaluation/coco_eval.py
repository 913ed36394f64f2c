"""COCO box evaluation with pycocotools: AP, AP50, AP75, APs/APm/APl, per-category AP.

Predictions come as one dict per image, in the evaluated image's original pixel frame:
``{"image_id": int, "boxes": (K, 4) x1y1x2y2, "scores": (K,), "labels": (K,)}`` where
``labels`` are contiguous 1-based indices into ``cat_ids``. Results can be written as
``per_class_metrics.json`` in the shape ``ganaug compare`` reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ganaug.atomic import write_text_atomic

__all__ = ["evaluate_coco_boxes", "write_per_class_metrics"]

logger = logging.getLogger(__name__)

_SUMMARY_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _quiet(fn, *args, **kwargs):
    # pycocotools prints its progress and summary; keep it out of stdout, in DEBUG.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    if buf.getvalue().strip():
        logger.debug("pycocotools: %s", buf.getvalue().strip())
    return out


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def evaluate_coco_boxes(
    predictions: list[dict],
    *,
    ann_file: str | os.PathLike | None = None,
    coco_gt=None,
    cat_ids: list[int],
    class_names: list[str] | None = None,
    image_ids: list[int] | None = None,
) -> dict:
    """Evaluate box predictions against COCO ground truth.

    Args:
        predictions: one dict per image (see the module docstring).
        ann_file / coco_gt: the ground truth, as a path or a loaded ``pycocotools.coco.COCO``.
        cat_ids: COCO category id of each contiguous label (label ``i + 1`` is ``cat_ids[i]``).
        class_names: names for the per-category results (default: the COCO names).
        image_ids: images to evaluate (default: those in ``predictions``); an image given
            here with no prediction counts as having detected nothing.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl": float in percent,
        "per_category_AP": {name: float}, "num_images": int}``. Categories with no ground
        truth among the evaluated images have no AP and are left out of
        ``per_category_AP``; a summary value COCO cannot compute (no object of that size) is
        ``nan``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if coco_gt is None:
        if ann_file is None:
            raise ValueError("evaluate_coco_boxes: give ann_file or coco_gt")
        if not Path(ann_file).is_file():
            raise FileNotFoundError(f"evaluate_coco_boxes: annotation file {ann_file} not found")
        coco_gt = _quiet(COCO, str(ann_file))
    if class_names is None:
        class_names = [coco_gt.cats[c]["name"] for c in cat_ids]
    if len(class_names) != len(cat_ids):
        raise ValueError(
            f"evaluate_coco_boxes: {len(class_names)} class names for {len(cat_ids)} cat_ids"
        )

    results = []
    for pred in predictions:
        for key in ("image_id", "boxes", "scores", "labels"):
            if key not in pred:
                raise KeyError(
                    f"evaluate_coco_boxes: prediction lacks {key!r}; expected keys "
                    f"image_id, boxes, scores, labels, got {sorted(pred)}"
                )
        boxes = _to_numpy(pred["boxes"]).reshape(-1, 4).astype(float)
        scores = _to_numpy(pred["scores"]).reshape(-1).astype(float)
        labels = _to_numpy(pred["labels"]).reshape(-1).astype(int)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"evaluate_coco_boxes: image {pred['image_id']}: {len(boxes)} boxes, "
                f"{len(scores)} scores, {len(labels)} labels"
            )
        if len(labels) and (labels.min() < 1 or labels.max() > len(cat_ids)):
            raise ValueError(
                f"evaluate_coco_boxes: labels must be in 1..{len(cat_ids)}, got "
                f"{labels.min()}..{labels.max()} for image {pred['image_id']}"
            )
        for box, score, label in zip(boxes, scores, labels):
            x1, y1, x2, y2 = box.tolist()
            results.append(
                {
                    "image_id": int(pred["image_id"]),
                    "category_id": int(cat_ids[label - 1]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    if image_ids is None:
        image_ids = sorted({int(p["image_id"]) for p in predictions})
    image_ids = [int(i) for i in image_ids]

    empty = {name: 0.0 for name in _SUMMARY_NAMES}
    if not results:
        # loadRes rejects an empty list: nothing detected means AP 0 wherever GT exists.
        logger.warning("evaluate_coco_boxes: no detections at all; every AP is 0")
        gt_cats = {a["category_id"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids))}
        per_cat = {n: 0.0 for c, n in zip(cat_ids, class_names) if c in gt_cats}
        return {**empty, "per_category_AP": per_cat, "num_images": len(image_ids)}

    coco_dt = _quiet(coco_gt.loadRes, results)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.imgIds = image_ids
    ev.params.catIds = list(cat_ids)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)

    stats = [float(s) for s in ev.stats[:6]]
    summary = {n: (100.0 * s if s >= 0 else float("nan")) for n, s in zip(_SUMMARY_NAMES, stats)}

    # precision: [iou thresholds, recall points, categories, area ranges, max dets];
    # area range 0 is "all", max dets index -1 is 100. -1 marks "no ground truth".
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_cat = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k]
        valid = p[p > -1]
        if valid.size:
            per_cat[name] = 100.0 * float(valid.mean())
    return {**summary, "per_category_AP": per_cat, "num_images": len(image_ids)}


def write_per_class_metrics(
    path: str | os.PathLike,
    results: dict,
    *,
    run: str,
    class_counts: dict[str, int] | None = None,
) -> Path:
    """Write ``results`` of :func:`evaluate_coco_boxes` as ``per_class_metrics.json``.

    ``path`` may be a folder (the file name is added) or a file path. Written atomically.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / "per_class_metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "task": "detection",
        "metric": "AP",
        "per_class": results["per_category_AP"],
        "summary": {
            ("mAP" if k == "AP" else k): (None if v != v else v)
            for k, v in results.items()
            if k in _SUMMARY_NAMES
        },
        "run": run,
    }
    if class_counts is not None:
        payload["class_counts"] = class_counts
    return write_text_atomic(path, json.dumps(payload, indent=2))
