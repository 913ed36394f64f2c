"""Same-budget comparison of paste methods on segmentation (tiny, CPU-sized).

Datasets: ``camvid`` (street scenes, 11 classes) and ``magnetic-tile`` (greyscale tiles,
background + 5 defect types; defects cut from their binary masks with
``InstanceBank.from_binary_masks`` are pasted onto defect-free ``MT_Free`` tiles at native
resolution, then every sample is resized; half of each defect class's images train, half
test, with 240 / 120 ``MT_Free`` tiles). Per-class IoU and pixel recall on the test split.

Methods: ``baseline`` (no paste), ``random`` (copy-paste, instance drawn uniformly from
the bank, so classes follow their segment counts), ``imbalance`` (inverse pixel frequency
with smoothing), ``learned`` (task-aware placement, Tripathi et al. 2019, trained online
against the segmenter; classes chosen as in ``imbalance``). Every method trains the same
network for the same number of iterations and batch size; per-class IoU on the val split,
mean ± std over seeds, is written as a Markdown table, a JSON file, one
``per_class_metrics.json`` per run, and a plot.

    nice -n 10 .venv/bin/python tools/paste_effect.py --iters 200 --seeds 0 1 \
        --out outputs/paste_effect
    .venv/bin/python tools/paste_effect.py --dataset magnetic-tile \
        --methods baseline random imbalance --iters 300 --size 128 128 \
        --out outputs/paste_mt
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganaug.core.paste import ClassSampler, CopyPaste, InstanceBank, instances_from_label_map
from ganaug.core.paste.data import (
    CAMVID_CLASSES,
    CAMVID_IGNORE,
    MAGNETIC_TILE_CLASSES,
    camvid_pairs,
    magnetic_tile_items,
)
from ganaug.core.paste.learned import (
    PlacementSynthesizer,
    RealismDiscriminator,
    TaskAwarePaste,
    instances_to_rgba,
)
from ganaug.data_root import dataset_dir

logger = logging.getLogger("paste_effect")

METHODS = ("baseline", "random", "imbalance", "learned")
# Object-like classes that can be cut out and pasted (stuff such as road or sky cannot).
PASTE_CLASSES = (2, 6, 7, 8, 9, 10)  # Pole, SignSymbol, Fence, Car, Pedestrian, Bicyclist


def load_split(root: Path, split: str, size: tuple[int, int]):
    h, w = size
    imgs, labs = [], []
    for img_p, lab_p in camvid_pairs(root, split):
        img = cv2.cvtColor(cv2.imread(str(img_p)), cv2.COLOR_BGR2RGB)
        lab = cv2.imread(str(lab_p), cv2.IMREAD_UNCHANGED)
        imgs.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
        labs.append(cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST))
    return np.stack(imgs), np.stack(labs)


class MiniUNet(nn.Module):
    """Three-level encoder-decoder (~0.1 M parameters at width 16)."""

    def __init__(self, num_classes: int = 11, width: int = 24, in_ch: int = 3):
        super().__init__()

        def block(cin, cout, stride=1):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        w = width
        self.e1, self.e2, self.e3 = block(in_ch, w), block(w, 2 * w, 2), block(2 * w, 4 * w, 2)
        self.d2, self.d1 = block(6 * w, 2 * w), block(3 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        x = (x - 0.45) / 0.25
        f1 = self.e1(x)
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        u2 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.d2(torch.cat([u2, f2], 1))
        u1 = F.interpolate(d2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.d1(torch.cat([u1, f1], 1)))


def seg_loss_fn(model, ignore_index=CAMVID_IGNORE):
    def fn(images, targets):
        logits = model(torch.stack(list(images)))
        labels = torch.stack([torch.as_tensor(t["label_map"]).long() for t in targets])
        return {"loss_ce": F.cross_entropy(logits, labels, ignore_index=ignore_index)}

    return fn


def _to_tensor(imgs):
    x = torch.from_numpy(np.ascontiguousarray(imgs)).float() / 255
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


def evaluate(model, imgs, labs, num_classes=11, ignore=CAMVID_IGNORE):
    """Per-class IoU and pixel recall, ``(num_classes,)`` each (NaN where undefined)."""
    model.eval()
    conf = np.zeros((num_classes, num_classes), np.int64)
    with torch.no_grad():
        for i in range(0, len(imgs), 16):
            pred = model(_to_tensor(imgs[i : i + 16])).argmax(1).numpy()
            gt = labs[i : i + 16]
            ok = gt != ignore
            conf += np.bincount(
                gt[ok].astype(np.int64) * num_classes + pred[ok], minlength=num_classes**2
            ).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    gt_px = conf.sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    recall = np.where(gt_px > 0, inter / np.maximum(gt_px, 1), np.nan)
    return iou, recall


def build_bank(imgs, labs):
    bank = InstanceBank()
    for i, (img, lab) in enumerate(zip(imgs, labs)):
        for inst in instances_from_label_map(
            img, lab, classes=PASTE_CLASSES, min_area=12, source=f"train{i}"
        ):
            bank.add(inst)
    return bank


def load_magnetic_tile(root: Path, size: tuple[int, int], *, n_free=(240, 120), split_seed=0):
    """Full-resolution training tiles, resized test tiles, and the defect bank.

    Half of each defect class's images (fixed permutation) train, half test; ``MT_Free``
    tiles are split ``n_free`` (train, test). Label maps hold the class index (0 = free).
    """
    h, w = size
    rng = np.random.default_rng(split_seed)
    items = magnetic_tile_items(root)
    free = sorted((root / "MT_Free").glob("*.jpg"))
    free = [free[i] for i in rng.permutation(len(free))[: sum(n_free)]]
    train, test = [], []
    for c in range(1, len(MAGNETIC_TILE_CLASSES)):
        mine = [it for it in items if it[2] == c]
        order = rng.permutation(len(mine))
        half = len(mine) // 2
        train += [mine[i] for i in order[:half]]
        test += [mine[i] for i in order[half:]]
    train += [(p, p.with_suffix(".png"), 0) for p in free[: n_free[0]]]
    test += [(p, p.with_suffix(".png"), 0) for p in free[n_free[0] :]]

    def read(item):
        img_p, mask_p, c = item
        img = cv2.imread(str(img_p), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(mask_p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise FileNotFoundError(f"cannot read {img_p}")
        lab = np.zeros(img.shape, np.uint8)
        if mask is not None and mask.shape == img.shape:
            lab[mask >= 128] = c
        return img, lab

    tr = [read(it) for it in train]
    te = [read(it) for it in test]
    te_img = np.stack([cv2.resize(i, (w, h), interpolation=cv2.INTER_AREA) for i, _ in te])
    te_lab = np.stack([cv2.resize(lb, (w, h), interpolation=cv2.INTER_NEAREST) for _, lb in te])
    bank = InstanceBank.from_binary_masks(
        [(p, m, c) for p, m, c in train if c > 0], threshold=128, min_area=4
    )
    # Imbalance = training images per defect type (the dataset's 30:1 class imbalance).
    counts = {c: sum(1 for it in train if it[2] == c) for c in bank.classes}
    return {
        "train": tr, "free": np.array([it[2] == 0 for it in train]),
        "va_img": te_img, "va_lab": te_lab, "bank": bank, "counts": counts,
        "class_counts": {MAGNETIC_TILE_CLASSES[c]: sum(1 for it in train if it[2] == c)
                         for c in range(len(MAGNETIC_TILE_CLASSES))},
        "names": MAGNETIC_TILE_CLASSES, "ignore": 255, "in_ch": 1, "size": (h, w),
    }  # fmt: skip


def run(method, seed, data, args):
    bank, names = data["bank"], data["names"]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MiniUNet(num_classes=len(names), width=args.width, in_ch=data["in_ch"])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = seg_loss_fn(model, data["ignore"])
    counts = {c: data["counts"][c] for c in bank.classes}
    inverse = ClassSampler.inverse_frequency(counts, smoothing=1.0, power=args.power)
    seg_counts = {c: len(bank[c]) for c in bank.classes}
    paste = None
    if method == "random":
        paste = CopyPaste(bank=bank, sampler=ClassSampler(weights=seg_counts), **args.paste_kw)
    elif method == "imbalance":
        paste = CopyPaste(bank=bank, sampler=inverse, **args.paste_kw)
    tap = None
    if method == "learned":
        tap = TaskAwarePaste(
            synthesizer=PlacementSynthesizer(in_size=32, width=8, scale_range=(0.08, 0.5)),
            discriminator=RealismDiscriminator(in_size=32, width=8),
            min_pixels=8,
        )
    h, w = data["size"]
    n_train = len(data["train"]) if "train" in data else len(data["tr_img"])
    step_times = []
    for _ in range(args.iters):
        idx = rng.integers(0, n_train, args.batch)
        if "train" in data:
            # Magnetic tile: paste at native resolution onto defect-free tiles only, then
            # resize every sample (pasted or not) the same way.
            imgs, labs = [], []
            for i in idx:
                im, lb = data["train"][i]
                if paste is not None and data["free"][i]:
                    im, t = paste(im, {"labels": [], "label_map": lb}, rng=rng)
                    lb = t["label_map"]
                imgs.append(cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA))
                labs.append(cv2.resize(lb, (w, h), interpolation=cv2.INTER_NEAREST))
            imgs, labs = np.stack(imgs), np.stack(labs)
        else:
            imgs, labs = data["tr_img"][idx], data["tr_lab"][idx]
            if paste is not None:
                pairs = [
                    paste(im, {"labels": [], "label_map": lb}, rng=rng)
                    for im, lb in zip(imgs, labs)
                ]
                imgs = np.stack([p[0] for p in pairs])
                labs = np.stack([p[1]["label_map"] for p in pairs])
        x = list(_to_tensor(imgs))
        targets = [{"label_map": torch.from_numpy(lb.astype(np.int64))} for lb in labs]
        t0 = time.perf_counter()
        if tap is not None and rng.random() < args.paste_kw["prob"]:
            classes = inverse.sample(rng, len(x))
            insts = [bank[c][int(rng.integers(len(bank[c])))] for c in classes]
            tap.online_step(
                target_fn=loss_fn, target_optimizer=opt, images=x, targets=targets,
                foregrounds=instances_to_rgba(insts, size=32), labels=classes,
            )  # fmt: skip
        else:
            model.train()
            loss = sum(loss_fn(x, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step_times.append(time.perf_counter() - t0)
    iou, recall = evaluate(model, data["va_img"], data["va_lab"], len(names), data["ignore"])
    return iou, recall, float(np.median(step_times))


def _load_camvid(size):
    root = dataset_dir("camvid")
    tr_img, tr_lab = load_split(root, "train", tuple(size))
    va_img, va_lab = load_split(root, "val", tuple(size))
    vals, cnt = np.unique(tr_lab, return_counts=True)
    pixel_counts = {int(v): int(n) for v, n in zip(vals, cnt) if v != CAMVID_IGNORE}
    bank = build_bank(tr_img, tr_lab)
    return {
        "tr_img": tr_img, "tr_lab": tr_lab, "va_img": va_img, "va_lab": va_lab,
        "bank": bank, "counts": pixel_counts,
        "class_counts": {CAMVID_CLASSES[c]: n for c, n in pixel_counts.items()},
        "names": CAMVID_CLASSES, "ignore": CAMVID_IGNORE, "in_ch": 3, "size": tuple(size),
    }  # fmt: skip


DET_VARIANTS = ("baseline", "paste_random", "paste_imbalance")


def summarize_det(out: Path, seeds=(0, 1)) -> str:
    """Tables for the coco128 ``det-train`` runs ``out/<variant>_seed<k>/metrics.json``.

    Summary AP on held-out and on training images, and per-class AP on the training
    images grouped by training-set frequency (plus every class in ``det_per_class.md``).
    Also writes each run's training-image per-class AP as ``per_class_metrics_train.json``.
    """
    runs: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    for v in DET_VARIANTS:
        for k in seeds:
            d = out / f"{v}_seed{k}"
            if not (d / "metrics.json").is_file():
                continue
            m = json.loads((d / "metrics.json").read_text())
            pc = json.loads((d / "per_class_metrics.json").read_text())
            counts = pc.get("class_counts") or counts
            (d / "per_class_metrics_train.json").write_text(json.dumps({
                "task": "detection", "metric": "AP",
                "per_class": m["eval_train"]["per_category_AP"], "class_counts": counts,
                "summary": {"mAP": m["eval_train"]["AP"]}, "run": f"{v}_seed{k}_train",
            }, indent=1))  # fmt: skip
            runs.setdefault(v, []).append(m)

    def cell(vals):
        vals = np.asarray(vals, dtype=float)
        return f"{np.nanmean(vals):.2f} ± {np.nanstd(vals):.2f}" if vals.size else "-"

    names = list(runs)
    rows = ["| metric | " + " | ".join(f"{v} (n={len(runs[v])})" for v in names) + " |",
            "|---|" + "---|" * len(names)]  # fmt: skip
    for split, key in (("held-out (32 img)", "eval"), ("training (96 img)", "eval_train")):
        for met in ("AP", "AP50", "APs", "APm", "APl"):
            rows.append(f"| {split} {met} | "
                        + " | ".join(cell([r[key][met] for r in runs[v]]) for v in names)
                        + " |")  # fmt: skip
    bins = (("frequent (>= 20 train objects)", 20, 10**9), ("medium (5-19)", 5, 19),
            ("rare (1-4)", 1, 4))  # fmt: skip
    for title, lo, hi in bins:
        cls = [c for c, n in counts.items() if lo <= n <= hi]
        vals = {v: [np.nanmean([r["eval_train"]["per_category_AP"].get(c, np.nan)
                                for c in cls]) for r in runs[v]] for v in names}  # fmt: skip
        rows.append(f"| training AP, {title}, {len(cls)} classes | "
                    + " | ".join(cell(vals[v]) for v in names) + " |")  # fmt: skip
    for title, lo, hi in bins:
        cls = [c for c, n in counts.items() if lo <= n <= hi]
        vals = {v: [np.mean([r["eval_train"]["per_category_AP"].get(c, 0.0) > 0 for c in cls])
                    * 100 for r in runs[v]] for v in names}  # fmt: skip
        rows.append(f"| % of {title} classes with training AP > 0 | "
                    + " | ".join(cell(vals[v]) for v in names) + " |")  # fmt: skip
    table = "\n".join(rows)
    per = ["| class | train objects | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]  # fmt: skip
    for c, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if n == 0:
            continue
        per.append(f"| {c} | {n} | " + " | ".join(
            cell([r["eval_train"]["per_category_AP"].get(c, np.nan) for r in runs[v]])
            for v in names) + " |")  # fmt: skip
    (out / "det_table.md").write_text(table + "\n")
    (out / "det_per_class.md").write_text("\n".join(per) + "\n")
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("camvid", "magnetic-tile"), default="camvid")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--size", type=int, nargs=2, default=[90, 120], metavar=("H", "W"))
    p.add_argument("--width", type=int, default=16, help="segmenter base width")
    p.add_argument("--power", type=float, default=0.5, help="inverse-frequency exponent")
    p.add_argument("--blend", default="gaussian")
    p.add_argument("--count", type=int, nargs=2, default=[1, 3], help="pastes per image")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="outputs/paste_effect")
    p.add_argument("--summarize-det", action="store_true",
                   help="only summarise the coco128 det-train runs under --out")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.summarize_det:
        print(summarize_det(Path(args.out), seeds=args.seeds))
        return
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    args.paste_kw = dict(count=tuple(args.count), scale=(0.7, 1.3), blend_mode=args.blend,
                         prob=0.8, max_rotation=5.0)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.dataset == "camvid":
        data = _load_camvid(args.size)
    else:
        data = load_magnetic_tile(dataset_dir("magnetic-tile"), tuple(args.size))
    names, bank = data["names"], data["bank"]
    logger.info("bank: %s", {names[c]: len(bank[c]) for c in bank.classes})

    results = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = out / f"{method}_seed{seed}"
            done = run_dir / "run.json"
            if done.is_file():  # resumable: finished runs are read back
                results.setdefault(method, []).append(json.loads(done.read_text()))
                continue
            t0 = time.time()
            iou, recall, step = run(method, seed, data, args)
            res = {"iou": iou.tolist(), "recall": recall.tolist(), "step_s": step}
            results.setdefault(method, []).append(res)
            run_dir.mkdir(exist_ok=True)
            (run_dir / "per_class_metrics.json").write_text(json.dumps({
                "task": "segmentation", "metric": "IoU",
                "per_class": {n: round(float(v) * 100, 2) for n, v in zip(names, iou)},
                "class_counts": data["class_counts"],
                "summary": {"mIoU": round(float(np.nanmean(iou)) * 100, 2)},
                "run": f"{method}_seed{seed}",
            }, indent=1))  # fmt: skip
            done.write_text(json.dumps(res))
            logger.info("%s seed %d: mIoU %.4f (%.0f s, median step %.3f s)", method, seed,
                        np.nanmean(iou), time.time() - t0, step)  # fmt: skip

    counts = data["class_counts"]
    unit = "train px %" if args.dataset == "camvid" else "train images"
    total = sum(counts.values())
    order = sorted(range(len(names)), key=lambda c: -counts.get(names[c], 0))
    summary = {}
    for m, runs in results.items():
        arr = np.array([r["iou"] for r in runs], dtype=float) * 100
        rec = np.array([r["recall"] for r in runs], dtype=float) * 100
        summary[m] = {"mean": np.nanmean(arr, 0).tolist(), "std": np.nanstd(arr, 0).tolist(),
                      "recall_mean": np.nanmean(rec, 0).tolist(),
                      "recall_std": np.nanstd(rec, 0).tolist(),
                      "miou": [float(np.nanmean(a)) for a in arr],
                      "step_s": [r["step_s"] for r in runs]}  # fmt: skip
    tables = []
    for key, title in (("", "IoU (%)"), ("recall_", "pixel recall (%)")):
        rows = [f"| class ({title}) | {unit} | " + " | ".join(results) + " |",
                "|---|---|" + "---|" * len(results)]  # fmt: skip
        for c in order:
            cells = [f"{summary[m][key + 'mean'][c]:.1f} ± {summary[m][key + 'std'][c]:.1f}"
                     for m in results]  # fmt: skip
            n = counts.get(names[c], 0)
            share = f"{100 * n / total:.2f}" if args.dataset == "camvid" else str(n)
            rows.append(f"| {names[c]} | {share} | " + " | ".join(cells) + " |")
        if not key:
            cells = [f"{np.mean(summary[m]['miou']):.1f} ± {np.std(summary[m]['miou']):.1f}"
                     for m in results]  # fmt: skip
            rows.append("| **mIoU** | | " + " | ".join(cells) + " |")
            cells = [f"{np.median(summary[m]['step_s']) * 1000:.0f} ms" for m in results]
            rows.append("| train step (median) | | " + " | ".join(cells) + " |")
        tables.append("\n".join(rows))
    table = "\n\n".join(tables)
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                            if k != "paste_kw"},
                                                   "results": summary}, indent=1))  # fmt: skip
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=80)
    width = 0.8 / len(results)
    for k, m in enumerate(results):
        xs = np.arange(len(order)) + k * width
        ax.bar(xs, [summary[m]["mean"][c] for c in order], width,
               yerr=[summary[m]["std"][c] for c in order], label=m)  # fmt: skip
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2)
    ax.set_xticklabels([names[c] for c in order], rotation=30, fontsize=8)
    ax.set_ylabel("test IoU (%)")
    ax.set_title(f"{args.dataset} {args.size[0]}x{args.size[1]}, {args.iters} it x "
                 f"{args.batch}, seeds {args.seeds}", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "paste_effect.png")


if __name__ == "__main__":
    main()
