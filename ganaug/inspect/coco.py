"""Statistics of a COCO instances file (detection / instance segmentation).

One pass over the annotation list builds flat arrays; everything after that is
vectorised NumPy, which is what keeps an 800k-box file within seconds (most of the time
goes to ``json.load`` itself).
"""

from __future__ import annotations

import json
import logging
from operator import itemgetter
from pathlib import Path

import numpy as np

from ganaug.inspect._common import (
    InspectError,
    ScaleAccumulator,
    examples,
    finite_or_none,
    imbalance_ratio,
)

logger = logging.getLogger(__name__)

# IoU matrix entries computed at once (a few float64 temporaries of this many each).
_PAIR_BUDGET = 1_000_000
# check_images="auto": open every image header up to this many images, else only stat them.
HEADER_CHECK_LIMIT = 5000


def _parse(raw: bytes):
    """Parse JSON bytes with orjson when installed (several times faster on COCO-scale
    files), else the standard library. orjson refuses what json accepts (NaN), and its
    errors carry less context, so any orjson failure is re-parsed by json to decide."""
    try:
        import orjson
    except ImportError:
        return json.loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def load_coco_json(path: str | Path) -> dict:
    """Read a COCO JSON file, raising :class:`InspectError` naming the file on any problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = _parse(raw)
    except FileNotFoundError as err:
        raise InspectError(f"{path}: annotation file does not exist") from err
    except json.JSONDecodeError as err:
        raise InspectError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); "
            f"the file may be truncated or corrupt"
        ) from err
    except (UnicodeDecodeError, OSError) as err:
        raise InspectError(f"{path}: cannot be read as JSON text: {err}") from err
    if not isinstance(data, dict):
        raise InspectError(
            f"{path}: expected a COCO JSON object with 'images', 'annotations' and "
            f"'categories', got a top-level {type(data).__name__}"
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise InspectError(
            f"{path}: not a COCO instances file, missing key(s) {missing} "
            f"(found {sorted(data)[:10]})"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise InspectError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _annotation_arrays(anns: list, path: Path) -> dict[str, np.ndarray]:
    """Flat arrays of the fields the statistics need.

    Shape:
        image_id, category_id, iscrowd: ``(N,)`` int64; area: ``(N,)`` float64 (NaN when
        absent); bbox: ``(N, 4)`` float64 as ``x, y, w, h``.
    """
    n = len(anns)
    try:
        image_id = np.fromiter(map(itemgetter("image_id"), anns), dtype=np.int64, count=n)
        category_id = np.fromiter(map(itemgetter("category_id"), anns), dtype=np.int64, count=n)
        iscrowd = _column(anns, "iscrowd", np.int64, 0)
        area = _column(anns, "area", np.float64, np.nan)
        bbox = np.array(list(map(itemgetter("bbox"), anns)), dtype=np.float64).reshape(n, 4)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        # Slow path only to say which annotation is malformed.
        for i, a in enumerate(anns):
            problem = _annotation_problem(a)
            if problem:
                raise InspectError(f"{path}: annotations[{i}] {problem}") from err
        raise InspectError(f"{path}: malformed annotations: {err}") from err
    return {
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": iscrowd,
        "area": area,
        "bbox": bbox,
    }


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a plain sort is faster than ``np.unique`` on large int arrays."""
    s = np.sort(values)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _column(anns: list, key: str, dtype, default) -> np.ndarray:
    # map(itemgetter) runs in C; the generator with .get only when some key is missing.
    try:
        return np.fromiter(map(itemgetter(key), anns), dtype=dtype, count=len(anns))
    except KeyError:
        return np.fromiter((a.get(key, default) for a in anns), dtype=dtype, count=len(anns))


def _annotation_problem(a) -> str | None:
    if not isinstance(a, dict):
        return f"is a {type(a).__name__}, expected an object"
    for key in ("image_id", "category_id", "bbox"):
        if key not in a:
            return f"has no '{key}' (keys: {sorted(a)})"
    box = a["bbox"]
    if not isinstance(box, list | tuple) or len(box) != 4:
        return f"has bbox {box!r}, expected [x, y, w, h]"
    try:
        [float(v) for v in box]
        int(a["image_id"]), int(a["category_id"]), float(a.get("area", 0.0))
    except (TypeError, ValueError):
        return "has a non-numeric image_id, category_id, area or bbox value"
    return None


def box_iou_pairs(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two box arrays.

    Shape:
        boxes_a, boxes_b: ``(P, 4)`` as ``x, y, w, h``. Returns ``(P,)``.
    """
    ax2 = boxes_a[:, 0] + boxes_a[:, 2]
    ay2 = boxes_a[:, 1] + boxes_a[:, 3]
    bx2 = boxes_b[:, 0] + boxes_b[:, 2]
    by2 = boxes_b[:, 1] + boxes_b[:, 3]
    iw = np.minimum(ax2, bx2) - np.maximum(boxes_a[:, 0], boxes_b[:, 0])
    ih = np.minimum(ay2, by2) - np.maximum(boxes_a[:, 1], boxes_b[:, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = boxes_a[:, 2] * boxes_a[:, 3] + boxes_b[:, 2] * boxes_b[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _iou_matrix(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """IoU of every row box with every column box.

    Shape:
        rows: ``(..., R, 4)``, cols: ``(..., C, 4)`` as ``x, y, w, h``. Returns ``(..., R, C)``.
    """
    r, c = rows[..., :, None, :], cols[..., None, :, :]
    iw = np.minimum(r[..., 0] + r[..., 2], c[..., 0] + c[..., 2]) - np.maximum(r[..., 0], c[..., 0])
    ih = np.minimum(r[..., 1] + r[..., 3], c[..., 1] + c[..., 3]) - np.maximum(r[..., 1], c[..., 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = r[..., 2] * r[..., 3] + c[..., 2] * c[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def max_overlap_per_instance(
    *, image_index: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each box, the largest IoU with another box of the same image.

    Images are grouped by their number of boxes ``n``; all images with the same ``n`` get
    one dense ``(G, n, n)`` IoU computation, chunked to bound memory (an image with more
    boxes than one chunk holds is done in row blocks). No Python loop over images and no
    scattered per-pair updates.

    Shape:
        image_index: ``(N,)`` ints; boxes: ``(N, 4)`` as ``x, y, w, h``.
        Returns ``max_iou (N,)`` and the overlapping pairs ``(P,)``, ``(P,)`` (indices
        into the inputs, box IoU > 0, each pair once).
    """
    n_total = len(image_index)
    max_iou = np.zeros(n_total, dtype=np.float64)
    empty = np.zeros(0, np.int64)
    if n_total < 2:
        return max_iou, empty, empty
    order = np.argsort(image_index, kind="stable")
    sorted_img = image_index[order]
    start = np.flatnonzero(np.r_[True, sorted_img[1:] != sorted_img[:-1]])
    size = np.diff(np.r_[start, n_total])
    pair_i, pair_j = [], []
    for n in np.unique(size[size >= 2]).tolist():
        starts = start[size == n]
        if n * n <= _PAIR_BUDGET:
            per_chunk = _PAIR_BUDGET // (n * n)
            blocks = [
                (order[starts[c0 : c0 + per_chunk, None] + np.arange(n)], 0, n)
                for c0 in range(0, len(starts), per_chunk)
            ]
        else:
            step = max(1, _PAIR_BUDGET // n)
            blocks = [
                (order[s + np.arange(n)][None], r0, min(r0 + step, n))
                for s in starts.tolist()
                for r0 in range(0, n, step)
            ]
        for idx, r0, r1 in blocks:  # idx: (G, n) instance indices, rows r0:r1
            b = boxes[idx]
            iou = _iou_matrix(b[:, r0:r1], b)  # (G, r1 - r0, n)
            rows = np.arange(r0, r1)
            iou[:, rows - r0, rows] = 0.0
            max_iou[idx[:, r0:r1]] = iou.max(axis=2)
            g, a, c = np.nonzero(iou > 0)
            a = a + r0
            keep = a < c
            pair_i.append(idx[g[keep], a[keep]])
            pair_j.append(idx[g[keep], c[keep]])
    if pair_i:
        return max_iou, np.concatenate(pair_i), np.concatenate(pair_j)
    return max_iou, empty, empty


def _mask_overlap(
    anns: list,
    images: dict,
    sel: np.ndarray,
    pair_i: np.ndarray,
    pair_j: np.ndarray,
    max_pairs: int,
) -> tuple[np.ndarray, int]:
    """Largest mask IoU with another instance, for instances in box-overlapping pairs.

    Masks of different instances are mostly drawn disjoint in COCO, so a mask overlap near
    zero with a high box IoU means "occluded", while both high means duplicate or
    see-through labelling.
    """
    from pycocotools import mask as mask_utils

    out = np.full(len(sel), np.nan)
    if len(pair_i) == 0:
        return out, 0
    if len(pair_i) > max_pairs:
        logger.info("mask overlap: checking the first %d of %d pairs", max_pairs, len(pair_i))
        pair_i, pair_j = pair_i[:max_pairs], pair_j[:max_pairs]
    rle_cache: dict[int, object] = {}

    def rle(k: int):
        if k not in rle_cache:
            a = anns[sel[k]]
            seg = a.get("segmentation")
            img = images.get(a["image_id"])
            if not seg or img is None or not img.get("height") or not img.get("width"):
                rle_cache[k] = None
            else:
                h, w = int(img["height"]), int(img["width"])
                try:
                    if isinstance(seg, list):
                        r = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                    elif isinstance(seg.get("counts"), list):
                        r = mask_utils.frPyObjects(seg, h, w)
                    else:
                        r = seg
                    rle_cache[k] = r
                except (TypeError, ValueError, AttributeError, IndexError):
                    rle_cache[k] = None
        return rle_cache[k]

    checked = 0
    for i, j in zip(pair_i.tolist(), pair_j.tolist()):
        ri, rj = rle(i), rle(j)
        if ri is None or rj is None:
            continue
        v = float(mask_utils.iou([ri], [rj], [0])[0, 0])
        checked += 1
        out[i] = v if np.isnan(out[i]) else max(out[i], v)
        out[j] = v if np.isnan(out[j]) else max(out[j], v)
    return out, checked


def inspect_coco(
    json_path: str | Path,
    *,
    images_dir: str | Path | None = None,
    occlusion_iou: float = 0.3,
    mask_overlap: bool = True,
    max_mask_pairs: int = 20_000,
    check_images: str = "auto",
) -> dict:
    """Statistics of a COCO instances file.

    Args:
        json_path: the COCO JSON file.
        images_dir: folder of the image files; when given, missing or unreadable images
            are reported (``check_images``: ``"none"``, ``"exists"``, ``"header"``, or
            ``"auto"``: header up to ``HEADER_CHECK_LIMIT`` images, existence beyond).
        occlusion_iou: an instance counts as occluded when its box has IoU at least this
            with another non-crowd box of the same image.
        mask_overlap: also compute mask IoU for box-overlapping pairs (needs masks).
        max_mask_pairs: bound on mask IoU computations.

    Returns:
        Report dict: ``format``, ``task``, ``classes``, ``count_unit`` ("instances"),
        ``class_counts``, ``imbalance_ratio``, ``absent_classes``, ``num_images``,
        ``per_class`` (count, share, images, image_share, small/medium/large, small_share,
        scale_mean, scale_cv, occluded_share, mean_max_iou, mask_overlap_mean),
        ``scale`` (overall buckets and CV), ``occlusion`` and ``problems``.
    """
    json_path = Path(json_path)
    data = load_coco_json(json_path)
    cats, images, anns = data["categories"], data["images"], data["annotations"]

    try:
        cat_ids = np.array([int(c["id"]) for c in cats], dtype=np.int64)
        names = [str(c.get("name", c["id"])) for c in cats]
        img_ids = np.array([int(im["id"]) for im in images], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise InspectError(
            f"{json_path}: every category and image needs an integer 'id' ({err!r})"
        ) from err
    if len(set(names)) != len(names):
        # Duplicate names would merge classes in the report; keep them apart by id.
        names = [f"{n} ({i})" for n, i in zip(names, cat_ids.tolist())]
    k = len(names)
    arr = _annotation_arrays(anns, json_path)
    n_ann = len(anns)

    cat_order = np.argsort(cat_ids)
    pos = np.searchsorted(cat_ids[cat_order], arr["category_id"]).clip(0, max(k - 1, 0))
    known_cat = cat_ids[cat_order][pos] == arr["category_id"] if k else np.zeros(n_ann, bool)
    cls = np.where(known_cat, cat_order[pos] if k else 0, -1)

    img_sorted = np.sort(img_ids)
    ipos = np.searchsorted(img_sorted, arr["image_id"]).clip(0, max(len(img_sorted) - 1, 0))
    known_img = img_sorted[ipos] == arr["image_id"] if len(img_sorted) else np.zeros(n_ann, bool)

    w, h = arr["bbox"][:, 2], arr["bbox"][:, 3]
    degenerate = ~((w > 0) & (h > 0))
    crowd = arr["iscrowd"] != 0
    area = np.where(np.isnan(arr["area"]), np.clip(w, 0, None) * np.clip(h, 0, None), arr["area"])
    valid = known_cat & known_img & ~crowd
    counted = valid & ~degenerate

    counts = np.bincount(cls[valid], minlength=k)
    pair_key = _distinct(arr["image_id"][valid] * max(k, 1) + cls[valid])
    presence = np.bincount(pair_key % max(k, 1), minlength=k) if k else counts
    scale = ScaleAccumulator(num_classes=k)
    scale.add(classes=cls[counted], areas=area[counted])

    sel = np.flatnonzero(counted)
    max_iou, pair_i, pair_j = max_overlap_per_instance(
        image_index=arr["image_id"][sel], boxes=arr["bbox"][sel]
    )
    sel_cls = cls[sel]
    occluded = np.bincount(sel_cls, weights=(max_iou >= occlusion_iou), minlength=k)
    iou_sum = np.bincount(sel_cls, weights=max_iou, minlength=k)
    n_sel = np.bincount(sel_cls, minlength=k)
    mask_mean = np.full(k, np.nan)
    mask_pairs = 0
    has_masks = any(a.get("segmentation") for a in anns[:1000] if isinstance(a, dict))
    if mask_overlap and has_masks and len(pair_i):
        by_id = {im["id"]: im for im in images}
        mo, mask_pairs = _mask_overlap(anns, by_id, sel, pair_i, pair_j, max_mask_pairs)
        ok = ~np.isnan(mo)
        n_mo = np.bincount(sel_cls[ok], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            mask_mean = np.bincount(sel_cls[ok], weights=mo[ok], minlength=k) / n_mo

    n_images = len(images)
    per_class = {}
    total = int(counts.sum())
    for c, name in enumerate(names):
        entry = {
            "count": int(counts[c]),
            "share": float(counts[c] / total) if total else 0.0,
            "images": int(presence[c]),
            "image_share": float(presence[c] / n_images) if n_images else 0.0,
        }
        entry.update(scale.per_class(c))
        if n_sel[c]:
            entry["occluded_share"] = float(occluded[c] / n_sel[c])
            entry["mean_max_iou"] = float(iou_sum[c] / n_sel[c])
        entry["mask_overlap_mean"] = finite_or_none(mask_mean[c])
        per_class[name] = entry

    has_ann = np.isin(img_ids, _distinct(arr["image_id"][known_img]))
    no_ann = [images[i] for i in np.flatnonzero(~has_ann).tolist()]
    unknown_vals, unknown_n = np.unique(arr["category_id"][~known_cat], return_counts=True)
    problems = {
        "images_without_annotations": {
            "count": len(no_ann),
            "examples": examples(str(im.get("file_name", im["id"])) for im in no_ann),
        },
        "labels_outside_classes": {
            "count": int((~known_cat).sum()),
            "values": {str(v): int(c) for v, c in zip(unknown_vals.tolist(), unknown_n)},
        },
        "annotations_without_image": {
            "count": int((~known_img).sum()),
            "examples": examples(np.unique(arr["image_id"][~known_img]).tolist()),
        },
        "degenerate_boxes": {
            "count": int((degenerate & known_cat).sum()),
            "unit": "annotation ids",
            "examples": [
                anns[i].get("id", i) for i in examples(np.flatnonzero(degenerate & known_cat))
            ],
        },
        "duplicate_image_ids": {
            "count": int((np.diff(img_sorted) == 0).sum()),
            "examples": examples(np.unique(img_sorted[1:][np.diff(img_sorted) == 0]).tolist()),
        },
        "crowd_annotations": int(crowd.sum()),
        "unreadable_files": _check_image_files(images, images_dir, check_images),
    }

    report = {
        "format": "coco",
        "task": "detection",
        "source": str(json_path),
        "images_dir": str(images_dir) if images_dir else None,
        "classes": names,
        "count_unit": "instances",
        "num_images": n_images,
        "num_annotations": n_ann,
        "class_counts": {n: int(c) for n, c in zip(names, counts)},
        "imbalance_ratio": imbalance_ratio(counts),
        "absent_classes": [n for n, c in zip(names, counts) if c == 0],
        "per_class": per_class,
        "scale": scale.overall(),
        "occlusion": {
            "iou_threshold": occlusion_iou,
            "occluded_share": float((max_iou >= occlusion_iou).mean()) if len(sel) else 0.0,
            "mean_max_iou": float(max_iou.mean()) if len(sel) else 0.0,
            "overlapping_pairs": int(len(pair_i)),
            "mask_pairs_checked": mask_pairs,
        },
        "problems": problems,
    }
    return report


def _check_image_files(images: list, images_dir, mode: str) -> dict:
    """Missing or unreadable image files (reported, never fatal)."""
    out = {"count": 0, "checked": 0, "mode": mode, "examples": []}
    if images_dir is None or mode == "none":
        out["mode"] = "none"
        return out
    if mode == "auto":
        # Opening 100k+ headers costs minutes on network disks; existence is cheap.
        mode = "header" if len(images) <= HEADER_CHECK_LIMIT else "exists"
        logger.info("checking %d image files: %s", len(images), mode)
        out["mode"] = mode
    if mode not in ("exists", "header"):
        raise ValueError(f"check_images must be 'none', 'exists', 'header' or 'auto', got {mode!r}")
    from PIL import Image, UnidentifiedImageError

    root = Path(images_dir)
    for im in images:
        name = im.get("file_name")
        if not name:
            continue
        path = root / name
        out["checked"] += 1
        error = None
        if not path.is_file():
            error = "file does not exist"
        elif mode == "header":
            try:
                with Image.open(path) as img:
                    size = img.size
                if im.get("width") and im.get("height") and size != (im["width"], im["height"]):
                    error = (
                        f"size {size[0]}x{size[1]} differs from the JSON's "
                        f"{im['width']}x{im['height']}"
                    )
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                error = f"cannot be read as an image: {err}"
        if error:
            out["count"] += 1
            if len(out["examples"]) < 20:
                out["examples"].append({"file": str(path), "error": error})
            logger.debug("%s: %s", path, error)
    return out
