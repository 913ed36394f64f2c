"""The classification comparison: GAN oversampling beside four baselines, several seeds.

For each seed: train the class-conditional GAN on the real training set, train the ``plain``
classifier (also the in-domain feature extractor for FID/KID and the confidence filter),
generate and write the oversampled set, then train and evaluate every other method on the
same split. Results: ``results.json``, ``results.md`` (mean ± std), one confusion matrix PNG
per method (summed over seeds) and ``<method>/per_class_metrics.json``.

Config (YAML) top-level keys: ``run``, ``output_dir``, ``dataset``, ``methods``, ``seeds``,
``classifier`` (:class:`~ganaug.classification.train.TrainConfig`), ``gan``
(:class:`~ganaug.core.cgan.CGANConfig`), ``oversample``
(:class:`~ganaug.classification.oversample.OversampleConfig`), ``quality`` (bool),
``device`` and ``threads`` (torch intra-op threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ganaug.atomic import write_text_atomic
from ganaug.classification.data import (
    ImageSet,
    load_fashion_mnist_lt,
    load_image_folder,
    load_magnetic_tile,
    stratified_split,
)
from ganaug.classification.metrics import (
    classification_report,
    save_confusion_png,
    write_per_class_metrics,
)
from ganaug.classification.oversample import OversampleConfig, Oversampler, write_image_set
from ganaug.classification.train import (
    METHODS,
    TrainConfig,
    check_model_name,
    extract_features,
    predict,
    predict_proba,
    train_classifier,
)
from ganaug.core.cgan import CGANConfig, CGANTrainer

logger = logging.getLogger(__name__)

DATASETS = ("magnetic_tile", "fashion_mnist_lt", "image_folder")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML config and apply ``a.b=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping, got {type(cfg).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def load_dataset(dcfg: dict) -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` for the ``dataset:`` section of a config."""
    dcfg = dict(dcfg)
    name = dcfg.pop("name", None)
    size = dcfg.pop("image_size", 32)
    split = {
        "test_fraction": dcfg.pop("test_fraction", 0.3),
        "seed": dcfg.pop("split_seed", 0),
    }
    if name == "magnetic_tile":
        data = load_magnetic_tile(dcfg.pop("root", None), image_size=size, **dcfg)
        return stratified_split(data, **split)
    if name == "image_folder":
        if "root" not in dcfg:
            raise ValueError("dataset.name=image_folder needs dataset.root")
        data = load_image_folder(dcfg.pop("root"), image_size=size, **dcfg)
        return stratified_split(data, **split)
    if name == "fashion_mnist_lt":
        return load_fashion_mnist_lt(dcfg.pop("root", None), image_size=size, **dcfg)
    raise ValueError(f"dataset.name must be one of {DATASETS}, got {name!r}")


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v == v], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def run_comparison(cfg: dict, *, output_dir: str | os.PathLike | None = None) -> dict:
    """Run the comparison described by ``cfg`` (see the module docstring); returns the
    aggregated results also written to ``results.json``."""
    run = cfg.get("run", "cls")
    out = Path(output_dir or cfg.get("output_dir") or f"work_dirs/cls/{run}")
    out.mkdir(parents=True, exist_ok=True)
    methods = list(cfg.get("methods", METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
    seeds = list(cfg.get("seeds", [0, 1, 2]))
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. seeds: [0, 1, 2]")
    tcfg = TrainConfig(**cfg.get("classifier", {}))
    check_model_name(tcfg.model)  # fail before any training
    gcfg_dict = dict(cfg.get("gan", {}))
    ocfg = OversampleConfig(**cfg.get("oversample", {}))
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.get("threads"):
        # On a shared CPU one intra-op thread wastes less time spinning than two.
        torch.set_num_threads(int(cfg["threads"]))

    train, test = load_dataset(cfg.get("dataset", {}))
    names = train.class_names
    counts = dict(zip(names, train.class_counts()))
    logger.info("train counts %s; test counts %s", counts, test.class_counts())
    gcfg_dict.setdefault("image_size", train.images.shape[-1])
    gcfg_dict.setdefault("channels", train.images.shape[1])

    per_seed: dict[str, list[dict]] = {m: [] for m in methods}
    gan_info: list[dict] = []
    for seed in seeds:
        plain_model = None
        synthetic = None
        if "plain" in methods or "gan" in methods:
            t0 = time.perf_counter()
            plain_model = train_classifier(
                train, method="plain", config=tcfg, seed=seed, device=device
            )
            plain_seconds = time.perf_counter() - t0
            logger.info("seed %d: plain classifier trained in %.1fs", seed, plain_seconds)
        if "gan" in methods:
            synthetic, info = _gan_oversample(
                train, plain_model, gcfg_dict, ocfg, seed=seed, device=device, out=out, cfg=cfg
            )
            gan_info.append(info)
        for method in methods:
            t0 = time.perf_counter()
            if method == "plain":
                model = plain_model
            else:
                model = train_classifier(
                    train,
                    method=method,
                    config=tcfg,
                    seed=seed,
                    device=device,
                    synthetic=synthetic if method == "gan" else None,
                )
            rep = classification_report(test.labels, predict(model, test.images), class_names=names)
            rep["seed"] = seed
            # plain was trained before the GAN: count its own training time.
            rep["train_seconds"] = plain_seconds if method == "plain" else time.perf_counter() - t0
            per_seed[method].append(rep)
            logger.info(
                "seed %d %-20s balanced acc %.4f  macro-F1 %.4f",
                seed,
                method,
                rep["balanced_accuracy"],
                rep["macro_f1"],
            )
        # Written after every seed, so an interrupted run still leaves its finished seeds.
        results = _aggregate(per_seed, names, counts, run=run, out=out)
        results.update(
            run=run,
            seeds=seeds,
            seeds_done=seeds[: seeds.index(seed) + 1],
            train_counts=counts,
            test_counts=dict(zip(names, test.class_counts())),
            classifier=vars(tcfg),
            gan=gan_info,
            config=cfg,
        )
        write_text_atomic(out / "results.json", json.dumps(results, indent=1, default=str))
        write_text_atomic(out / "results.md", format_table(results))
    logger.info("results in %s\n%s", out, format_table(results))
    return results


def _gan_oversample(train, plain_model, gcfg_dict, ocfg, *, seed, device, out, cfg):
    gcfg = CGANConfig(**gcfg_dict)
    trainer = CGANTrainer(num_classes=train.num_classes, config=gcfg, device=device, seed=seed)
    t0 = time.perf_counter()
    trainer.fit(train.as_float(), train.labels)
    gan_seconds = time.perf_counter() - t0
    logger.info("seed %d: cGAN (%s, %s) trained in %.1fs", seed, gcfg.arch, gcfg.loss, gan_seconds)
    torch.save(trainer.state_dict(), out / f"gan_seed{seed}.pth")

    def feats(x):
        return extract_features(plain_model, x)

    sampler = Oversampler(
        sample_fn=trainer.sample,
        config=ocfg,
        classifier=lambda x: predict_proba(plain_model, x),
        feature_fn=feats,
        seed=seed,
    )
    t0 = time.perf_counter()
    synthetic = sampler.generate(train)
    gen_seconds = time.perf_counter() - t0
    write_image_set(
        synthetic,
        out / f"generated_seed{seed}",
        overwrite=True,
        manifest={
            "run": cfg.get("run"),
            "seed": seed,
            "gan": vars(gcfg),
            "oversample": vars(ocfg),
            "gan_checkpoint": f"gan_seed{seed}.pth",
            "per_class": sampler.stats,
        },
    )
    info = {
        "seed": seed,
        "gan_train_seconds": gan_seconds,
        "gan_seconds_per_epoch": gan_seconds / max(gcfg.epochs, 1),
        "generated": sum(s.startswith("generated:") for s in synthetic.sources),
        "generate_seconds": gen_seconds,
        "per_class": sampler.stats,
    }
    if cfg.get("quality", True):
        from ganaug.classification.quality import per_class_fid_kid

        gen_only = synthetic.subset(
            [i for i, s in enumerate(synthetic.sources) if s.startswith("generated:")]
        )
        info["fid_kid"] = per_class_fid_kid(train, gen_only, feature_fn=feats, seed=seed)
    return synthetic, info


def _aggregate(per_seed, names, counts, *, run, out) -> dict:
    table = {}
    for method, reps in per_seed.items():
        if not reps:
            continue
        row = {}
        for key in ("balanced_accuracy", "macro_f1", "accuracy"):
            row[key] = _mean_std([r[key] for r in reps])
        row["per_class_recall"] = {
            n: _mean_std([r["per_class_recall"][n] for r in reps]) for n in names
        }
        cm = np.sum([np.asarray(r["confusion_matrix"]) for r in reps], axis=0)
        row["confusion_matrix_sum"] = cm.tolist()
        png = save_confusion_png(
            cm,
            out / f"confusion_{method}.png",
            class_names=names,
            title=f"{run}: {method} (sum over {len(reps)} seeds)",
        )
        row["confusion_png"] = str(png)
        write_per_class_metrics(
            out / method / "per_class_metrics.json",
            per_class={n: row["per_class_recall"][n][0] for n in names},
            summary={
                "balanced_accuracy": row["balanced_accuracy"][0],
                "macro_f1": row["macro_f1"][0],
            },
            run=f"{run}/{method}",
            metric="recall",
            class_counts=counts,
        )
        row["per_seed"] = reps
        table[method] = row
    return {"methods": table}


def format_table(results: dict) -> str:
    """Markdown table: balanced accuracy, macro-F1 (mean ± std) and per-class recall."""
    methods = results["methods"]
    if not methods:
        return "(no results)\n"
    names = list(next(iter(methods.values()))["per_class_recall"])
    head = "| method | balanced acc | macro-F1 | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    for m, row in methods.items():
        ba, f1 = row["balanced_accuracy"], row["macro_f1"]
        rec = " | ".join(f"{row['per_class_recall'][n][0]:.2f}" for n in names)
        lines.append(f"| {m} | {ba[0]:.3f} ± {ba[1]:.3f} | {f1[0]:.3f} ± {f1[1]:.3f} | {rec} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cls-compare",
        help="classification: GAN oversampling vs plain / random oversampling / "
        "class-weighted / focal, several seeds",
    )
    p.add_argument("--config", required=True, help="YAML, e.g. configs/classification/*.yaml")
    p.add_argument("--output-dir", default=None, help="default: the config's output_dir")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override seeds")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set gan.epochs=5 (repeatable)",
    )
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    if args.methods is not None:
        cfg["methods"] = args.methods
    run_comparison(cfg, output_dir=args.output_dir)
    return 0
