"""Label-map rebalancing by recombining rare-class segments (after S. Liu et al., 2018).

Segments (connected components) of under-represented classes are cut from real label maps
and pasted into other ("base") maps until chosen classes reach a target share of the
labelled pixels. Placement is kept plausible:

- vertical position and scale: a pasted segment keeps the bottom-row position of a real
  segment of its class (with a small jitter), and its size is rescaled by the class's
  height-versus-position line fitted on all its segments (objects lower in a street scene
  are closer, so larger);
- support: a class may need to stand on given classes (pedestrians on road or pavement):
  most of the segment's bottom pixels must land on those classes in the base map;
- occlusion: pasted pixels only replace classes the segment may occlude; other pixels of
  the base map stay in front. A placement covering too much of them is rejected.

Everything is numpy on ``(H, W)`` uint8 label maps and seeded by one ``numpy`` generator.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ganaug.datasets import camvid

logger = logging.getLogger(__name__)

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_IGNORE_INDEX",
    "CAMVID_PALETTE",
    "CAMVID_RULES",
    "colorize",
    "PlacementRule",
    "Segment",
    "RebalanceResult",
    "load_label_map",
    "load_label_maps",
    "class_pixel_counts",
    "extract_segments",
    "rarest_target",
    "rebalance",
    "distribution_table",
    "plot_distribution",
]

CAMVID_CLASSES = camvid.CLASSES
CAMVID_IGNORE_INDEX = camvid.VOID
CAMVID_PALETTE = camvid.PALETTE


@dataclass(frozen=True)
class PlacementRule:
    """Where a class may be pasted.

    Attributes:
        occlude: class ids the pasted pixels may replace; other pixels stay in front.
        support: class ids the segment must stand on (its bottom pixels), or None for no
            ground contact needed (e.g. signs).
        min_support: share of bottom pixels that must lie on ``support``.
        max_hidden: largest share of the segment that may stay hidden behind
            non-occludable pixels before the placement is rejected.
    """

    occlude: tuple[int, ...]
    support: tuple[int, ...] | None = None
    min_support: float = 0.6
    max_hidden: float = 0.3


def _ids(names: Sequence[str]) -> tuple[int, ...]:
    return tuple(CAMVID_CLASSES.index(n) for n in names)


_BACKGROUND = ("Sky", "Building", "Road", "Pavement", "Tree", "Fence")
# Street-scene common sense: people and bikes stand on road or pavement, cars on road,
# poles and fences on pavement/road; signs hang in front of sky, buildings, trees or poles.
CAMVID_RULES: dict[int, PlacementRule] = {
    CAMVID_CLASSES.index("Pedestrian"): PlacementRule(
        occlude=_ids(_BACKGROUND), support=_ids(("Road", "Pavement"))
    ),
    CAMVID_CLASSES.index("Bicyclist"): PlacementRule(
        occlude=_ids(_BACKGROUND), support=_ids(("Road", "Pavement"))
    ),
    CAMVID_CLASSES.index("Car"): PlacementRule(occlude=_ids(_BACKGROUND), support=_ids(("Road",))),
    CAMVID_CLASSES.index("Pole"): PlacementRule(
        occlude=_ids(("Sky", "Building", "Road", "Pavement", "Tree")),
        support=_ids(("Pavement", "Road")),
    ),
    CAMVID_CLASSES.index("Fence"): PlacementRule(
        occlude=_ids(("Sky", "Building", "Pavement", "Tree", "Road")),
        support=_ids(("Pavement", "Road")),
    ),
    CAMVID_CLASSES.index("SignSymbol"): PlacementRule(
        occlude=_ids(("Sky", "Building", "Tree", "Pole")), support=None
    ),
}


@dataclass
class Segment:
    """One connected component of a class, cut out of a source map.

    ``mask`` is the (h, w) bool crop; ``bottom`` the row index of its last row in the source
    map, ``left`` its first column; ``map_height`` the source map height.
    """

    cls: int
    source: str
    mask: np.ndarray
    bottom: int
    left: int
    map_height: int

    @property
    def height(self) -> int:
        return self.mask.shape[0]

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class RebalanceResult:
    """Output of :func:`rebalance`.

    Attributes:
        maps: new (H, W) uint8 label maps.
        records: per map, ``{"base": name, "pastes": [{"class", "source", "box"}]}`` with
            ``box`` = [top, left, bottom, right) in the new map.
        before, after: (num_classes,) pixel counts of the real set and the new set.
        target: class id -> requested share; reached: class id -> achieved share.
    """

    maps: list[np.ndarray]
    records: list[dict]
    before: np.ndarray
    after: np.ndarray
    target: dict[int, float]
    reached: dict[int, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading


def load_label_map(
    path: str | os.PathLike, *, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Read a single-channel label PNG and check its values.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not a single-channel image, or holds values that are neither
            a class id in ``[0, num_classes)`` nor ``ignore_index`` (named with the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label map {path} does not exist.")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"Label map {path} could not be decoded as an image.")
    if arr.ndim != 2:
        raise ValueError(
            f"Label map {path} has shape {arr.shape}; expected a single-channel (H, W) map "
            f"of class ids."
        )
    check_label_values(arr, num_classes=num_classes, ignore_index=ignore_index, where=str(path))
    return arr.astype(np.uint8)


def check_label_values(
    arr: np.ndarray, *, num_classes: int, ignore_index: int | None, where: str
) -> None:
    """Raise ValueError naming ``where`` if ``arr`` holds unknown class ids."""
    values = np.unique(arr)
    ok = values < num_classes
    if ignore_index is not None:
        ok |= values == ignore_index
    if not ok.all():
        bad = values[~ok].tolist()[:10]
        raise ValueError(
            f"{where}: label values {bad} are not among the {num_classes} classes "
            f"(0..{num_classes - 1})"
            + (f" or the ignore value {ignore_index}" if ignore_index is not None else "")
            + "; check the class list of the dataset."
        )


def load_label_maps(
    folder: str | os.PathLike,
    *,
    num_classes: int,
    ignore_index: int | None = None,
    suffix: str = ".png",
    limit: int | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """Read every ``*suffix`` label map of a folder, sorted by name. Returns (names, maps)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Label folder {folder} does not exist.")
    paths = sorted(folder.glob(f"*{suffix}"))[:limit]
    if not paths:
        raise FileNotFoundError(f"Label folder {folder} holds no *{suffix} files.")
    maps = [load_label_map(p, num_classes=num_classes, ignore_index=ignore_index) for p in paths]
    return [p.name for p in paths], maps


def class_pixel_counts(maps: Sequence[np.ndarray], *, num_classes: int) -> np.ndarray:
    """Pixel count of each class id in ``[0, num_classes)``; ignore pixels are not counted.

    Returns:
        (num_classes,) int64 array.
    """
    counts = np.zeros(num_classes, np.int64)
    for m in maps:
        counts += np.bincount(m.ravel(), minlength=256)[:num_classes]
    return counts


# ----------------------------------------------------------------------------- segments


def extract_segments(
    maps: Sequence[np.ndarray],
    names: Sequence[str],
    classes: Sequence[int],
    *,
    min_area: int = 20,
) -> dict[int, list[Segment]]:
    """Connected components (8-connectivity) of each class, at least ``min_area`` pixels."""
    segs: dict[int, list[Segment]] = {c: [] for c in classes}
    for name, m in zip(names, maps):
        for c in classes:
            binary = (m == c).astype(np.uint8)
            if not binary.any():
                continue
            n, cc, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            for j in range(1, n):
                x, y, w, h, area = stats[j]
                if area < min_area:
                    continue
                mask = cc[y : y + h, x : x + w] == j
                segs[c].append(
                    Segment(c, name, mask, bottom=y + h - 1, left=x, map_height=m.shape[0])
                )
    return segs


def _fit_height_line(segs: Sequence[Segment]) -> tuple[float, float]:
    """Least-squares height/H = a * (bottom/H) + b over a class's segments."""
    y = np.array([s.bottom / s.map_height for s in segs])
    h = np.array([s.height / s.map_height for s in segs])
    if len(segs) < 3 or np.ptp(y) < 1e-3:
        return 0.0, float(h.mean())
    a, b = np.polyfit(y, h, 1)
    return float(a), float(b)


def rarest_target(counts: np.ndarray, *, k: int, share: float) -> dict[int, float]:
    """Target raising the ``k`` rarest classes (by pixel count) to ``share`` each."""
    if not 0 < share < 1 / max(k, 1):
        raise ValueError(f"share must be in (0, 1/k) = (0, {1 / max(k, 1):.3f}); got {share}.")
    order = np.argsort(counts, kind="stable")[:k]
    return {int(c): float(share) for c in order}


# ----------------------------------------------------------------------------- recombination


def _try_paste(
    out: np.ndarray,
    seg: Segment,
    rule: PlacementRule,
    line: tuple[float, float],
    rng: np.random.Generator,
    *,
    y_jitter: float,
    occlude_lut: np.ndarray,
    support_lut: np.ndarray | None,
) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray] | None:
    """One placement attempt. Returns (replaced pixel classes, box, paste mask) or None."""
    H, W = out.shape
    a, b = line
    y_src = seg.bottom / seg.map_height
    y_new = float(np.clip(y_src + rng.normal(0, y_jitter), 0.05, 1.0))
    # Perspective: scale the segment by the class's expected height ratio between positions.
    h_src, h_new = a * y_src + b, a * y_new + b
    scale = float(np.clip(h_new / h_src, 0.5, 2.0)) if h_src > 1e-4 and h_new > 1e-4 else 1.0
    scale *= H / seg.map_height
    mh = max(1, round(seg.mask.shape[0] * scale))
    mw = max(1, round(seg.mask.shape[1] * scale))
    if mh > H or mw > W:
        return None
    mask = seg.mask
    if (mh, mw) != mask.shape:
        mask = cv2.resize(mask.astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST) > 0
    bottom = min(H - 1, round(y_new * H) - 1)
    if support_lut is not None:
        # Anchor the segment's bottom centre on a support pixel near the sampled row, which
        # succeeds far more often than a blind horizontal position.
        band = max(2, round(y_jitter * H))
        r0, r1 = max(0, bottom - band), min(H, bottom + band + 1)
        ys, xs = np.nonzero(support_lut[out[r0:r1]])
        if len(xs) == 0:
            return None
        j = int(rng.integers(len(xs)))
        bottom = r0 + int(ys[j])
        left = int(np.clip(xs[j] - mw // 2, 0, W - mw))
    else:
        left = int(rng.integers(0, W - mw + 1))
    top = bottom - mh + 1
    if top < 0:
        return None
    region = out[top : bottom + 1, left : left + mw]

    if support_lut is not None:
        # Lowest mask pixel of each column is where the object touches the ground.
        cols = np.flatnonzero(mask.any(0))
        rows = mh - 1 - np.argmax(mask[::-1, cols], axis=0)
        ground = region[rows, cols]
        if support_lut[ground].mean() < rule.min_support:
            return None

    covered = region[mask]
    allowed = occlude_lut[covered]
    if 1.0 - allowed.mean() > rule.max_hidden:
        return None
    paste = mask.copy()
    paste[mask] = allowed
    if not paste.any():
        return None
    replaced = region[paste].copy()
    region[paste] = seg.cls
    return replaced, (top, left, bottom + 1, left + mw), paste


def rebalance(
    maps: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    num_classes: int,
    target: Mapping[int, float],
    n_maps: int,
    rules: Mapping[int, PlacementRule] | None = None,
    seed: int = 0,
    max_pastes_per_map: int = 60,
    max_tries: int = 30,
    y_jitter: float = 0.03,
    min_area: int = 20,
) -> RebalanceResult:
    """Build ``n_maps`` new label maps whose class shares approach ``target``.

    Each new map starts from a random real map; while some target class is below its share
    of the running pixel total (all new maps so far plus this one), a segment of the class
    with the largest relative deficit is pasted (up to ``max_tries`` placements tried).

    Args:
        maps, names: real (H, W) uint8 label maps and their file names.
        num_classes: class ids are ``[0, num_classes)``; other values (void) are never
            pasted onto unless a rule lists them.
        target: class id -> share of labelled pixels to reach in the new set.
        n_maps: number of maps to build.
        rules: placement rule per target class; a class without one may occlude any
            non-target class and needs no support (logged).
        seed: seeds the numpy generator; same inputs and seed give the same maps.

    Returns:
        :class:`RebalanceResult`.

    Raises:
        ValueError: empty input, a target share outside (0, 1) or summing to >= 1, a target
            class with no segment to paste.
    """
    if len(maps) == 0 or len(maps) != len(names):
        raise ValueError(
            f"rebalance needs label maps with names; got {len(maps)} maps, {len(names)} names."
        )
    for c, s in target.items():
        if not 0 <= c < num_classes or not 0 < s < 1:
            raise ValueError(
                f"Target {c}: {s} must name a class in [0, {num_classes}) and a share in (0, 1)."
            )
    if sum(target.values()) >= 1:
        raise ValueError(f"Target shares sum to {sum(target.values()):.3f}; they must sum below 1.")

    rules = dict(rules or {})
    for c in target:
        if c not in rules:
            logger.info("No placement rule for class %d: it may occlude any non-target class.", c)
            rules[c] = PlacementRule(
                occlude=tuple(k for k in range(num_classes) if k not in target), support=None
            )
    segs = extract_segments(maps, names, list(target), min_area=min_area)
    for c in target:
        if not segs[c]:
            raise ValueError(
                f"Class {c} has no segment of at least {min_area} pixels in the given maps: "
                f"nothing to paste; lower min_area or drop it from the target."
            )
    lines = {c: _fit_height_line(segs[c]) for c in target}
    # Draw segments in proportion to their area: fewer, larger pastes reach a share sooner
    # and give the generator whole objects rather than fragments.
    cum_area = {c: np.cumsum([s.area for s in segs[c]]) for c in target}
    luts = {}
    for c, rule in rules.items():
        occ = np.zeros(256, bool)
        occ[list(rule.occlude)] = True
        sup = None
        if rule.support is not None:
            sup = np.zeros(256, bool)
            sup[list(rule.support)] = True
        luts[c] = (occ, sup)

    rng = np.random.default_rng(seed)
    before = class_pixel_counts(maps, num_classes=num_classes)
    totals = np.zeros(num_classes, np.int64)
    classes = np.array(sorted(target))
    shares = np.array([target[c] for c in classes])
    out_maps, records = [], []
    failed = dict.fromkeys(target.keys(), 0)
    for _ in range(n_maps):
        base_idx = int(rng.integers(len(maps)))
        out = maps[base_idx].copy()
        totals += np.bincount(out.ravel(), minlength=256)[:num_classes]
        pastes: list[dict] = []
        blocked: set[int] = set()
        while len(pastes) < max_pastes_per_map:
            labelled = totals.sum()
            deficit = (shares * labelled - totals[classes]) / (shares * labelled)
            order = [int(classes[i]) for i in np.argsort(-deficit) if deficit[i] > 0]
            order = [c for c in order if c not in blocked]
            if not order:
                break
            c = order[0]
            occ, sup = luts[c]
            for _try in range(max_tries):
                seg = segs[c][int(np.searchsorted(cum_area[c], rng.random() * cum_area[c][-1]))]
                placed = _try_paste(
                    out, seg, rules[c], lines[c], rng,
                    y_jitter=y_jitter, occlude_lut=occ, support_lut=sup,
                )  # fmt: skip
                if placed is not None:
                    break
            else:
                # No plausible spot in this base map for this class: move on to the next.
                blocked.add(c)
                failed[c] += 1
                continue
            replaced, box, _ = placed
            totals -= np.bincount(replaced, minlength=256)[:num_classes]
            totals[c] += replaced.size
            pastes.append({"class": c, "source": seg.source, "box": list(map(int, box))})
        out_maps.append(out)
        records.append({"base": names[base_idx], "pastes": pastes})

    after = class_pixel_counts(out_maps, num_classes=num_classes)
    reached = {c: float(after[c] / max(after.sum(), 1)) for c in target}
    for c in target:
        if reached[c] < 0.9 * target[c]:
            logger.warning(
                "Class %d reached %.2f%% of labelled pixels, short of the %.2f%% target "
                "(%d base maps had no plausible placement left); allow more pastes per map "
                "or relax its placement rule.",
                c, 100 * reached[c], 100 * target[c], failed[c],
            )  # fmt: skip
    return RebalanceResult(out_maps, records, before, after, dict(target), reached)


# ----------------------------------------------------------------------------- reports


def distribution_table(
    before: np.ndarray,
    after: np.ndarray,
    class_names: Sequence[str],
    target: Mapping[int, float] | None = None,
) -> str:
    """Markdown table of class shares (%) before and after, with targets where given."""
    target = target or {}
    pb = 100 * before / max(before.sum(), 1)
    pa = 100 * after / max(after.sum(), 1)
    lines = ["| class | before % | after % | target % |", "|---|---:|---:|---:|"]
    for i, name in enumerate(class_names):
        t = f"{100 * target[i]:.2f}" if i in target else ""
        lines.append(f"| {name} | {pb[i]:.2f} | {pa[i]:.2f} | {t} |")
    return "\n".join(lines)


def plot_distribution(
    before: np.ndarray,
    after: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "Class pixel shares",
) -> Path:
    """Bar chart (log scale) of class shares before/after, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pb = 100 * before / max(before.sum(), 1)
    pa = 100 * after / max(after.sum(), 1)
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=80)
    ax.bar(x - 0.2, pb, 0.4, label="real")
    ax.bar(x + 0.2, pa, 0.4, label="rebalanced")
    ax.set_yscale("log")
    ax.set_xticks(x, class_names, rotation=45, ha="right")
    ax.set_ylabel("% of labelled pixels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]] = CAMVID_PALETTE) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 RGB; ids beyond the palette are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[label]


def save_report(
    result: RebalanceResult, class_names: Sequence[str], folder: str | os.PathLike
) -> dict:
    """Write ``distribution.md``, ``distribution.png`` and ``distribution.json`` to a folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = distribution_table(result.before, result.after, class_names, result.target)
    (folder / "distribution.md").write_text(table + "\n")
    plot_distribution(result.before, result.after, class_names, folder / "distribution.png")
    stats = class_stats(result, class_names)
    (folder / "distribution.json").write_text(json.dumps(stats, indent=2))
    return stats


def class_stats(result: RebalanceResult, class_names: Sequence[str]) -> dict:
    """JSON-ready pixel counts and shares before/after, target and reached shares by name."""
    return {
        "classes": list(class_names),
        "before_pixels": {n: int(v) for n, v in zip(class_names, result.before)},
        "after_pixels": {n: int(v) for n, v in zip(class_names, result.after)},
        "target_share": {class_names[c]: s for c, s in result.target.items()},
        "reached_share": {class_names[c]: s for c, s in result.reached.items()},
    }
