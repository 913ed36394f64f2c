"""torchvision-friendly copy-paste: a dataset wrapper and target-detector helpers.

``PasteDataset`` wraps any dataset that yields ``(image, target)`` in torchvision's
detection format (image: PIL, ``(H, W, C)`` uint8 array or ``(C, H, W)`` tensor; target:
``boxes`` ``(N, 4)`` xyxy, ``labels`` ``(N,)``, optional ``masks`` ``(N, H, W)``) and
pastes instances with a :class:`~ganaug.core.paste.CopyPaste`. Each sample's randomness
comes from ``(seed, epoch, index)``, so results do not depend on the number of workers.

``detector_loss_fn`` turns a torchvision detection model into the ``(images, targets) ->
loss dict`` callable that :class:`~ganaug.core.paste.learned.TaskAwarePaste` trains
against; ``build_target_detector`` makes a from-scratch Faster R-CNN for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ganaug.core.paste import CopyPaste

logger = logging.getLogger(__name__)

__all__ = [
    "PASTE_DEFAULTS",
    "PasteDataset",
    "paste_dataset_from_config",
    "build_target_detector",
    "detector_loss_fn",
    "load_detector_checkpoint",
    "to_numpy_sample",
    "to_tensor_sample",
]


def to_numpy_sample(image, target: dict) -> tuple[np.ndarray, dict, str]:
    """Convert a torchvision-style sample to numpy; returns the image's original kind."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"PasteDataset: expected a (C, H, W) image tensor, got {image.shape}.")
        kind = "float" if image.is_floating_point() else "uint8"
        arr = image.detach().cpu()
        if kind == "float":
            arr = (arr.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        arr = arr.permute(1, 2, 0).numpy()
    elif hasattr(image, "convert"):  # PIL
        kind = "pil"
        arr = np.asarray(image.convert("RGB") if image.mode not in ("RGB", "L") else image)
    else:
        kind = "numpy"
        arr = np.asarray(image)
    out = {}
    for k, v in target.items():
        out[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
    if "labels" not in out:
        raise KeyError(f"PasteDataset: target has no 'labels' (keys: {sorted(target)}).")
    return np.ascontiguousarray(arr), out, kind


def to_tensor_sample(image: np.ndarray, target: dict, kind: str):
    """Back to the sample's original kind; target arrays become tensors."""
    if kind in ("float", "uint8"):
        t = torch.from_numpy(np.ascontiguousarray(image))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        image = t.float() / 255.0 if kind == "float" else t
    elif kind == "pil":
        from PIL import Image

        image = Image.fromarray(image)
    out = {}
    for k, v in target.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
            if k == "masks":
                v = v.to(torch.uint8)
        out[k] = v
    return image, out


class PasteDataset(Dataset):
    """Wrap a detection / segmentation dataset and paste instances into its samples.

    Args:
        dataset: yields ``(image, target)`` (see module doc). A ``label_map`` entry in the
            target (``(H, W)`` ints) is updated too.
        copy_paste: the configured :class:`CopyPaste`.
        seed: base seed; sample ``i`` in epoch ``e`` uses ``default_rng([seed, e, i])``.
        skip_empty: images without objects still get pastes (False skips them unchanged).
    """

    def __init__(self, dataset, *, copy_paste: CopyPaste, seed: int = 0, skip_empty: bool = False):
        self.dataset = dataset
        self.copy_paste = copy_paste
        self.seed = int(seed)
        self.epoch = 0
        self.skip_empty = skip_empty

    def set_epoch(self, epoch: int) -> None:
        """Give each epoch fresh pastes (call from the training loop)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        image, target = self.dataset[idx]
        arr, tgt, kind = to_numpy_sample(image, target)
        if self.skip_empty and len(tgt["labels"]) == 0:
            return image, target
        rng = np.random.default_rng([self.seed, self.epoch, int(idx)])
        extra = {k: v for k, v in tgt.items() if k not in ("boxes", "labels", "masks")}
        core = {k: tgt[k] for k in ("boxes", "labels", "masks", "label_map") if k in tgt}
        out_img, out_tgt = self.copy_paste(arr, core, rng=rng)
        extra.pop("label_map", None)
        pasted = out_tgt.pop("pasted")
        if "area" in extra or "iscrowd" in extra:
            # Per-object extras no longer line up with the new object list: recompute.
            b = out_tgt["boxes"]
            extra["area"] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            extra["iscrowd"] = np.zeros(len(b), dtype=np.int64)
        out_tgt.update(extra)
        out_tgt["pasted"] = pasted
        if arr.ndim == 3 and out_img.ndim == 2:
            out_img = out_img[:, :, None]
        return to_tensor_sample(out_img, out_tgt, kind)


# -- `paste:` section of `ganaug det-train` configs -----------------------------------------
PASTE_DEFAULTS: dict = {
    "enabled": False,
    "selection": "inverse",  # uniform (random copy-paste) | inverse | target | metric
    "smoothing": 1.0,  # inverse: p_c ∝ (n_c + smoothing) ** -power
    "power": 0.5,
    "target": None,  # target: {class name: share}
    "metrics_file": None,  # metric: a per_class_metrics.json (e.g. last run's AP)
    "count": [1, 3],  # pastes per image, inclusive
    "scale": [0.5, 1.5],  # resize factor, log-uniform
    "flip_prob": 0.5,
    "max_rotation": 10.0,  # degrees
    "blend": "gaussian",  # alpha | gaussian | poisson
    "prob": 1.0,  # share of images that get pastes
    "occlusion_thresh": 0.7,  # drop objects covered beyond this share
    "rare_small_prob": 0.0,  # paste rare classes small (scale imbalance)
    "small_size": [8, 32],  # longer side in pixels for those small pastes
    "min_area": 64,  # smallest instance (mask pixels) to bank
    "max_per_class": 100,  # bank size cap per class
    "learned": False,  # not in det-train: see `ganaug paste-learn`
}


def paste_dataset_from_config(train_ds, cfg: dict, *, seed: int = 0):
    """Wrap a :class:`~ganaug.datasets.coco.CocoDetectionDataset` per a ``paste:`` section.

    Returns ``train_ds`` itself unless ``enabled`` is true, else a :class:`PasteDataset`.

    Instances are cut from the training images only (the set's ``ids``), with their COCO
    masks; selection frequencies are the training set's object counts per class.

    Raises:
        KeyError: unknown keys in the section.
        ValueError: ``learned: true`` (online learned compositing is not wired into
            det-train) or bad values.
    """
    unknown = set(cfg) - set(PASTE_DEFAULTS)
    if unknown:
        raise KeyError(
            f"config: unknown keys {sorted(unknown)} in 'paste'; known: {sorted(PASTE_DEFAULTS)}"
        )
    c = {**PASTE_DEFAULTS, **cfg}
    if not c["enabled"]:
        return train_ds
    if c["learned"]:
        raise ValueError(
            "paste.learned: online learned compositing is not wired into det-train; train "
            "the synthesizer with `ganaug paste-learn` and train on its exported set."
        )
    from ganaug.core.paste import InstanceBank
    from ganaug.core.paste.factory import make_sampler, read_per_class_metrics

    names = list(train_ds.class_names)
    bank = InstanceBank.from_coco(
        train_ds.ann_file, train_ds.image_dir, image_ids=list(train_ds.ids),
        cat_to_label=dict(train_ds.cat_to_label), min_area=int(c["min_area"]),
        max_per_class=c["max_per_class"],
    )  # fmt: skip
    if len(bank) == 0:
        raise ValueError(
            f"paste: no instance with >= {c['min_area']} mask pixels in the "
            f"{len(train_ds.ids)} training images of {train_ds.ann_file}."
        )
    target = None
    if c["target"]:
        bad = sorted(set(c["target"]) - set(names))
        if bad:
            raise ValueError(f"paste.target: unknown class names {bad}.")
        target = {names.index(n) + 1: float(v) for n, v in c["target"].items()}
    metrics = None
    if c["metrics_file"]:
        metrics = read_per_class_metrics(c["metrics_file"], names, label_offset=1)
    sampler = make_sampler(
        c["selection"], counts=bank.class_counts(), classes=bank.classes,
        smoothing=float(c["smoothing"]), power=float(c["power"]), target=target,
        metrics=metrics, rare_small_prob=float(c["rare_small_prob"]),
        small_size=tuple(c["small_size"]),
    )  # fmt: skip
    copy_paste = CopyPaste(
        bank=bank, sampler=sampler, count=tuple(c["count"]), scale=tuple(c["scale"]),
        flip_prob=float(c["flip_prob"]), max_rotation=float(c["max_rotation"]),
        blend_mode=c["blend"], occlusion_thresh=float(c["occlusion_thresh"]),
        prob=float(c["prob"]),
    )  # fmt: skip
    logger.info(
        "paste: %d instances of %d classes, selection %s, %s pastes per image, blend %s",
        len(bank), len(bank.classes), c["selection"], tuple(c["count"]), c["blend"],
    )  # fmt: skip
    return PasteDataset(train_ds, copy_paste=copy_paste, seed=seed)


def build_target_detector(
    *,
    num_classes: int,
    min_size: int = 320,
    max_size: int = 512,
    weights: str | os.PathLike | None = None,
) -> nn.Module:
    """torchvision's Faster R-CNN (MobileNetV3-Large FPN) from scratch, no download.

    Args:
        num_classes: foreground classes; the model gets ``num_classes + 1`` outputs.
        weights: optional path to a state dict of the same architecture.
    """
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes + 1,
        min_size=min_size,
        max_size=max_size,
    )
    if weights is not None:
        load_detector_checkpoint(model, weights)
    return model


def load_detector_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a saved detector: a bare state dict or a checkpoint dict with ``"model"``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"Cannot read detector checkpoint {path}: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"Detector checkpoint {path} does not fit this model (wrong num_classes or "
            f"architecture?): {err}"
        ) from err


def detector_loss_fn(model: nn.Module, *, freeze_bn: bool = False):
    """``(images, targets) -> loss dict`` for a torchvision detection model.

    Args:
        model: e.g. :func:`build_target_detector`'s; switched to train mode on each call
            (torchvision detectors return losses only in train mode).
        freeze_bn: keep BatchNorm layers in eval mode, so that offline training against a
            frozen checkpoint does not drift its running statistics.
    """

    def fn(images, targets):
        model.train()
        if freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        clean = [{k: v for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in targets]
        return model(list(images), clean)

    return fn


# -- `ganaug paste-learn`: offline training against a saved detector --------------------
def add_parser(subparsers) -> None:
    """Register ``ganaug paste-learn`` (see :func:`run_paste_learn`)."""
    p = subparsers.add_parser(
        "paste-learn",
        help="train the task-aware paste synthesizer against a saved detector, export data",
        description=(
            "Offline learned compositing (Tripathi et al. 2019): the synthesizer learns "
            "placements that raise a frozen detector's loss while a discriminator keeps "
            "composites realistic; then composites are written as a COCO set."
        ),
    )
    p.add_argument("--ann-file", help="COCO json (default: coco128 under the data root)")
    p.add_argument("--image-dir", help="image folder of --ann-file")
    p.add_argument("--detector-weights", help="state dict / checkpoint of the target detector")
    p.add_argument("--detector", choices=("mobilenet", "tiny"), default="mobilenet",
                   help="architecture of the target: torchvision MobileNetV3-FPN Faster R-CNN "
                   "or ganaug's tiny-backbone Faster R-CNN")  # fmt: skip
    p.add_argument("--min-size", type=int, default=320)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--selection", default="inverse", help="uniform|inverse (foreground classes)")
    p.add_argument("--num-out", type=int, default=64, help="composites to export")
    p.add_argument("--out", required=True, help="output folder of the COCO set")
    p.add_argument("--bank-images", type=int, default=0,
                   help="cut foregrounds from the first N images only (0 = all)")  # fmt: skip
    p.add_argument("--resume", help="TaskAwarePaste checkpoint to continue from")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_paste_learn)


def run_paste_learn(args) -> int:
    """Offline loop: frozen detector, synthesizer + discriminator steps, then export."""
    from ganaug.core.paste import InstanceBank
    from ganaug.core.paste.data import CocoDetection, coco128_paths
    from ganaug.core.paste.factory import make_sampler
    from ganaug.core.paste.learned import TaskAwarePaste, export_composites, instances_to_rgba
    from ganaug.data_root import dataset_dir

    if bool(args.ann_file) != bool(args.image_dir):
        raise SystemExit("paste-learn: give both --ann-file and --image-dir, or neither.")
    if args.ann_file:
        ann, img_dir = args.ann_file, args.image_dir
    else:
        ann, img_dir = coco128_paths(dataset_dir("coco128"))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ds = CocoDetection(ann, img_dir, with_masks=False)
    bank = InstanceBank.from_coco(
        ann, img_dir, cat_to_label=ds.cat_to_label, min_area=256, max_per_class=50,
        image_ids=ds.ids[: args.bank_images] if args.bank_images else None,
    )  # fmt: skip
    sampler = make_sampler(args.selection, counts=ds.class_counts(), classes=bank.classes)
    num_classes = len(ds.cat_ids)
    if args.detector == "mobilenet":
        model = build_target_detector(num_classes=num_classes, min_size=args.min_size,
                                      max_size=args.min_size * 4 // 3)  # fmt: skip
    else:
        from ganaug.torchvision import build_faster_rcnn

        model = build_faster_rcnn(num_classes=num_classes, min_size=args.min_size,
                                  max_size=args.min_size * 4 // 3)  # fmt: skip
    if args.detector_weights:
        load_detector_checkpoint(model, args.detector_weights)
    if not args.detector_weights:
        logger.warning("paste-learn: no --detector-weights; the target is an untrained detector.")
    model.requires_grad_(False)
    target_fn = detector_loss_fn(model, freeze_bn=True)
    tap = TaskAwarePaste()
    if args.resume:
        tap.load(args.resume)
    has_objects = [i for i in range(len(ds)) if len(ds.coco.getAnnIds(imgIds=ds.ids[i])) > 0]

    def batch():
        idx = rng.choice(has_objects, size=args.batch, replace=False)
        images, targets = [], []
        for i in idx:
            im, t = ds[int(i)]
            images.append(torch.from_numpy(im).permute(2, 0, 1).float() / 255)
            targets.append({"boxes": torch.from_numpy(t["boxes"]),
                            "labels": torch.from_numpy(t["labels"])})  # fmt: skip
        classes = sampler.sample(rng, args.batch)
        insts = [bank[c][int(rng.integers(len(bank[c])))] for c in classes]
        return images, targets, instances_to_rgba(insts, size=tap.fg_size), classes

    from tqdm import tqdm

    for step in tqdm(range(args.steps), desc="paste-learn", disable=args.steps < 10):
        images, targets, fg, classes = batch()
        losses = tap.offline_step(target_fn=target_fn, images=images, targets=targets,
                                  foregrounds=fg, labels=classes)  # fmt: skip
        if step % 20 == 0:
            logger.info("step %d: %s", step, {k: round(v, 4) for k, v in losses.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tap.save(out.parent / f"{out.name}_synthesizer.pth")
    items = []
    tap.synthesizer.eval()
    with torch.no_grad():
        while len(items) < args.num_out:
            images, targets, fg, classes = batch()
            comps, new_t, _ = tap.compose(images, targets, fg, classes)
            items.extend(zip(comps, new_t))
    label_to_cat = {v: k for k, v in ds.cat_to_label.items()}
    export_composites(
        out, items[: args.num_out],
        categories=[ds.coco.cats[c] for c in ds.cat_ids],
        label_to_cat=label_to_cat,
        manifest={"source": str(ann), "detector": args.detector,
                  "detector_weights": args.detector_weights, "steps": args.steps,
                  "seed": args.seed, "selection": args.selection},
    )  # fmt: skip
    logger.info("Wrote %d composites to %s", len(items[: args.num_out]), out)
    return 0
