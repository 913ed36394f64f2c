"""Rules from inspection figures to ganaug techniques and the config to start from.

Each recommendation carries the figure that triggered it, so a user can disagree with the
threshold rather than with a black box. A technique is "available" when its module imports
and (for those that need one) a config file exists under the project's ``configs/``; the
other developers' techniques land over time, and until then the report says
"not yet available in this version" instead of pointing at nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Detection: share of objects below COCO's 32x32 area that calls for small-object help.
SMALL_SHARE = 0.30
# Per class: share of instances whose box has IoU >= the occlusion threshold with another.
OCCLUDED_SHARE = 0.15
MIN_INSTANCES_FOR_SHARE = 10
# Long tail: ratio of most to least frequent class, or classes below this many instances.
IMBALANCE_RATIO = 10.0
RARE_INSTANCES = 10
# Segmentation: a class below this share of labelled pixels, or present in few label maps.
RARE_PIXEL_SHARE = 0.01
RARE_PRESENCE = 0.10
# Classification: classes with fewer images than this.
FEW_IMAGES = 100
# Classification with masks: defect regions that are mostly small.
SMALL_REGION_SHARE = 0.5

NOT_AVAILABLE = "not yet available in this version"


@dataclass(frozen=True)
class Technique:
    """A ganaug technique: where its code and its configs live.

    ``config_required``: the technique is trained from a config (a detector head, a
    segmentor loss), so without one it is not usable yet; otherwise a config found is
    only a suggestion and the module is the entry point.
    """

    title: str
    modules: tuple[str, ...]
    config_dirs: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    config_required: bool = True


_DET_CONFIGS = ("configs/detectron2", "configs/torchvision")

TECHNIQUES: dict[str, Technique] = {
    "perceptual_gan": Technique(
        "Perceptual GAN head (super-resolves small-object features)",
        ("ganaug.core.detection.pgan",),
        _DET_CONFIGS,
        ("perceptual", "pgan"),
    ),
    "small_paste": Technique(
        "small-scale copy-paste of objects",
        ("ganaug.core.paste",),
        (*_DET_CONFIGS, "configs/paste"),
        ("paste",),
        config_required=False,
    ),
    "asdn_astn": Technique(
        "ASDN/ASTN adversarial occlusion and deformation (A-Fast-RCNN)",
        ("ganaug.core.detection.asdn", "ganaug.core.detection.astn"),
        _DET_CONFIGS,
        ("asdn", "astn"),
    ),
    "rare_paste": Technique(
        "copy-paste of rare-class instances",
        ("ganaug.core.paste",),
        (*_DET_CONFIGS, "configs/paste"),
        ("paste",),
        config_required=False,
    ),
    "labelmap_rebalance": Technique(
        "label-map rebalancing with a pix2pixHD generator",
        ("ganaug.core.rebalance",),
        ("configs/pix2pixhd",),
    ),
    "adv_seg": Technique(
        "adversarial segmentor loss",
        ("ganaug.mmseg",),
        ("configs/adv_seg",),
    ),
    "gan_oversampling": Technique(
        "GAN oversampling of rare classes",
        ("ganaug.classification",),
        ("configs/classification",),
        config_required=False,
    ),
    "defect_paste": Technique(
        "copy-paste of small defect regions (masks beside the images)",
        ("ganaug.core.paste",),
    ),
}


CONFIG_ROOT_ENV = "GANAUG_CONFIG_ROOT"


def default_config_root() -> Path:
    """The folder holding ``configs/``: ``$GANAUG_CONFIG_ROOT``, else the checkout this
    package runs from (an editable install; a wheel carries no configs)."""
    if os.environ.get(CONFIG_ROOT_ENV):
        return Path(os.environ[CONFIG_ROOT_ENV])
    return Path(__file__).resolve().parent.parent.parent


def module_available(name: str) -> bool:
    """Whether ``name`` can be found without running it."""
    try:
        return importlib.util.find_spec(name) is not None
    except Exception as err:  # noqa: BLE001 - a broken parent package means "not available"
        logger.debug("module %s not available: %r", name, err)
        return False


# Dataset names that appear in config file names, and the task each belongs to: a config
# named after a dataset of another task (a CamVid paste config) is no start for this one.
_DATASET_TASKS = {
    "camvid": "segmentation",
    "cityscapes": "segmentation",
    "ade20k": "segmentation",
    "voc": "segmentation",
    "coco": "detection",
    "lvis": "detection",
    "magnetic": "classification",
    "mnist": "classification",
    "cifar": "classification",
}
# Config folders that need a framework installed to be of use.
_FRAMEWORK_OF_DIR = {"configs/detectron2": "detectron2", "configs/adv_seg": "mmseg"}


def find_config(
    tech: Technique,
    *,
    root: Path,
    task: str | None = None,
    hints: tuple[str, ...] = (),
    available: Callable[[str], bool] | None = None,
) -> Path | None:
    """The config file to start from.

    Candidates: files under the technique's folders whose names contain one of its
    keywords, minus those named after a dataset of another task. Preference: a folder
    whose framework is installed, then a name mentioning the dataset (``hints``), then
    the folder order of the technique.
    """
    available = available or module_available
    found: list[tuple[int, int, Path]] = []
    for rank, d in enumerate(tech.config_dirs):
        folder = root / d
        if not folder.is_dir():
            continue
        framework = _FRAMEWORK_OF_DIR.get(d)
        missing = int(framework is not None and not available(framework))
        for p in sorted(folder.rglob("*")):
            if p.suffix not in (".py", ".yaml", ".yml") or p.name.startswith("_"):
                continue
            name = p.name.lower()
            if tech.keywords and not any(k in name for k in tech.keywords):
                continue
            if task and any(ds in name and t != task for ds, t in _DATASET_TASKS.items()):
                continue
            found.append((missing, rank, p))
    if not found:
        return None
    found.sort(key=lambda t: (t[0], t[1]))
    for hint in hints:
        for _, _, p in found:
            if hint and hint in p.name.lower():
                return p
    return found[0][2]


def _hints(report: dict) -> tuple[str, ...]:
    name = str(report.get("name", "")).lower()
    return tuple(ds for ds in _DATASET_TASKS if ds in name)


def _resolve(key: str, report: dict, root: Path, available: Callable[[str], bool]) -> dict:
    tech = TECHNIQUES[key]
    config = None
    if tech.config_dirs:
        config = find_config(
            tech, root=root, task=report.get("task"), hints=_hints(report), available=available
        )
    ok = all(available(m) for m in tech.modules) and (
        config is not None or not tech.config_required or not tech.config_dirs
    )
    if config is not None:
        try:
            config_str = str(config.relative_to(root))
        except ValueError:
            config_str = str(config)
    else:
        config_str = None
    return {
        "technique": key,
        "title": tech.title,
        "module": ", ".join(tech.modules) or None,
        "config": config_str,
        "available": ok,
        "status": "available" if ok else NOT_AVAILABLE,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _listing(items: list[tuple[str, str]], limit: int = 5) -> str:
    text = ", ".join(f"{n} {v}" for n, v in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def recommend(
    report: dict,
    *,
    config_root: str | Path | None = None,
    is_available: Callable[[str], bool] | None = None,
) -> list[dict]:
    """Recommendations for a report from :func:`ganaug.inspect.inspect_dataset`.

    Args:
        report: the report dict (``task``, ``per_class``, ``scale``, ...).
        config_root: folder holding ``configs/`` (default: this checkout).
        is_available: module check (default: :func:`module_available`).

    Returns:
        A list of dicts with ``technique``, ``title``, ``reason`` (the figure, in words),
        ``trigger`` (figure name, value, threshold, classes), ``module``, ``config``,
        ``available`` and ``status``.
    """
    root = Path(config_root) if config_root is not None else default_config_root()
    available = is_available or module_available
    per_class = report.get("per_class") or {}
    recs: list[dict] = []

    def add(key: str, reason: str, figure: str, value, threshold, classes=()) -> None:
        rec = _resolve(key, report, root, available)
        rec.update(
            reason=reason,
            trigger={
                "figure": figure,
                "value": value,
                "threshold": threshold,
                "classes": list(classes),
            },
        )
        recs.append(rec)

    task = report.get("task")
    ratio = report.get("imbalance_ratio")
    if task == "detection":
        scale = report.get("scale") or {}
        small = scale.get("small_share", 0.0)
        small_classes = sorted(
            (
                (n, e["small_share"])
                for n, e in per_class.items()
                if e.get("count", 0) >= MIN_INSTANCES_FOR_SHARE and e.get("small_share", 0) >= 0.5
            ),
            key=lambda t: -t[1],
        )
        if small >= SMALL_SHARE or small_classes:
            reason = f"{_pct(small)} of objects are small (area < 32x32)"
            if small_classes:
                items = [(n, _pct(v)) for n, v in small_classes]
                reason += f"; mostly-small classes: {_listing(items)}"
            for key in ("perceptual_gan", "small_paste"):
                add(key, reason, "small_share", small, SMALL_SHARE, [n for n, _ in small_classes])
        occluded = sorted(
            (
                (n, e["occluded_share"])
                for n, e in per_class.items()
                if e.get("count", 0) >= MIN_INSTANCES_FOR_SHARE
                and e.get("occluded_share", 0.0) >= OCCLUDED_SHARE
            ),
            key=lambda t: -t[1],
        )
        if occluded:
            thr = (report.get("occlusion") or {}).get("iou_threshold", 0.3)
            reason = (
                f"share of instances overlapping another box with IoU >= {thr}: "
                f"{_listing([(n, _pct(v)) for n, v in occluded])}"
            )
            top = occluded[0][1]
            add(
                "asdn_astn", reason, "occluded_share", top, OCCLUDED_SHARE, [n for n, _ in occluded]
            )
        rare = sorted(
            ((n, c) for n, c in report.get("class_counts", {}).items() if 0 < c < RARE_INSTANCES),
            key=lambda t: t[1],
        )
        if (ratio and ratio >= IMBALANCE_RATIO) or rare:
            reason = f"imbalance ratio {ratio:.0f}:1" if ratio else "long tail"
            if rare:
                reason += (
                    f"; {len(rare)} classes with fewer than {RARE_INSTANCES} instances: "
                    f"{_listing([(n, str(c)) for n, c in rare])}"
                )
            add(
                "rare_paste",
                reason,
                "imbalance_ratio",
                ratio,
                IMBALANCE_RATIO,
                [n for n, _ in rare],
            )

    elif task == "segmentation":
        rare_px = sorted(
            (
                (n, e["share"])
                for n, e in per_class.items()
                if 0 < e.get("share", 0.0) < RARE_PIXEL_SHARE
            ),
            key=lambda t: t[1],
        )
        if rare_px or (ratio and ratio >= IMBALANCE_RATIO * 5):
            reason = f"pixel imbalance ratio {ratio:.0f}:1" if ratio else "rare pixel classes"
            if rare_px:
                reason += (
                    f"; classes under {_pct(RARE_PIXEL_SHARE)} of labelled pixels: "
                    f"{_listing([(n, f'{100 * v:.2f}%') for n, v in rare_px])}"
                )
            value = rare_px[0][1] if rare_px else ratio
            names = [n for n, _ in rare_px]
            add("labelmap_rebalance", reason, "pixel_share", value, RARE_PIXEL_SHARE, names)
            add("adv_seg", reason, "pixel_share", value, RARE_PIXEL_SHARE, names)
        rare_img = sorted(
            (
                (n, e["image_share"])
                for n, e in per_class.items()
                if 0 < e.get("image_share", 0.0) < RARE_PRESENCE
            ),
            key=lambda t: t[1],
        )
        if rare_img:
            reason = (
                f"classes present in fewer than {_pct(RARE_PRESENCE)} of label maps: "
                f"{_listing([(n, _pct(v)) for n, v in rare_img])}"
            )
            add(
                "labelmap_rebalance",
                reason,
                "image_share",
                rare_img[0][1],
                RARE_PRESENCE,
                [n for n, _ in rare_img],
            )

    elif task == "classification":
        few = sorted(
            ((n, c) for n, c in report.get("class_counts", {}).items() if 0 < c < FEW_IMAGES),
            key=lambda t: t[1],
        )
        if few or (ratio and ratio >= IMBALANCE_RATIO):
            reason = f"imbalance ratio {ratio:.1f}:1" if ratio else "few images"
            if few:
                reason += (
                    f"; classes with fewer than {FEW_IMAGES} images: "
                    f"{_listing([(n, str(c)) for n, c in few])}"
                )
            add(
                "gan_oversampling",
                reason,
                "class_counts",
                ratio,
                IMBALANCE_RATIO,
                [n for n, _ in few],
            )
        small_def = sorted(
            (
                (n, e["small_share"])
                for n, e in per_class.items()
                if e.get("regions", 0) >= 5 and e.get("small_share", 0.0) >= SMALL_REGION_SHARE
            ),
            key=lambda t: -t[1],
        )
        if small_def:
            reason = (
                f"defect regions smaller than 32x32 px: "
                f"{_listing([(n, _pct(v)) for n, v in small_def])}"
            )
            add(
                "defect_paste",
                reason,
                "small_share",
                small_def[0][1],
                SMALL_REGION_SHARE,
                [n for n, _ in small_def],
            )

    absent = report.get("absent_classes") or []
    if absent:
        recs.append(
            {
                "technique": "collect_data",
                "title": "collect or label examples of absent classes",
                "reason": f"{len(absent)} declared classes have no examples: "
                f"{', '.join(absent[:8])}{' ...' if len(absent) > 8 else ''}; "
                f"a generator cannot learn a class it never sees",
                "trigger": {
                    "figure": "absent_classes",
                    "value": len(absent),
                    "threshold": 1,
                    "classes": absent,
                },
                "module": None,
                "config": None,
                "available": True,
                "status": "data",
            }
        )
    return recs
