"""Imbalance-aware classification metrics, confusion-matrix plots and the
``per_class_metrics.json`` file read by ``ganaug compare``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ganaug.atomic import write_text_atomic


def confusion_matrix(targets: Tensor, preds: Tensor, *, num_classes: int) -> Tensor:
    """Counts ``cm[i, j]`` of true class ``i`` predicted as ``j``.

    Shape:
        - targets, preds: ``(N,)`` int64; output: ``(num_classes, num_classes)`` int64
    """
    if targets.shape != preds.shape:
        raise ValueError(
            f"targets and preds must have the same shape, got {tuple(targets.shape)} and "
            f"{tuple(preds.shape)}"
        )
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def classification_report(targets: Tensor, preds: Tensor, *, class_names: list[str]) -> dict:
    """Balanced accuracy, macro-F1, accuracy, per-class recall / precision / F1.

    Classes absent from ``targets`` get recall NaN and are left out of balanced accuracy and
    macro-F1 (their F1 is undefined), so a missing test class cannot silently count as 0.
    """
    k = len(class_names)
    cm = confusion_matrix(targets, preds, num_classes=k).double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.zeros_like(tp))
    f1 = torch.where(support > 0, f1, torch.nan)
    present = support > 0
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "accuracy": float(tp.sum() / cm.sum().clamp(min=1)),
        "per_class_recall": dict(zip(class_names, recall.tolist())),
        "per_class_precision": dict(zip(class_names, precision.tolist())),
        "per_class_f1": dict(zip(class_names, f1.tolist())),
        "confusion_matrix": cm.long().tolist(),
    }


def save_confusion_png(
    cm: list[list[int]] | Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    class_names: list[str],
    title: str = "",
) -> Path:
    """Row-normalised confusion matrix with counts, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=90)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_per_class_metrics(
    path: str | os.PathLike,
    *,
    per_class: dict[str, float],
    summary: dict[str, float],
    run: str,
    metric: str = "recall",
    class_counts: dict[str, int] | None = None,
) -> Path:
    """Write ``per_class_metrics.json`` in the project-wide shape (see ``ganaug compare``)."""
    doc = {
        "task": "classification",
        "metric": metric,
        "per_class": {k: (None if v != v else float(v)) for k, v in per_class.items()},
        "summary": {k: float(v) for k, v in summary.items()},
        "run": run,
    }
    if class_counts is not None:
        doc["class_counts"] = {k: int(v) for k, v in class_counts.items()}
    return write_text_atomic(path, json.dumps(doc, indent=2))
