"""IoU metric that also reports per-class IoU as metric keys and a JSON file."""

from __future__ import annotations

import json
import os
import os.path as osp

import numpy as np
from mmengine.dist import is_main_process
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from ganaug.atomic import write_text_atomic


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """mmseg's :class:`IoUMetric` plus ``IoU.<class>`` keys (percent) in its result.

    Args:
        per_class_json: optional path; the main process writes a ``per_class_metrics.json``
            there (task, metric, per_class, summary, run), the format ``ganaug compare``
            reads.
        run_name: stored in the JSON to tell runs apart.
        **kwargs: passed to :class:`IoUMetric`.
    """

    def __init__(self, per_class_json: str | None = None, run_name: str = "", **kwargs):
        super().__init__(**kwargs)
        self.per_class_json = per_class_json
        self.run_name = run_name

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        if not results:
            return metrics
        cols = tuple(zip(*results))
        inter = sum(cols[0]).cpu().numpy().astype(np.float64)
        union = sum(cols[1]).cpu().numpy().astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / union
        classes = self.dataset_meta["classes"]
        per_class = {}
        for name, value in zip(classes, iou):
            value = float(np.round(value * 100, 2)) if np.isfinite(value) else float("nan")
            metrics[f"IoU.{name}"] = value
            per_class[name] = value
        if self.per_class_json and is_main_process():
            os.makedirs(osp.dirname(osp.abspath(self.per_class_json)), exist_ok=True)
            payload = dict(
                task="segmentation",
                metric="IoU",
                per_class=per_class,
                summary={k: float(v) for k, v in metrics.items() if not k.startswith("IoU.")},
                run=self.run_name,
            )
            write_text_atomic(self.per_class_json, json.dumps(payload, indent=2))
        return metrics
