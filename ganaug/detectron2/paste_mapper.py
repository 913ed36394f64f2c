"""``PasteDatasetMapper``: detectron2's dataset mapper with imbalance-aware copy-paste.

Pasting happens on the decoded image before detectron2's augmentations, so the pasted
objects go through the same resize/flip as the rest. Use it in a trainer::

    class Trainer(DefaultTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return build_detection_train_loader(cfg, mapper=PasteDatasetMapper(cfg, True))

Config keys live under ``cfg.GANAUG.PASTE`` (see :func:`PasteDatasetMapper.from_config`).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ganaug.core.paste import CopyPaste
from ganaug.core.paste.data import annotations_to_target, target_to_annotations
from ganaug.core.paste.factory import read_per_class_metrics

logger = logging.getLogger(__name__)

__all__ = ["PasteDatasetMapper", "add_paste_config", "build_copy_paste", "detectron2_target_fn"]


class PasteDatasetMapper(DatasetMapper):
    """A :class:`DatasetMapper` that pastes instances into training images first.

    Args:
        is_train: pasting runs only in training.
        copy_paste: the configured augmenter; its bank must be in the mapper's image
            format's channel order (``from_config`` takes care of BGR).
        seed: if set, sample ``image_id`` gets ``default_rng([seed, image_id, n])`` where
            ``n`` counts this mapper's calls for it (reproducible per worker); else
            numpy's global generator seeds each call (detectron2 seeds it per worker).
        **kwargs: :class:`DatasetMapper`'s own arguments.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, copy_paste: CopyPaste | None, seed=None, **kwargs):
        super().__init__(is_train, **kwargs)
        self.copy_paste = copy_paste
        self.seed = seed
        self._calls: dict = {}

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        """Read ``cfg.GANAUG.PASTE.*`` (the keys ``add_ganaug_config`` adds):

        ENABLED, ANN_FILE, IMAGE_DIR (see :func:`build_copy_paste`), SELECTION, SMOOTHING,
        POWER, METRICS_FILE, COUNT, SCALE, FLIP_PROB, MAX_ROTATION, BLEND, SIGMA,
        OCCLUSION_THRESH, PROB, RARE_SMALL_PROB, SMALL_SIZE, MIN_AREA, MAX_PER_CLASS, SEED.
        """
        ret = super().from_config(cfg, is_train)
        p = cfg.GANAUG.PASTE
        ret["seed"] = p.SEED if p.SEED >= 0 else None
        if not (is_train and p.ENABLED):
            ret["copy_paste"] = None
            return ret
        paste = build_copy_paste(cfg)
        if cfg.INPUT.FORMAT == "BGR":
            for label in paste.bank.classes:
                for inst in paste.bank[label]:
                    inst.image = np.ascontiguousarray(inst.image[:, :, ::-1])
        ret["copy_paste"] = paste
        return ret

    def _rng(self, dataset_dict) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(np.random.randint(0, 2**31 - 1))
        key = dataset_dict.get("image_id", dataset_dict.get("file_name"))
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        key_int = key if isinstance(key, int) else abs(hash(key)) % (2**31)
        return np.random.default_rng([int(self.seed), int(key_int), n])

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        if self.is_train and self.copy_paste is not None:
            h, w = image.shape[:2]
            annos = dataset_dict.get("annotations", [])
            crowd = [a for a in annos if a.get("iscrowd", 0)]
            target = annotations_to_target(annos, h, w)
            # The image and target were made for this call only: paste into them.
            image, target = self.copy_paste(
                image, target, rng=self._rng(dataset_dict), in_place=True
            )
            dataset_dict["annotations"] = crowd + target_to_annotations(
                target,
                with_masks=self.use_instance_mask and "masks" in target,
                mask_format="polygon" if self.instance_mask_format == "polygon" else "rle",
                originals=annos,
            )

        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def build_copy_paste(cfg) -> CopyPaste:
    """The :class:`CopyPaste` that ``cfg.GANAUG.PASTE`` describes, banked from the training set.

    The bank holds objects of the first training set's images only (so that a held-out
    split's objects never reach training), cut from ``GANAUG.PASTE.ANN_FILE``/``IMAGE_DIR``,
    else the dataset's ``json_file``/``image_root`` metadata, else (ganaug's coco128
    splits) coco128's files. Labels are detectron2's contiguous class ids.
    """
    from detectron2.data import DatasetCatalog

    from ganaug.core.paste import InstanceBank
    from ganaug.core.paste.factory import make_sampler

    from .data import COCO128_SPLITS, coco128_files

    p = cfg.GANAUG.PASTE
    name = cfg.DATASETS.TRAIN[0]
    # Loading fills thing_dataset_id_to_contiguous_id (load_coco_json sets it lazily).
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    ann_file = p.ANN_FILE or meta.get("json_file", None)
    image_dir = p.IMAGE_DIR or meta.get("image_root", None)
    if not (ann_file and image_dir) and name in COCO128_SPLITS:
        ann_file, image_dir = (str(x) for x in coco128_files())
    if not ann_file or not image_dir:
        raise ValueError(
            f"GANAUG.PASTE: set ANN_FILE and IMAGE_DIR (dataset {name!r} has no "
            "json_file/image_root metadata)."
        )
    # With an explicit ANN_FILE every image in it is a source; else the training images.
    image_ids = None if p.ANN_FILE else sorted({int(d["image_id"]) for d in dicts})
    cat_to_label = meta.get("thing_dataset_id_to_contiguous_id", None)
    metrics = read_per_class_metrics(p.METRICS_FILE, meta.thing_classes) if p.METRICS_FILE else None
    bank = InstanceBank.from_coco(
        ann_file,
        image_dir,
        image_ids=image_ids,
        min_area=p.MIN_AREA,
        max_per_class=p.MAX_PER_CLASS if p.MAX_PER_CLASS > 0 else None,
        cat_to_label=cat_to_label,
    )
    if not bank.classes:
        raise ValueError(
            f"GANAUG.PASTE: no object of {name!r} ({ann_file}) has at least "
            f"MIN_AREA={p.MIN_AREA} mask pixels; nothing to paste"
        )
    sampler = make_sampler(
        p.SELECTION,
        counts=bank.class_counts(),
        smoothing=p.SMOOTHING,
        power=p.POWER,
        metrics=metrics,
        rare_small_prob=p.RARE_SMALL_PROB,
        small_size=tuple(p.SMALL_SIZE),
    )
    logger.info(
        "ganaug copy-paste: %d classes banked from %d images of %s (%s selection)",
        len(bank.classes),
        len(image_ids) if image_ids is not None else -1,
        name,
        p.SELECTION,
    )
    return CopyPaste(
        bank=bank,
        sampler=sampler,
        count=tuple(p.COUNT),
        scale=tuple(p.SCALE),
        flip_prob=p.FLIP_PROB,
        max_rotation=p.MAX_ROTATION,
        blend_mode=p.BLEND,
        sigma=p.SIGMA,
        occlusion_thresh=p.OCCLUSION_THRESH,
        prob=p.PROB,
    )


def add_paste_config(cfg) -> None:
    """Add the ``GANAUG.PASTE`` keys with their defaults (for ``add_ganaug_config``)."""
    from detectron2.config import CfgNode as CN

    if "GANAUG" not in cfg:
        cfg.GANAUG = CN()
    p = cfg.GANAUG.PASTE = CN()
    # Paste instances into training images (the mapper is a plain DatasetMapper if False).
    p.ENABLED = False
    # COCO json and image folder to cut instances from; "" = the first training set's
    # metadata json_file / image_root.
    p.ANN_FILE = ""
    p.IMAGE_DIR = ""
    # Class choice: "uniform" (random copy-paste), "inverse" (inverse frequency),
    # "metric" (per-class AP gaps from METRICS_FILE, a per_class_metrics.json).
    p.SELECTION = "inverse"
    # Inverse frequency: p(c) ∝ (count_c + SMOOTHING) ** -POWER; metric: gap ** POWER.
    p.SMOOTHING = 1.0
    p.POWER = 1.0
    p.METRICS_FILE = ""
    # Pastes per image (min, max), inclusive, and the resize range (log-uniform).
    p.COUNT = (1, 3)
    p.SCALE = (0.5, 1.5)
    p.FLIP_PROB = 0.5
    # Rotation in degrees, uniform in [-MAX_ROTATION, MAX_ROTATION].
    p.MAX_ROTATION = 10.0
    # "alpha", "gaussian" (feathered edge of SIGMA pixels) or "poisson" (seamlessClone).
    p.BLEND = "gaussian"
    p.SIGMA = 1.5
    # Existing objects covered beyond this share of their area are dropped.
    p.OCCLUSION_THRESH = 0.7
    # Probability that an image gets pastes at all.
    p.PROB = 1.0
    # Probability that a rare-class paste is shrunk to SMALL_SIZE px (longer side).
    p.RARE_SMALL_PROB = 0.0
    p.SMALL_SIZE = (8, 32)
    # Instances with fewer mask pixels are not banked; at most MAX_PER_CLASS per class
    # (0 = no cap).
    p.MIN_AREA = 16
    p.MAX_PER_CLASS = 200
    # >= 0: pastes depend only on (SEED, image_id, visit count); -1: numpy's global RNG.
    p.SEED = -1

    # ---- Learned task-aware compositing online (LearnedPasteHook, Tripathi et al. 2019) ----
    lp = p.LEARNED = CN()
    # Train a synthesizer + realism discriminator beside the detector (GanaugTrainer adds
    # the hook); the foregrounds come from the bank and SELECTION above.
    lp.ENABLED = False
    # One online step (an extra detector step on composites) every PERIOD iterations.
    lp.PERIOD = 4
    # Training images per online step, one foreground pasted into each.
    lp.BATCH = 2
    # Side of the RGBA foreground tensors given to the synthesizer.
    lp.FG_SIZE = 64
    # Side to which background and composite are resized for synthesizer and discriminator.
    lp.SYN_SIZE = 64
    # Widths of the synthesizer's and the discriminator's first convolutions.
    lp.SYN_WIDTH = 16
    lp.DISC_WIDTH = 32
    # Adam learning rates of synthesizer (G) and discriminator (D).
    lp.LR_G = 1e-4
    lp.LR_D = 2e-4
    # Gradient-reversal factor: how hard the synthesizer ascends the detector's loss.
    lp.TASK_WEIGHT = 1.0
    # Weight of the realism (fool the discriminator) term in the synthesizer's objective.
    lp.ADV_WEIGHT = 0.5


def detectron2_target_fn(model, *, input_format: str = "BGR"):
    """``(images, targets) -> loss dict`` for a detectron2 detector (learned compositing).

    Lets :class:`~ganaug.core.paste.learned.TaskAwarePaste` train against a detectron2
    model: images ``(3, H, W)`` RGB in [0, 1] are scaled to 0-255 in ``input_format``
    channel order (differentiably; detectron2 normalises inside the model), and targets'
    ``boxes`` (xyxy) / ``labels`` (detectron2's contiguous 0-based class ids) become
    ``Instances``. The model must be in a state that returns losses (train mode, inside
    an ``EventStorage``).
    """
    from detectron2.structures import Boxes, Instances

    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}.")

    def fn(images, targets):
        model.train()
        batched = []
        for img, tgt in zip(images, targets):
            x = img * 255.0
            if input_format == "BGR":
                x = x.flip(0)
            h, w = img.shape[-2:]
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.as_tensor(tgt["boxes"], dtype=torch.float32).reshape(-1, 4))
            inst.gt_classes = torch.as_tensor(tgt["labels"], dtype=torch.int64)
            batched.append({"image": x, "instances": inst, "height": h, "width": w})
        return model(batched)

    return fn
