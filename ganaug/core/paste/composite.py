"""Compositing: jitter an instance, blend it onto a background, keep annotations consistent.

Targets are plain dicts of numpy arrays, all optional except ``labels``::

    {"boxes":  (N, 4) float32 [x1, y1, x2, y2] in pixels (x2, y2 exclusive),
     "labels": (N,) int64,
     "masks":  (N, H, W) bool,
     "label_map": (H, W) int (semantic segmentation)}

Pasting an instance covers pixels of the objects already there: their masks lose those
pixels, their boxes shrink to the remaining mask, and objects whose covered share exceeds
``occlusion_thresh`` (or that lose every pixel) are dropped. Without masks, objects are
treated as filled boxes for this bookkeeping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .instances import Instance, as_hwc, mask_to_box, match_channels

logger = logging.getLogger(__name__)

BLEND_MODES = ("alpha", "gaussian", "poisson")

__all__ = ["BLEND_MODES", "Placement", "jitter_instance", "blend", "paste_instances"]


@dataclass
class Placement:
    """Where and how one instance goes: top-left corner and jitter.

    Attributes:
        x, y: top-left corner in the background after jitter (may be negative: the part
            outside the image is cut off).
        scale: resize factor applied to the instance.
        flip: mirror left-right.
        angle: rotation in degrees (counter-clockwise), the canvas grows to hold it.
    """

    x: int
    y: int
    scale: float = 1.0
    flip: bool = False
    angle: float = 0.0


def jitter_instance(
    inst: Instance, *, scale: float = 1.0, flip: bool = False, angle: float = 0.0
) -> Instance:
    """Return a resized / mirrored / rotated copy of ``inst`` (mask moves with the image)."""
    if scale <= 0:
        raise ValueError(f"jitter_instance: scale must be > 0, got {scale}.")
    image, mask = inst.image, inst.mask.view(np.uint8)
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    h, w = mask.shape
    if angle:
        # Scale and rotation in one warp: half the resampling work of resize + rotate.
        rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
        # The tolerance keeps cos(90°) ~ 1e-17 from adding a pixel.
        nw = max(int(np.ceil(h * sin + w * cos - 1e-6)), 1)
        nh = max(int(np.ceil(h * cos + w * sin - 1e-6)), 1)
        rot[0, 2] += nw / 2.0 - w / 2.0
        rot[1, 2] += nh / 2.0 - h / 2.0
        image = cv2.warpAffine(np.ascontiguousarray(image), rot, (nw, nh), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ascontiguousarray(mask), rot, (nw, nh), flags=cv2.INTER_NEAREST)
    elif scale != 1.0:
        nw, nh = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=interp)
        mask = cv2.resize(np.ascontiguousarray(mask), (nw, nh), interpolation=cv2.INTER_NEAREST)
    if image.ndim == 2:
        image = image[:, :, None]  # OpenCV drops a single channel
    return Instance(
        image=np.ascontiguousarray(image),
        mask=np.ascontiguousarray(mask).view(bool),
        label=inst.label,
        source=inst.source,
        meta=dict(inst.meta),
    )


def blend(
    background: np.ndarray,
    foreground: np.ndarray,
    mask: np.ndarray,
    *,
    mode: str = "alpha",
    sigma: float = 1.5,
) -> np.ndarray:
    """Blend a same-size foreground into a background where ``mask`` is set.

    Args:
        background, foreground: ``(H, W, C)`` uint8, same shape.
        mask: ``(H, W)`` bool.
        mode: ``"alpha"`` (hard cut), ``"gaussian"`` (mask edge feathered by a Gaussian of
            ``sigma`` pixels) or ``"poisson"`` (OpenCV ``seamlessClone``, gradient-domain;
            colour channels only: greyscale is cloned as 3 channels and converted back).

    Returns:
        ``(H, W, C)`` uint8 composite (a new array).
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"blend: mode must be one of {BLEND_MODES}, got {mode!r}.")
    if background.shape != foreground.shape or mask.shape != background.shape[:2]:
        raise ValueError(
            f"blend: background {background.shape}, foreground {foreground.shape} and mask "
            f"{mask.shape} must agree in size."
        )
    if not mask.any():
        return background.copy()
    if mode == "poisson":
        out = _poisson(background, foreground, mask)
        if out is not None:
            return out
        mode = "gaussian"  # region touches the border: seamlessClone cannot take it
    if mode == "alpha":
        out = background.copy()
        np.copyto(out, foreground, where=mask[:, :, None])
        return out
    alpha = mask.astype(np.float32)
    ksize = int(2 * np.ceil(3 * sigma) + 1)
    alpha = cv2.GaussianBlur(alpha, (ksize, ksize), sigma)
    # Feather only inwards so that no background-coloured halo of the source crop shows.
    alpha *= mask
    out = cv2.blendLinear(foreground, background, alpha, 1.0 - alpha)
    return out.reshape(background.shape)


def _poisson(background, foreground, mask):
    h, w = mask.shape
    m = mask.astype(np.uint8) * 255
    # seamlessClone needs the region strictly inside the destination.
    m[0, :] = m[-1, :] = 0
    m[:, 0] = m[:, -1] = 0
    if not m.any():
        return None
    x, y, bw, bh = cv2.boundingRect(m)
    if x < 1 or y < 1 or x + bw > w - 1 or y + bh > h - 1:
        return None
    grey = background.shape[2] == 1
    bg = np.repeat(background, 3, axis=2) if grey else background
    fg = np.repeat(foreground, 3, axis=2) if grey else foreground
    center = (x + bw // 2, y + bh // 2)
    try:
        out = cv2.seamlessClone(
            np.ascontiguousarray(fg), np.ascontiguousarray(bg), m, center, cv2.NORMAL_CLONE
        )
    except cv2.error as err:
        logger.debug("seamlessClone failed (%s); falling back to gaussian blending.", err)
        return None
    if grey:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None]
    return out


def _empty_target(target: dict, height: int, width: int) -> dict:
    out = dict(target)
    labels = np.asarray(out.get("labels", np.zeros((0,), np.int64)), dtype=np.int64)
    out["labels"] = labels
    if "boxes" in out:
        out["boxes"] = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4)
    if "masks" in out:
        masks = np.asarray(out["masks"], dtype=bool).reshape(-1, height, width)
        out["masks"] = masks
    return out


def paste_instances(
    image: np.ndarray,
    target: dict,
    instances: list[Instance],
    placements: list[Placement],
    *,
    blend_mode: str = "alpha",
    sigma: float = 1.5,
    occlusion_thresh: float = 0.7,
    min_visible_pixels: int = 4,
) -> tuple[np.ndarray, dict]:
    """Paste instances onto ``image`` and update ``target`` to match.

    Instances are pasted in order; later ones cover earlier ones (pasted or original).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8 background. A greyscale background gets
            greyscale pastes; the output keeps the input's layout.
        target: annotation dict (see module doc). Not modified.
        instances: instances to paste (any size: parts outside the image are cut off, an
            instance larger than the image is shrunk to fit first).
        placements: one :class:`Placement` per instance.
        occlusion_thresh: an object covered beyond this share of its area is dropped.
        min_visible_pixels: a pasted or existing object left with fewer visible pixels is
            dropped.

    Returns:
        ``(image, target)``: new arrays. The target gains ``"pasted"`` ``(N,)`` bool marking
        objects added here and ``"source_index"`` ``(N,)`` int64, each kept object's index
        in the input target (-1 for pasted ones); ``"changed"`` ``(N,)`` bool marks kept
        input objects that lost pixels. A pasted object's box always equals its mask's box.
    """
    if len(instances) != len(placements):
        raise ValueError(
            f"paste_instances: {len(instances)} instances but {len(placements)} placements."
        )
    was_2d = np.asarray(image).ndim == 2
    canvas = as_hwc(image, what="background image").copy()
    height, width, channels = canvas.shape
    target = _empty_target(target, height, width)
    labels = list(target["labels"])
    n0 = len(labels)
    has_masks = "masks" in target
    if has_masks:
        masks = list(target["masks"])
    elif "boxes" in target:
        masks = [_box_mask(b, height, width) for b in target["boxes"]]
    else:
        masks = []
    if len(masks) != n0:
        raise ValueError(f"paste_instances: target has {n0} labels but {len(masks)} boxes/masks.")
    boxes = [np.asarray(b, dtype=np.float32) for b in target.get("boxes", [])]
    if not boxes:
        boxes = [mask_to_box(m) if m.any() else np.zeros(4, np.float32) for m in masks]
    areas = [max(int(np.count_nonzero(m)), 1) for m in masks]
    visible = list(areas)
    pasted = [False] * n0
    changed = [False] * n0
    label_map = target.get("label_map")
    if label_map is not None:
        label_map = np.asarray(label_map).copy()
        if label_map.shape != (height, width):
            raise ValueError(
                f"paste_instances: label_map shape {label_map.shape} does not match image "
                f"{(height, width)}."
            )

    for inst, pl in zip(instances, placements):
        inst = jitter_instance(inst, scale=pl.scale, flip=pl.flip, angle=pl.angle)
        ih, iw = inst.size
        if ih > height or iw > width:
            fit = min(height / ih, width / iw)
            logger.debug(
                "Instance %s (%dx%d) is larger than the background (%dx%d): shrinking by %.3f.",
                inst.source, iw, ih, width, height, fit,
            )  # fmt: skip
            inst = jitter_instance(inst, scale=fit)
            ih, iw = inst.size
        x1, y1 = max(pl.x, 0), max(pl.y, 0)
        x2, y2 = min(pl.x + iw, width), min(pl.y + ih, height)
        if x2 <= x1 or y2 <= y1:
            logger.debug("Instance %s placed outside the image: skipped.", inst.source)
            continue
        sx, sy = x1 - pl.x, y1 - pl.y
        sub = inst.mask[sy : sy + (y2 - y1), sx : sx + (x2 - x1)]
        if int(np.count_nonzero(sub)) < min_visible_pixels:
            logger.debug("Instance %s: too few visible pixels, skipped.", inst.source)
            continue
        full_mask = np.zeros((height, width), dtype=bool)
        full_mask[y1:y2, x1:x2] = sub
        # Blend inside a margin around the paste only: same result, far less work.
        margin = int(np.ceil(3 * sigma)) + 2
        rx1, ry1 = max(x1 - margin, 0), max(y1 - margin, 0)
        rx2, ry2 = min(x2 + margin, width), min(y2 + margin, height)
        bg_roi = canvas[ry1:ry2, rx1:rx2]
        fg_roi = bg_roi.copy()
        src = match_channels(inst.image, channels)
        fg_roi[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1] = src[
            sy : sy + (y2 - y1), sx : sx + (x2 - x1)
        ]
        canvas[ry1:ry2, rx1:rx2] = blend(
            bg_roi, fg_roi, full_mask[ry1:ry2, rx1:rx2], mode=blend_mode, sigma=sigma
        )

        for k in range(len(masks)):
            # Work inside the paste's box only: masks are full-size, pastes are small.
            overlap = masks[k][y1:y2, x1:x2] & sub
            lost = int(np.count_nonzero(overlap))
            if not lost:
                continue
            masks[k] = masks[k].copy()
            masks[k][y1:y2, x1:x2] &= ~sub
            visible[k] -= lost
            changed[k] = True
            box = mask_to_box(masks[k])
            boxes[k] = box if box is not None else np.zeros(4, np.float32)
        masks.append(full_mask)
        boxes.append(mask_to_box(sub) + np.array([x1, y1, x1, y1], dtype=np.float32))
        labels.append(int(inst.label))
        areas.append(int(np.count_nonzero(sub)))
        visible.append(areas[-1])
        pasted.append(True)
        changed.append(False)
        if label_map is not None:
            label_map[full_mask] = inst.label

    keep = []
    for k in range(len(masks)):
        if visible[k] < min_visible_pixels or 1.0 - visible[k] / areas[k] > occlusion_thresh:
            logger.debug("Dropping object %d: %d of %d pixels visible.", k, visible[k], areas[k])
            continue
        keep.append(k)

    out = dict(target)
    out["labels"] = np.asarray([labels[k] for k in keep], dtype=np.int64)
    out["boxes"] = np.asarray([boxes[k] for k in keep], dtype=np.float32).reshape(-1, 4)
    if has_masks:
        out["masks"] = np.asarray([masks[k] for k in keep], dtype=bool).reshape(-1, height, width)
    out["pasted"] = np.asarray([pasted[k] for k in keep], dtype=bool)
    out["source_index"] = np.asarray([k if k < n0 else -1 for k in keep], dtype=np.int64)
    out["changed"] = np.asarray([changed[k] and k < n0 for k in keep], dtype=bool)
    if label_map is not None:
        out["label_map"] = label_map
    if was_2d:
        canvas = canvas[:, :, 0]
    return canvas, out


def _box_mask(box, height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=bool)
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    if x2 > x1 and y2 > y1:
        m[y1:y2, x1:x2] = True
    return m
