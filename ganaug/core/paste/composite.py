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

import functools
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


def _jitter_rgba(
    rgba: np.ndarray, *, scale: float = 1.0, flip: bool = False, angle: float = 0.0
) -> np.ndarray:
    """Resize / mirror / rotate an RGBA crop in one OpenCV call (the canvas grows to fit).

    Shape:
        rgba: ``(h, w, C + 1)`` uint8, alpha last. Returns ``(h', w', C + 1)`` uint8.
    """
    h, w = rgba.shape[:2]
    if angle:
        # Mirror, scale and rotation folded into one affine warp: a single resampling.
        rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
        # The tolerance keeps cos(90°) ~ 1e-17 from adding a pixel.
        nw = max(int(np.ceil(h * sin + w * cos - 1e-6)), 1)
        nh = max(int(np.ceil(h * cos + w * sin - 1e-6)), 1)
        rot[0, 2] += nw / 2.0 - w / 2.0
        rot[1, 2] += nh / 2.0 - h / 2.0
        if flip:
            # x -> (w - 1) - x first, then the rotation.
            rot[:, 2] += rot[:, 0] * (w - 1)
            rot[:, 0] = -rot[:, 0]
        out = cv2.warpAffine(rgba, rot, (nw, nh), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    else:
        out = cv2.flip(rgba, 1) if flip else rgba
        if scale != 1.0:
            nw, nh = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            out = cv2.resize(out, (nw, nh), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]  # OpenCV drops a single channel
    return out


def _split_rgba(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image (h, w, C) uint8, mask (h, w) bool)``: alpha thresholded at half."""
    return np.ascontiguousarray(rgba[:, :, :-1]), rgba[:, :, -1] >= 128


def jitter_instance(
    inst: Instance, *, scale: float = 1.0, flip: bool = False, angle: float = 0.0
) -> Instance:
    """Return a resized / mirrored / rotated copy of ``inst`` (mask moves with the image).

    Image and mask are warped together as RGBA (bilinear); the mask is the warped alpha
    thresholded at 128.
    """
    if scale <= 0:
        raise ValueError(f"jitter_instance: scale must be > 0, got {scale}.")
    image, mask = _split_rgba(_jitter_rgba(inst.rgba(), scale=scale, flip=flip, angle=angle))
    return Instance(
        image=image, mask=mask, label=inst.label, source=inst.source,
        meta={k: v for k, v in inst.meta.items() if k != "_rgba"},
    )  # fmt: skip


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
    alpha = _feather(mask.view(np.uint8) * np.uint8(255), sigma, border=cv2.BORDER_REFLECT_101)
    return _blend_u8(foreground, background, alpha)


@functools.lru_cache(maxsize=8)
def _gauss_kernel(sigma: float) -> np.ndarray:
    ksize = int(2 * np.ceil(3 * sigma) + 1)
    return cv2.getGaussianKernel(ksize, sigma).astype(np.float32)


def _feather(mask_u8: np.ndarray, sigma: float, *, border: int) -> np.ndarray:
    """Gaussian-feathered alpha, inwards only.

    Shape:
        mask_u8: ``(h, w)`` uint8, 0 or 255. Returns ``(h, w)`` uint8 in ``[0, 255]``, 0
        outside the mask.
    """
    k = _gauss_kernel(float(sigma))
    soft = cv2.sepFilter2D(mask_u8, -1, k, k, borderType=border)
    # Feather only inwards so that no background-coloured halo of the source crop shows.
    return cv2.bitwise_and(soft, mask_u8)


def _blend_u8(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``fg * a + bg * (1 - a)`` in 8-bit arithmetic (OpenCV, rounding per term).

    Shape:
        foreground, background: ``(h, w, C)`` uint8; alpha: ``(h, w)`` uint8 (255 = fg).
        Returns ``(h, w, C)`` uint8.
    """
    a = cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB) if background.shape[2] == 3 else alpha
    fg = cv2.multiply(foreground, a, scale=1.0 / 255.0)
    bg = cv2.multiply(background, cv2.bitwise_not(a), scale=1.0 / 255.0)
    return cv2.add(fg, bg).reshape(background.shape)


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


def _bbox(mask: np.ndarray) -> np.ndarray | None:
    """Tight int ``[x1, y1, x2, y2]`` (exclusive ends) of a bool mask view, None if empty.

    OpenCV's ``boundingRect`` on the uint8 view: several times faster than numpy's
    ``any`` reductions on crops.
    """
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0:
        return None
    return np.array([x, y, x + w, y + h])


class _Objects:
    """Object masks as writable crops with origins, so that every update stays local.

    With full-image input masks the crop is the whole (copied) mask; box-only objects are
    filled box crops; pasted objects are their visible mask crops.
    """

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.crops: list[np.ndarray] = []  # (ch, cw) bool
        self.origins: list[tuple[int, int]] = []  # (x, y) of crop[0, 0]
        self.extent: list[np.ndarray | None] = []  # int [x1, y1, x2, y2] of the mask, lazy
        self.boxes: list[np.ndarray] = []
        self.labels: list[int] = []
        self.area: list[int | None] = []  # computed when first covered
        self.lost: list[int] = []
        self.pasted: list[bool] = []

    def add_inputs(self, crops, origins, boxes, labels, *, extents=None, areas=None):
        """The input objects, in bulk (one list operation per field, not per object)."""
        n = len(crops)
        self.crops += crops
        self.origins += origins
        self.extent += extents if extents is not None else [None] * n
        self.boxes += list(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        self.labels += [int(v) for v in np.asarray(labels).tolist()]
        self.area += areas if areas is not None else [None] * n
        self.lost += [0] * n
        self.pasted += [False] * n

    def add(self, crop, origin, box, label, *, pasted, extent=None, area=None):
        self.crops.append(crop)
        self.origins.append(origin)
        self.extent.append(extent)
        self.boxes.append(np.asarray(box, dtype=np.float32))
        self.labels.append(int(label))
        self.area.append(area)
        self.lost.append(0)
        self.pasted.append(pasted)

    def cover(self, sub: np.ndarray, x1: int, y1: int, *, stack: np.ndarray | None = None) -> None:
        """Remove the pixels of ``sub`` (a bool crop at ``(x1, y1)``) from every object.

        ``stack``: the ``(N, H, W)`` block holding object ``k``'s full mask at row ``k``
        (then the overlaps of all objects are counted in one pass).
        """
        x2, y2 = x1 + sub.shape[1], y1 + sub.shape[0]
        n = len(self.crops)
        if stack is not None:
            # A loop of OpenCV AND + count on uint8 views beats numpy (one count over axes
            # is slowest of all).
            block, sub8 = stack.view(np.uint8)[:n, y1:y2, x1:x2], sub.view(np.uint8)
            touched = []
            for k in range(n):
                lost = cv2.countNonZero(cv2.bitwise_and(block[k], sub8))
                if lost:
                    touched.append((k, lost))
        else:
            touched = []
            for k, crop in enumerate(self.crops):
                ox, oy = self.origins[k]
                ix1, iy1 = max(x1, ox), max(y1, oy)
                ix2, iy2 = min(x2, ox + crop.shape[1]), min(y2, oy + crop.shape[0])
                if ix2 <= ix1 or iy2 <= iy1:
                    continue
                mine = crop[iy1 - oy : iy2 - oy, ix1 - ox : ix2 - ox]
                lost = int(np.count_nonzero(mine & sub[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1]))
                if lost:
                    touched.append((k, lost))
        for k, lost in touched:
            crop = self.crops[k]
            ox, oy = self.origins[k]
            if self.area[k] is None:
                self.area[k] = cv2.countNonZero(crop.view(np.uint8))
            if self.extent[k] is None:
                self.extent[k] = self._find_extent(k)
            ix1, iy1 = max(x1, ox), max(y1, oy)
            ix2, iy2 = min(x2, ox + crop.shape[1]), min(y2, oy + crop.shape[0])
            crop[iy1 - oy : iy2 - oy, ix1 - ox : ix2 - ox] &= ~sub[
                iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1
            ]
            self.lost[k] += lost
            # The mask only shrinks: its new box lies inside the old extent.
            ex1, ey1, ex2, ey2 = (int(v) for v in self.extent[k])
            box = _bbox(crop[ey1 - oy : ey2 - oy, ex1 - ox : ex2 - ox])
            if box is None:
                self.extent[k] = np.array([ex1, ey1, ex1, ey1])
                self.boxes[k] = np.zeros(4, np.float32)
            else:
                self.extent[k] = np.array([ex1, ey1, ex1, ey1]) + box
                self.boxes[k] = self.extent[k].astype(np.float32)

    def _find_extent(self, k: int) -> np.ndarray:
        """Tight ``[x1, y1, x2, y2]`` of object ``k``'s mask, in image pixels."""
        crop, (ox, oy) = self.crops[k], self.origins[k]
        # The given box, a little enlarged, usually holds the whole mask: then the box
        # search runs on that window only (checked by pixel count, so always exact).
        b = self.boxes[k]
        wx1, wy1 = max(int(b[0]) - 2 - ox, 0), max(int(b[1]) - 2 - oy, 0)
        wx2, wy2 = int(np.ceil(b[2])) + 2 - ox, int(np.ceil(b[3])) + 2 - oy
        win = crop[wy1:wy2, wx1:wx2]
        if win.size and cv2.countNonZero(win.view(np.uint8)) == self.area[k]:
            return np.array([ox + wx1, oy + wy1, ox + wx1, oy + wy1]) + _bbox(win)
        return np.array([ox, oy, ox, oy]) + _bbox(crop)

    def keep(self, occlusion_thresh: float, min_visible_pixels: int) -> list[int]:
        """Indices of objects to keep: untouched ones always, covered ones if visible enough."""
        keep = []
        for k in range(len(self.crops)):
            area = self.area[k]
            if area is not None:
                visible = area - self.lost[k]
                if visible < min_visible_pixels or 1.0 - visible / max(area, 1) > occlusion_thresh:
                    logger.debug("Dropping object %d: %d of %d pixels visible.", k, visible, area)
                    continue
            keep.append(k)
        return keep


def _spare_mask_rows(masks, rows: int) -> np.ndarray | None:
    """``masks``' own block extended to ``rows`` rows, if ``masks`` heads a bigger block.

    ``masks`` must be the leading rows of a C-contiguous ``(M, H, W)`` bool array with
    ``M >= rows`` (as ``CocoDetection(mask_reserve=k)`` returns); else ``None``.
    """
    base = getattr(masks, "base", None)
    if not (
        isinstance(masks, np.ndarray)
        and isinstance(base, np.ndarray)
        and masks.dtype == bool
        and base.dtype == bool
        and base.ndim == 3
        and base.shape[1:] == masks.shape[1:]
        and base.shape[0] >= rows
        and base.flags.c_contiguous
        and base.flags.writeable
        and masks.flags.c_contiguous
        and masks.__array_interface__["data"][0] == base.__array_interface__["data"][0]
    ):
        return None
    return base[:rows]


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
    in_place: bool = False,
) -> tuple[np.ndarray, dict]:
    """Paste instances onto ``image`` and update ``target`` to match.

    Instances are pasted in order; later ones cover earlier ones (pasted or original).
    All per-paste work (warp, blend, mask and label-map updates, occlusion bookkeeping)
    runs inside the paste's box; the only full-image operations are one copy of the image
    and of the input masks, and ``in_place`` avoids both.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8 background. A greyscale background gets
            greyscale pastes; the output keeps the input's layout.
        target: annotation dict (see module doc). Not modified.
        instances: instances to paste (any size: parts outside the image are cut off, an
            instance larger than the image is shrunk to fit first).
        placements: one :class:`Placement` per instance.
        occlusion_thresh: an object covered beyond this share of its area is dropped.
        min_visible_pixels: a pasted object with fewer visible pixels is skipped, a
            covered object left with fewer is dropped (untouched objects are kept as
            they are).
        in_place: reuse the input arrays instead of copying them, for data pipelines
            that own a freshly decoded sample: the image is painted directly, and when
            ``target["masks"]`` is the leading rows of a larger ``(M, H, W)`` bool block
            with room for the pasted masks (``CocoDetection(mask_reserve=...)``), the
            pasted masks go into those rows. The inputs must not be used afterwards.

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
    canvas = as_hwc(image, what="background image")
    if not (in_place and canvas.flags.writeable and canvas.flags.c_contiguous):
        canvas = canvas.copy()
    height, width, channels = canvas.shape
    target = _empty_target(target, height, width)
    in_labels = target["labels"]
    n0 = len(in_labels)
    has_masks = "masks" in target
    if has_masks and len(target["masks"]) != n0:
        raise ValueError(
            f"paste_instances: target has {n0} labels but {len(target['masks'])} boxes/masks."
        )
    if not has_masks and "boxes" in target and len(target["boxes"]) != n0:
        raise ValueError(
            f"paste_instances: target has {n0} labels but {len(target['boxes'])} boxes/masks."
        )
    if not has_masks and "boxes" not in target and n0:
        raise ValueError(f"paste_instances: target has {n0} labels but 0 boxes/masks.")
    label_map = target.get("label_map")
    if label_map is not None:
        label_map = np.asarray(label_map).copy()
        if label_map.shape != (height, width):
            raise ValueError(
                f"paste_instances: label_map shape {label_map.shape} does not match image "
                f"{(height, width)}."
            )

    objs = _Objects(height, width)
    buf = None
    if has_masks:
        # One block for input and pasted masks: updated in place, returned without stacking.
        buf = _spare_mask_rows(target["masks"], n0 + len(instances)) if in_place else None
        if buf is None:
            buf = np.empty((n0 + len(instances), height, width), dtype=bool)
            buf[:n0] = target["masks"]
        buf[n0:] = False
    in_boxes = target.get("boxes")
    if has_masks:
        if in_boxes is None:
            in_boxes = [mask_to_box(m) for m in buf[:n0]]
            in_boxes = [np.zeros(4, np.float32) if b is None else b for b in in_boxes]
        objs.add_inputs(list(buf[:n0]), [(0, 0)] * n0, in_boxes, in_labels)
    elif n0:
        # Without masks an object is its filled box.
        crops, origins, extents = [], [], []
        for b in in_boxes:
            x1, y1 = max(int(np.floor(b[0])), 0), max(int(np.floor(b[1])), 0)
            x2, y2 = min(int(np.ceil(b[2])), width), min(int(np.ceil(b[3])), height)
            x2, y2 = max(x2, x1), max(y2, y1)
            crops.append(np.ones((y2 - y1, x2 - x1), dtype=bool))
            origins.append((x1, y1))
            extents.append(np.array([x1, y1, x2, y2]))
        objs.add_inputs(crops, origins, in_boxes, in_labels, extents=extents,
                        areas=[c.size for c in crops])  # fmt: skip

    for inst, pl in zip(instances, placements):
        rgba = _jitter_rgba(inst.rgba(), scale=pl.scale, flip=pl.flip, angle=pl.angle)
        ih, iw = rgba.shape[:2]
        if ih > height or iw > width:
            fit = min(height / ih, width / iw)
            logger.debug(
                "Instance %s (%dx%d) is larger than the background (%dx%d): shrinking by %.3f.",
                inst.source, iw, ih, width, height, fit,
            )  # fmt: skip
            rgba = _jitter_rgba(rgba, scale=fit)
            ih, iw = rgba.shape[:2]
        x1, y1 = max(pl.x, 0), max(pl.y, 0)
        x2, y2 = min(pl.x + iw, width), min(pl.y + ih, height)
        if x2 <= x1 or y2 <= y1:
            logger.debug("Instance %s placed outside the image: skipped.", inst.source)
            continue
        sx, sy = x1 - pl.x, y1 - pl.y
        cut = (slice(sy, sy + (y2 - y1)), slice(sx, sx + (x2 - x1)))
        # One 0/255 mask of the whole jittered object (alpha thresholded at half).
        _, mask_u8 = cv2.threshold(cv2.extractChannel(rgba, rgba.shape[2] - 1), 127, 255,
                                   cv2.THRESH_BINARY)  # fmt: skip
        sub_u8 = mask_u8[cut]
        n_vis = cv2.countNonZero(sub_u8)
        if n_vis < min_visible_pixels:
            logger.debug("Instance %s: too few visible pixels, skipped.", inst.source)
            continue
        if has_masks:
            k_new = len(objs.crops)  # the pasted object's row in buf
            sub = buf[k_new, y1:y2, x1:x2]
            np.greater(sub_u8, 0, out=sub)
        else:
            sub = sub_u8 > 0
        rgb = rgba[cut]
        if rgb.shape[2] == 4:
            src = cv2.cvtColor(rgb, cv2.COLOR_RGBA2RGB)
        else:
            src = np.ascontiguousarray(rgb[:, :, :-1])
        src = match_channels(src, channels)
        roi = canvas[y1:y2, x1:x2]
        if blend_mode == "alpha":
            done = cv2.copyTo(src, sub_u8, roi)
            if not np.shares_memory(done, roi):  # OpenCV wrote a new array
                roi[...] = done.reshape(roi.shape)
        elif blend_mode == "gaussian":
            # Feathered on the whole jittered object, then cut: no feathering where the
            # image border cuts the object.
            alpha = _feather(mask_u8, sigma, border=cv2.BORDER_CONSTANT)[cut]
            roi[...] = _blend_u8(src, roi, alpha)
        else:
            # seamlessClone needs a margin of background around the region.
            margin = int(np.ceil(3 * sigma)) + 2
            rx1, ry1 = max(x1 - margin, 0), max(y1 - margin, 0)
            rx2, ry2 = min(x2 + margin, width), min(y2 + margin, height)
            bg_roi = canvas[ry1:ry2, rx1:rx2]
            fg_roi = bg_roi.copy()
            fg_roi[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1] = src
            m_roi = np.zeros(bg_roi.shape[:2], dtype=bool)
            m_roi[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1] = sub
            canvas[ry1:ry2, rx1:rx2] = blend(bg_roi, fg_roi, m_roi, mode=blend_mode, sigma=sigma)

        objs.cover(sub, x1, y1, stack=buf)
        box = _bbox(sub) + np.array([x1, y1, x1, y1])
        if has_masks:
            objs.add(buf[k_new], (0, 0), box, inst.label, pasted=True, extent=box, area=n_vis)
        else:
            objs.add(sub.copy(), (x1, y1), box, inst.label, pasted=True, extent=box,
                     area=n_vis)  # fmt: skip
        if label_map is not None:
            label_map[y1:y2, x1:x2][sub] = inst.label

    keep = objs.keep(occlusion_thresh, min_visible_pixels)
    out = dict(target)
    out["labels"] = np.asarray([objs.labels[k] for k in keep], dtype=np.int64)
    out["boxes"] = np.asarray([objs.boxes[k] for k in keep], dtype=np.float32).reshape(-1, 4)
    if has_masks:
        if keep == list(range(len(keep))):
            out["masks"] = buf[: len(keep)]  # nothing dropped: no copy
        else:
            out["masks"] = buf[keep]
    out["pasted"] = np.asarray([objs.pasted[k] for k in keep], dtype=bool)
    out["source_index"] = np.asarray([k if k < n0 else -1 for k in keep], dtype=np.int64)
    out["changed"] = np.asarray([k < n0 and objs.lost[k] > 0 for k in keep], dtype=bool).reshape(-1)
    if label_map is not None:
        out["label_map"] = label_map
    if was_2d:
        canvas = canvas[:, :, 0]
    return canvas, out
