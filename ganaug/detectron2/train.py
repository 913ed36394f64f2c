"""``GanaugTrainer``: detectron2's DefaultTrainer plus the adversary hook and COCO metrics.

* :meth:`GanaugTrainer.build_hooks` adds :class:`AdversaryOptimizerHook` when the model has
  a ganaug head, so its optimizer is saved with the trainer's checkpoint.
* :meth:`GanaugTrainer.build_train_loader` uses
  :class:`~ganaug.detectron2.paste_mapper.PasteDatasetMapper` when ``GANAUG.PASTE.ENABLED``.
* :meth:`GanaugTrainer.build_hooks` adds
  :class:`~ganaug.detectron2.paste_hook.LearnedPasteHook` when ``GANAUG.PASTE.LEARNED.ENABLED``.
* :meth:`GanaugTrainer.build_evaluator` is detectron2's ``COCOEvaluator`` (AP, AP50, AP75,
  APs/m/l and per-category AP, box task).
* :meth:`GanaugTrainer.test` also writes ``per_class_metrics.json`` (see
  :func:`write_per_class_metrics`) into ``OUTPUT_DIR/inference/<dataset>/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import weakref

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ganaug.atomic import write_text_atomic

from .data import class_counts
from .hooks import AdversaryOptimizerHook, attach_to_inner_trainer, find_adversaries
from .roi_heads import track_original_sizes

__all__ = ["GanaugTrainer", "per_class_metrics", "write_per_class_metrics"]

logger = logging.getLogger(__name__)


def per_class_metrics(
    bbox_results: dict, *, run: str, counts: dict[str, int] | None = None
) -> dict:
    """ganaug's per-class record from ``COCOEvaluator``'s ``results["bbox"]``.

    Categories without ground truth in the evaluated set (AP = NaN) are left out.
    AP values stay in COCOEvaluator's percent scale.
    """
    per_class = {}
    for key, value in bbox_results.items():
        if key.startswith("AP-") and not math.isnan(value):
            per_class[key[3:]] = float(value)
    summary = {
        k: float(bbox_results[k])
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
        if k in bbox_results and not math.isnan(bbox_results[k])
    }
    if "AP" in summary:
        summary["mAP"] = summary["AP"]
    record = {
        "task": "detection",
        "metric": "AP",
        "per_class": per_class,
        "summary": summary,
        "run": run,
    }
    if counts:
        record["class_counts"] = counts
    return record


def write_per_class_metrics(path: str | os.PathLike, record: dict) -> None:
    """Write ``record`` as JSON atomically (temp file + rename)."""
    path = os.fspath(path)
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True))


class GanaugTrainer(DefaultTrainer):
    """DefaultTrainer with the adversary optimizer hook and COCO evaluation.

    Also runs several CPU processes under ``launch`` (gloo): detectron2's own trainer
    passes ``device_ids=[rank]`` to DDP, which PyTorch rejects for a CPU model.
    """

    def __init__(self, cfg):
        # The same steps as DefaultTrainer.__init__, except the DDP wrapping.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if comm.get_world_size() > 1:
            on_cpu = next(model.parameters()).device.type == "cpu"
            device_ids = None if on_cpu else [comm.get_local_rank()]
            model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        for hook in self._hooks:
            if isinstance(hook, AdversaryOptimizerHook):
                attach_to_inner_trainer(self, hook)

    def build_hooks(self):
        hooks = super().build_hooks()
        if find_adversaries(self.model):
            # Before the checkpointer and writers: its state joins the trainer checkpoint
            # whatever the order, but its scalars should be written in the same iteration.
            hooks.insert(1, AdversaryOptimizerHook.from_config(self.cfg, self.model))
        learned = self.cfg.get("GANAUG", {}).get("PASTE", {}).get("LEARNED", None)
        if learned is not None and learned.ENABLED:
            from .paste_hook import LearnedPasteHook

            seed = self.cfg.SEED if self.cfg.SEED >= 0 else 0
            # After the LR scheduler (the extra step uses this iteration's LR), before the
            # checkpointer and writers.
            pos = next((i + 1 for i, h in enumerate(hooks) if type(h).__name__ == "LRScheduler"), 1)
            hooks.insert(pos, LearnedPasteHook(self.cfg, seed=seed))
        return hooks

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model; Perceptual-GAN heads also get the inputs' original sizes."""
        model = super().build_model(cfg)
        track_original_sizes(model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader; with ``GANAUG.PASTE.ENABLED`` its mapper pastes."""
        paste = cfg.get("GANAUG", {}).get("PASTE", None)
        if paste is not None and paste.ENABLED:
            from .paste_mapper import PasteDatasetMapper

            logger.info("ganaug: copy-paste in the training loader (GANAUG.PASTE.ENABLED)")
            return build_detection_train_loader(cfg, mapper=PasteDatasetMapper(cfg, True))
        return super().build_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and isinstance(results, dict):
            counts = class_counts(cfg.DATASETS.TRAIN)
            run = os.path.basename(os.path.normpath(cfg.OUTPUT_DIR))
            # One dataset gives its results directly, several give {name: results}.
            per_dataset = {cfg.DATASETS.TEST[0]: results} if "bbox" in results else results
            for name, res in per_dataset.items():
                if "bbox" not in res:
                    logger.warning(
                        "ganaug: no box results for %s (no predictions above "
                        "MODEL.ROI_HEADS.SCORE_THRESH_TEST?): per_class_metrics.json not written",
                        name,
                    )
                    continue
                record = per_class_metrics(res["bbox"], run=run, counts=counts)
                path = os.path.join(cfg.OUTPUT_DIR, "inference", name, "per_class_metrics.json")
                write_per_class_metrics(path, record)
                logger.info("ganaug: per-class AP of %s written to %s", name, path)
        return results
