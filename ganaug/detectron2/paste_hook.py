"""``LearnedPasteHook``: learned task-aware compositing (Tripathi et al., CVPR 2019) online.

Every ``GANAUG.PASTE.LEARNED.PERIOD`` iterations, after the trainer's own step, the hook
runs one :meth:`~ganaug.core.paste.learned.TaskAwarePaste.online_step` against the model
being trained, through :func:`~ganaug.detectron2.paste_mapper.detectron2_target_fn`:

* a few training images (resized and flipped as the training loader does) each get one
  foreground from the copy-paste bank (classes chosen by ``GANAUG.PASTE.SELECTION``),
  placed by the synthesizer (scale, rotation, translation through a spatial transformer);
* the detector takes one extra SGD step on the composites (its optimizer, its gradient
  clipping); the composites reach it through a gradient-reversal layer, so the same
  backward makes the synthesizer *ascend* the detector's loss, while the realism term
  pulls it towards composites the discriminator accepts; then the discriminator steps.

ganaug's adversary networks (PGAN discriminator, ASDN, ASTN), if the model has them, are
stepped by their own hook's Adam before the detector's SGD, as in a normal iteration.
The synthesizer, discriminator and their optimizers are saved in the trainer checkpoint.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ganaug.core.paste.learned import (
    PlacementSynthesizer,
    RealismDiscriminator,
    TaskAwarePaste,
    instances_to_rgba,
)

from .hooks import AdversaryOptimizerHook
from .paste_mapper import build_copy_paste, detectron2_target_fn

__all__ = ["LearnedPasteHook"]

logger = logging.getLogger(__name__)


class _AdversariesThenDetector:
    """The optimizer ``online_step`` steps: adversaries' Adam first (it clears their
    gradients), then the detector's optimizer, as ``SimpleTrainer`` + our hook do."""

    def __init__(self, optimizer, adversary_hook: AdversaryOptimizerHook | None):
        self.optimizer = optimizer
        self.adversary_hook = adversary_hook

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.adversary_hook is not None:
            self.adversary_hook.step()
        self.optimizer.step()


class LearnedPasteHook(HookBase):
    """Trains a :class:`TaskAwarePaste` online against the trainer's detector.

    Args:
        cfg: the trainer's config (``GANAUG.PASTE.*`` and ``GANAUG.PASTE.LEARNED.*``,
            ``INPUT.*`` for the resize, ``DATASETS.TRAIN``).
        seed: seed of the hook's own image/class sampling.

    Event storage: ``paste/loss_adv`` (synthesizer's realism loss), ``paste/loss_disc``,
    ``paste/task_loss`` (the detector's summed loss on the composites).
    """

    def __init__(self, cfg, *, seed: int = 0) -> None:
        p = cfg.GANAUG.PASTE.LEARNED
        if p.PERIOD < 1 or p.BATCH < 1:
            raise ValueError(
                "GANAUG.PASTE.LEARNED: expected PERIOD >= 1 and BATCH >= 1, got "
                f"{p.PERIOD} and {p.BATCH}"
            )
        if cfg.SOLVER.AMP.ENABLED:
            raise ValueError("GANAUG.PASTE.LEARNED does not support SOLVER.AMP.ENABLED")
        self.period = int(p.PERIOD)
        self.batch = int(p.BATCH)
        self.fg_size = int(p.FG_SIZE)
        self.input_format = cfg.INPUT.FORMAT
        # Foregrounds in RGB, detectron2's contiguous labels (build_copy_paste).
        self.copy_paste = build_copy_paste(cfg)
        dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
        self.records = [
            d for d in dicts if any(not a.get("iscrowd", 0) for a in d.get("annotations", []))
        ]
        if not self.records:
            raise ValueError(
                f"GANAUG.PASTE.LEARNED: {cfg.DATASETS.TRAIN[0]!r} has no annotated image"
            )
        self.augmentations = T.AugmentationList(utils.build_augmentation(cfg, True))
        self.rng = np.random.default_rng(seed)
        self.paste = TaskAwarePaste(
            synthesizer=PlacementSynthesizer(in_size=p.SYN_SIZE, width=p.SYN_WIDTH),
            discriminator=RealismDiscriminator(in_size=p.SYN_SIZE, width=p.DISC_WIDTH),
            lr_g=p.LR_G,
            lr_d=p.LR_D,
            task_weight=p.TASK_WEIGHT,
            adv_weight=p.ADV_WEIGHT,
            occlusion_thresh=cfg.GANAUG.PASTE.OCCLUSION_THRESH,
            fg_size=self.fg_size,
            device=cfg.MODEL.DEVICE,
        )

    def before_train(self) -> None:
        if comm.get_world_size() > 1:
            # Each process would grow its own synthesizer: nothing keeps them in sync.
            raise RuntimeError(
                "GANAUG.PASTE.LEARNED: the online synthesizer supports one process; got "
                f"world size {comm.get_world_size()}"
            )

    def _sample(self):
        """``BATCH`` training images (RGB, [0, 1]) with targets, foregrounds and labels."""
        idx = self.rng.choice(len(self.records), size=self.batch, replace=False)
        images, targets = [], []
        for i in idx:
            rec = self.records[int(i)]
            image = utils.read_image(rec["file_name"], format="RGB")
            aug = T.AugInput(image)
            tfm = self.augmentations(aug)
            annos = [a for a in rec["annotations"] if not a.get("iscrowd", 0)]
            boxes = np.array(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
                dtype=np.float32,
            ).reshape(-1, 4)
            boxes = tfm.apply_box(boxes) if len(boxes) else boxes
            images.append(torch.from_numpy(aug.image.copy()).permute(2, 0, 1).float() / 255.0)
            targets.append(
                {
                    "boxes": torch.as_tensor(boxes, dtype=torch.float32),
                    "labels": torch.as_tensor([a["category_id"] for a in annos]),
                }
            )
        classes = self.copy_paste.sampler.sample(self.rng, self.batch)
        bank = self.copy_paste.bank
        insts = [bank[c][int(self.rng.integers(len(bank[c])))] for c in classes]
        fg = instances_to_rgba(insts, size=self.fg_size)
        return images, targets, fg, [int(c) for c in classes]

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self.period:
            return
        model = self.trainer.model
        adversary_hook = next(
            (h for h in self.trainer._hooks if isinstance(h, AdversaryOptimizerHook)), None
        )
        images, targets, fg, labels = self._sample()
        out = self.paste.online_step(
            target_fn=detectron2_target_fn(model, input_format=self.input_format),
            target_optimizer=_AdversariesThenDetector(self.trainer.optimizer, adversary_hook),
            images=images,
            targets=targets,
            foregrounds=fg,
            labels=labels,
        )
        storage = get_event_storage()
        task = sum(v for k, v in out.items() if k.startswith("loss_") and "paste" not in k)
        storage.put_scalars(
            **{
                "paste/loss_adv": out["loss_paste_adv"],
                "paste/loss_disc": out["loss_paste_disc"],
                "paste/task_loss": task,
            }
        )

    def state_dict(self) -> dict:
        return {"paste": self.paste.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state_dict: dict) -> None:
        if "paste" not in state_dict:
            raise KeyError(
                f"LearnedPasteHook.load_state_dict: expected key 'paste', got {sorted(state_dict)}"
            )
        self.paste.load_state_dict(state_dict["paste"])
        if "rng" in state_dict:
            self.rng.bit_generator.state = state_dict["rng"]
