"""Training and evaluation loop for the torchvision detectors, driven by a YAML config.

One optimizer (SGD) trains the detector (backbone, RPN, box head, PGAN generator); a
second (Adam) steps the adversarial networks (PGAN discriminator, ASDN, ASTN). The heads
return losses such that a single backward over all of them gives each network the
gradient of its own objective (see :mod:`ganaug.torchvision.roi_heads`). Checkpoints hold
the model, both optimizers, the LR schedule, the iteration and the RNG states.

Config (YAML; ``_base_: other.yaml`` is merged under the file, paths relative to it)::

    model: {variant: pgan, backbone: tiny, min_size: 256, max_size: 384, ...}
    data: {dataset: coco128, split: train2017, train_images: "0:96", val_images: "96:128"}
    train: {iters: 300, batch_size: 2, lr: 0.02, adv_lr: 1.0e-4, seed: 0, ...}
    out_dir: work_dirs/det/pgan
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from ganaug.atomic import write_text_atomic
from ganaug.data_root import dataset_dir
from ganaug.datasets.coco import CocoDetectionDataset, collate_detection
from ganaug.evaluation.coco_eval import evaluate_coco_boxes, write_per_class_metrics

from .builder import (
    adversary_parameters,
    build_faster_rcnn,
    detector_parameters,
    load_torch_file,
)
from .roi_heads import AUX_PREFIX, GanaugRoIHeads

__all__ = [
    "DEFAULTS",
    "build_datasets",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
]

logger = logging.getLogger(__name__)

DEFAULTS: dict = {
    "model": {"variant": "baseline", "backbone": "tiny", "min_size": 256, "max_size": 384},
    "data": {
        "dataset": "coco128",
        "data_root": None,  # None: ganaug.data_root's setting ($GANAUG_DATA_ROOT)
        "split": "train2017",
        "train_images": None,  # None: all; "a:b" slice of the id-sorted images; or a list
        "val_images": None,  # None: same as train_images
    },
    "train": {
        "iters": 300,
        "batch_size": 2,
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        "warmup_iters": 50,
        "lr_drop_at": 0.8,  # share of iters after which the LR is divided by 10
        "adv_lr": 1.0e-4,
        "grad_clip": 10.0,
        "seed": 0,
        "log_period": 20,
        "checkpoint_period": 0,  # 0: only the final checkpoint
        "eval_at_end": True,
        "eval_train": False,  # also evaluate on the training images (how well it fits)
        "eval_period": 0,  # >0: also evaluate every N iterations -> eval_history.jsonl
        "eval_batch_size": 4,
    },
    # Copy-paste on the training batches (keys: ganaug.torchvision.paste.PASTE_DEFAULTS).
    "paste": {},
    "out_dir": "work_dirs/det/run",
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise FileNotFoundError(f"config file {path} not found") from err
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping at top level, got {type(data)}")
    base = data.pop("_base_", None)
    if base is not None:
        data = _merge(_read_yaml(path.parent / base), data)
    return data


_SLICE = re.compile(r"-?\d*:-?\d*")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> dict:
    """Defaults, merged with the YAML file and then ``key.sub=value`` overrides (YAML values).

    Unknown top-level sections or keys in ``model``/``data``/``train`` raise a ``KeyError``
    naming them.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge(cfg, _read_yaml(Path(path)))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key.sub=value")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        # "a:b" slices stay strings: YAML 1.1 reads e.g. 8:12 as the base-60 integer 492.
        node[parts[-1]] = value if _SLICE.fullmatch(value) else yaml.safe_load(value)
    for section in cfg:
        if section not in DEFAULTS:
            raise KeyError(f"config: unknown section {section!r}; known: {sorted(DEFAULTS)}")
    if not isinstance(cfg.get("model"), dict):
        raise ValueError(f"config {path}: 'model' must be a mapping, got {cfg.get('model')!r}")
    # Model keys are the builder's keyword arguments (num_classes comes from the data).
    model_keys = set(inspect.signature(build_faster_rcnn).parameters) - {"num_classes"}
    unknown = set(cfg["model"]) - model_keys
    if unknown:
        raise KeyError(
            f"config {path}: unknown keys {sorted(unknown)} in 'model'; known: {sorted(model_keys)}"
        )
    for section in ("data", "train"):
        unknown = set(cfg[section]) - set(DEFAULTS[section])
        if unknown:
            raise KeyError(
                f"config: unknown keys {sorted(unknown)} in {section!r}; "
                f"known: {sorted(DEFAULTS[section])}"
            )
    for key in ("batch_size", "eval_batch_size"):
        value = cfg["train"][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config {path}: train.{key} must be an integer >= 1, got {value!r}")
    if not isinstance(cfg["train"]["iters"], int) or cfg["train"]["iters"] < 0:
        raise ValueError(
            f"config {path}: train.iters must be an integer >= 0, got {cfg['train']['iters']!r}"
        )
    return cfg


def _select_ids(all_ids: list[int], spec) -> list[int]:
    if spec is None:
        return list(all_ids)
    if isinstance(spec, str):
        try:
            a, b = (int(s) if s else None for s in spec.split(":"))
        except ValueError as err:
            raise ValueError(f"image selection {spec!r}: expected 'start:stop'") from err
        return list(all_ids[a:b])
    if isinstance(spec, list):
        return [int(i) for i in spec]
    raise ValueError(
        f"image selection: expected null, 'start:stop' or a list, got {spec!r} (quote a:b "
        "in YAML files: unquoted, YAML 1.1 reads it as a base-60 integer)"
    )


def build_datasets(cfg: dict) -> tuple[CocoDetectionDataset, CocoDetectionDataset]:
    """Train and validation datasets of a config (COCO layout under the data root)."""
    data = cfg["data"]
    root = dataset_dir(data["dataset"], data.get("data_root"))
    full = CocoDetectionDataset.from_root(root, split=data["split"])
    val_key = "val_images" if data["val_images"] is not None else "train_images"
    selected = []
    for key in ("train_images", val_key):
        ids = _select_ids(full.ids, data[key])
        if not ids:
            raise ValueError(
                f"data.{key}={data[key]!r} selects no image: {full.ann_file} has "
                f"{len(full.ids)} images of split {data['split']!r}"
            )
        selected.append(ids)
    return full.subset(selected[0]), full.subset(selected[1])


def _seed_all(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _make_optimizers(model, tcfg: dict):
    opt = torch.optim.SGD(
        detector_parameters(model),
        lr=tcfg["lr"],
        momentum=tcfg["momentum"],
        weight_decay=tcfg["weight_decay"],
    )
    adv_params = adversary_parameters(model)
    adv_opt = (
        torch.optim.Adam(adv_params, lr=tcfg["adv_lr"], betas=(0.5, 0.999)) if adv_params else None
    )
    warm, iters = max(int(tcfg["warmup_iters"]), 0), int(tcfg["iters"])
    drop = int(float(tcfg["lr_drop_at"]) * iters)

    def factor(i: int) -> float:
        f = 0.1 if i >= drop else 1.0
        if i < warm:
            f *= 0.001 + (1 - 0.001) * i / warm
        return f

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, adv_opt, sched


def save_checkpoint(path, *, model, opt, adv_opt, sched, iteration: int, cfg: dict) -> Path:
    """Write every network, both optimizers, the schedule and RNG states, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "adv_optimizer": adv_opt.state_dict() if adv_opt is not None else None,
        "scheduler": sched.state_dict(),
        "iteration": iteration,
        "cfg": cfg,
        "rng": {
            "torch": torch.get_rng_state(),
            # Plain types, so `torch.load(weights_only=True)` (load_weights, --eval-only,
            # model.weights=...) can read this file too.
            "numpy": _numpy_state_plain(),
            "python": random.getstate(),
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _numpy_state_plain() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)


def load_checkpoint(path, *, model, opt=None, adv_opt=None, sched=None) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint dict."""
    state = load_torch_file(
        path, what="checkpoint", expected="a ganaug checkpoint", weights_only=False
    )
    if not isinstance(state, dict) or not {"model", "optimizer", "iteration"} <= set(state):
        raise ValueError(
            f"checkpoint {path}: not a ganaug det-train checkpoint (expected a dict with "
            "'model', 'optimizer', 'iteration', ...)"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ValueError(
            f"checkpoint {path} does not fit this config's model (another variant or "
            f"configuration?): {' '.join(lines[1:3])[:300]}"
        ) from err
    if opt is not None:
        opt.load_state_dict(state["optimizer"])
    if adv_opt is not None:
        if state.get("adv_optimizer") is None:
            raise ValueError(f"checkpoint {path} has no adversary optimizer state")
        adv_opt.load_state_dict(state["adv_optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    rng = state.get("rng")
    if rng:
        torch.set_rng_state(rng["torch"])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
    return state


def _batches(dataset, batch_size: int, generator: torch.Generator, start_iter: int):
    """Endless shuffled batches; resuming skips the batches already seen."""
    n_per_epoch = max(len(dataset) // batch_size, 1)
    epoch, skip = divmod(start_iter, n_per_epoch)
    while True:
        if hasattr(dataset, "set_epoch"):  # e.g. PasteDataset: fresh pastes each epoch
            dataset.set_epoch(epoch)
        order = torch.randperm(
            len(dataset),
            generator=torch.Generator().manual_seed(int(generator.initial_seed()) + epoch),
        )
        for b in range(skip, n_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size].tolist()
            yield collate_detection([dataset[i] for i in idx])
        skip = 0
        epoch += 1


def train_step(model, images, targets, *, opt, adv_opt, grad_clip: float | None = None) -> dict:
    """One optimisation step of the detector and the adversaries; returns float losses."""
    model.train()
    # Free the previous step's gradients before the forward, not after it: they would
    # otherwise sit next to this step's activations.
    opt.zero_grad(set_to_none=True)
    if adv_opt is not None:
        adv_opt.zero_grad(set_to_none=True)
    losses = model(images, targets)
    for name, value in losses.items():
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"loss {name} is {float(value)}; losses: "
                f"{ {k: float(v) for k, v in losses.items()} }"
            )
    total = sum(losses.values())
    total.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(detector_parameters(model), grad_clip)
    opt.step()
    if adv_opt is not None:
        adv_opt.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss_detector"] = sum(v for k, v in out.items() if not k.startswith(AUX_PREFIX))
    return out


@torch.no_grad()
def evaluate(model, dataset: CocoDetectionDataset, *, batch_size: int = 4) -> dict:
    """COCO box AP of ``model`` on ``dataset`` (see :func:`evaluate_coco_boxes`)."""
    model.eval()
    preds = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    for images, targets in loader:
        outputs = model(images)
        for out, tgt in zip(outputs, targets):
            preds.append({"image_id": tgt["image_id"], **out})
    return evaluate_coco_boxes(
        preds,
        ann_file=dataset.ann_file,
        cat_ids=dataset.cat_ids,
        class_names=dataset.class_names,
        image_ids=dataset.ids,
    )


_HISTORY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _append_history(out_dir: Path, iteration: int, ev: dict, ev_train: dict | None) -> None:
    record = {"iter": iteration, **{k: ev[k] for k in _HISTORY_KEYS}}
    if ev_train is not None:
        record.update({f"train_{k}": ev_train[k] for k in _HISTORY_KEYS})
    with open(out_dir / "eval_history.jsonl", "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _log_eval(model, iteration: int, val_ds, train_ds, tcfg: dict, out_dir: Path) -> None:
    """Evaluate mid-training without disturbing the training run's random stream."""
    # The DataLoader draws its base seed from the global generator: restore it, so a run
    # with intermediate evaluations trains exactly like one without.
    rng = torch.get_rng_state()
    bs = int(tcfg["eval_batch_size"])
    ev = evaluate(model, val_ds, batch_size=bs)
    ev_train = evaluate(model, train_ds, batch_size=bs) if train_ds is not None else None
    torch.set_rng_state(rng)
    _append_history(out_dir, iteration, ev, ev_train)
    logger.info(
        "iter %d: held-out AP %.2f AP50 %.2f%s",
        iteration,
        ev["AP"],
        ev["AP50"],
        "" if ev_train is None else f"; train AP {ev_train['AP']:.2f} AP50 {ev_train['AP50']:.2f}",
    )


def train(cfg: dict, *, resume: bool = False) -> dict:
    """Train per ``cfg`` (see :func:`load_config`), evaluate, write results to out_dir.

    Returns ``{"iterations", "seconds", "final_losses", "eval"}`` (``eval`` is None when
    ``train.eval_at_end`` is false).
    """
    tcfg = cfg["train"]
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = _seed_all(int(tcfg["seed"]))
    train_ds, val_ds = build_datasets(cfg)
    train_input = train_ds  # what the batches come from; evaluation sees train_ds
    if cfg.get("paste"):
        from .paste import paste_dataset_from_config

        train_input = paste_dataset_from_config(train_ds, cfg["paste"], seed=int(tcfg["seed"]))
    model = build_faster_rcnn(num_classes=train_ds.num_classes, **cfg["model"])
    opt, adv_opt, sched = _make_optimizers(model, tcfg)
    ckpt_path = out_dir / "checkpoint_last.pth"
    start = 0
    if resume:
        state = load_checkpoint(ckpt_path, model=model, opt=opt, adv_opt=adv_opt, sched=sched)
        start = int(state["iteration"])
        logger.info("resumed from %s at iteration %d", ckpt_path, start)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    logger.info(
        "training %s (%s) for %d iterations on %d images, batch %d -> %s",
        cfg["model"].get("variant", "baseline"),
        cfg["model"].get("backbone", "tiny"),
        tcfg["iters"],
        len(train_ds),
        tcfg["batch_size"],
        out_dir,
    )

    batches = _batches(train_input, int(tcfg["batch_size"]), gen, start)
    t0 = time.perf_counter()
    last: dict = {}
    log_path = out_dir / "metrics.jsonl"
    with open(log_path, "a") as log_file:
        for it in range(start, int(tcfg["iters"])):
            images, targets = next(batches)
            last = train_step(
                model, images, targets, opt=opt, adv_opt=adv_opt, grad_clip=tcfg["grad_clip"]
            )
            sched.step()
            heads = model.roi_heads
            if isinstance(heads, GanaugRoIHeads):
                last.update(heads.last_stats)
            period = int(tcfg["log_period"])
            if period and ((it + 1) % period == 0 or it + 1 == tcfg["iters"]):
                record = {"iter": it + 1, "lr": sched.get_last_lr()[0], **last}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                logger.info(
                    "iter %d/%d %s",
                    it + 1,
                    tcfg["iters"],
                    " ".join(f"{k}={v:.4g}" for k, v in last.items()),
                )
            ep = int(tcfg["eval_period"])
            if ep and (it + 1) % ep == 0 and it + 1 < int(tcfg["iters"]):
                _log_eval(model, it + 1, val_ds, train_ds if tcfg["eval_train"] else None, tcfg,
                          out_dir)  # fmt: skip
            cp = int(tcfg["checkpoint_period"])
            if cp and (it + 1) % cp == 0:
                save_checkpoint(
                    ckpt_path,
                    model=model,
                    opt=opt,
                    adv_opt=adv_opt,
                    sched=sched,
                    iteration=it + 1,
                    cfg=cfg,
                )
    seconds = time.perf_counter() - t0
    save_checkpoint(
        ckpt_path,
        model=model,
        opt=opt,
        adv_opt=adv_opt,
        sched=sched,
        iteration=int(tcfg["iters"]),
        cfg=cfg,
    )
    result = {"iterations": int(tcfg["iters"]), "seconds": seconds, "final_losses": last}
    result["eval"] = None
    if tcfg["eval_at_end"]:
        ev = evaluate(model, val_ds, batch_size=int(tcfg["eval_batch_size"]))
        result["eval"] = ev
        write_per_class_metrics(out_dir, ev, run=out_dir.name, class_counts=train_ds.class_counts())
        logger.info(
            "eval on %d images: AP %.2f AP50 %.2f APs %.2f APm %.2f APl %.2f",
            ev["num_images"],
            ev["AP"],
            ev["AP50"],
            ev["APs"],
            ev["APm"],
            ev["APl"],
        )
    if tcfg["eval_train"]:
        result["eval_train"] = evaluate(model, train_ds, batch_size=int(tcfg["eval_batch_size"]))
    if int(tcfg["eval_period"]) and result["eval"] is not None:
        _append_history(out_dir, int(tcfg["iters"]), result["eval"], result.get("eval_train"))
    write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, default=float))
    return result


def add_parser(subparsers) -> None:
    """``ganaug det-train``: train/evaluate a torchvision Faster R-CNN from a YAML config."""
    p = subparsers.add_parser(
        "det-train",
        help="train a torchvision Faster R-CNN (baseline/PGAN/ASDN/ASTN) from a YAML config",
    )
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/torchvision/*.yaml")
    p.add_argument("--out-dir", help="override out_dir")
    p.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")
    p.add_argument(
        "--eval-only", metavar="WEIGHTS", help="only evaluate these weights on the val images"
    )
    p.add_argument("opts", nargs="*", help="overrides as section.key=value (YAML values)")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    cfg = load_config(args.config, args.opts)
    if args.out_dir:
        cfg["out_dir"] = args.out_dir
    if args.eval_only:
        _, val_ds = build_datasets(cfg)
        model = build_faster_rcnn(
            num_classes=val_ds.num_classes, weights=args.eval_only, **cfg["model"]
        )
        ev = evaluate(model, val_ds, batch_size=int(cfg["train"]["eval_batch_size"]))
        # Beside the training run's own results, not over them: eval_<weights file stem>/.
        eval_dir = Path(cfg["out_dir"]) / f"eval_{Path(args.eval_only).stem}"
        eval_dir.mkdir(parents=True, exist_ok=True)
        write_per_class_metrics(eval_dir, ev, run=eval_dir.name)
        record = {"weights": str(args.eval_only), "eval": ev}
        write_text_atomic(eval_dir / "metrics.json", json.dumps(record, default=float))
        logger.info(
            "eval of %s on %d images: AP %.2f AP50 %.2f APs %.2f -> %s",
            args.eval_only, ev["num_images"], ev["AP"], ev["AP50"], ev["APs"], eval_dir,
        )  # fmt: skip
        return 0
    train(cfg, resume=args.resume)
    return 0
