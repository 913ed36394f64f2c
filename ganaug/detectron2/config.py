"""Every detectron2 config key ganaug owns, and a loader for configs based on the model zoo.

Our YAML files may name their base relative to detectron2's model-zoo config folder,
``_BASE_: "model_zoo/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``, so that they work
with any detectron2 installation (the zoo configs ship inside the installed package).
:func:`merge_ganaug_config_file` resolves that prefix; any other ``_BASE_`` is relative
to the file that names it, as in detectron2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from detectron2.config import CfgNode as CN

__all__ = ["MODEL_ZOO_PREFIX", "add_ganaug_config", "merge_ganaug_config_file"]

#: A ``_BASE_`` starting with this is looked up in detectron2's installed model zoo.
MODEL_ZOO_PREFIX = "model_zoo/"


def add_ganaug_config(cfg: CN) -> None:
    """Add every ganaug key with its default.

    ``MODEL.GANAUG.*`` (ROI heads), ``SOLVER.GANAUG_ADV.*`` (the adversaries' optimizer) and
    ``GANAUG.PASTE.*`` (:class:`ganaug.detectron2.paste_mapper.PasteDatasetMapper`).
    """
    _C = cfg
    _C.MODEL.GANAUG = CN()

    # ---- Perceptual GAN head ("PerceptualGANROIHeads"), Li et al. CVPR 2017 ----
    _C.MODEL.GANAUG.PGAN = CN()
    # A proposal is "small" when its area is below this, in the pixels AREA_REFERENCE
    # names; 32 x 32 original pixels is COCO's small-object rule.
    _C.MODEL.GANAUG.PGAN.SMALL_AREA = 32.0 * 32.0
    # "original": SMALL_AREA is in pixels of the original image (proposal areas are scaled
    # by each input's height * width / resized size; needs track_original_sizes, which
    # GanaugTrainer.build_model applies); "input": in pixels of the resized network input.
    _C.MODEL.GANAUG.PGAN.AREA_REFERENCE = "original"
    # Name of a backbone feature (e.g. "p2") pooled a second time for small proposals and
    # fed to the generator's residual branch as the paper's lower-layer input; "" = none.
    _C.MODEL.GANAUG.PGAN.FINE_FEATURE = ""
    # Width of the generator's residual branch; 0 = the ROI feature channels.
    _C.MODEL.GANAUG.PGAN.GEN_HIDDEN = 0
    # Residual blocks in the generator.
    _C.MODEL.GANAUG.PGAN.GEN_BLOCKS = 2
    # Width of the discriminator's adversarial branch.
    _C.MODEL.GANAUG.PGAN.DISC_HIDDEN = 128
    # Weight of the generator's adversarial loss ("loss_pgan_gen"); the perceptual branch
    # is the box head's own losses on the generated features and keeps weight 1.
    _C.MODEL.GANAUG.PGAN.GEN_ADV_WEIGHT = 0.1
    # Use only foreground proposals as real (large) and fake (small) examples for the
    # adversarial branch: background boxes are not "objects" of either size.
    _C.MODEL.GANAUG.PGAN.FOREGROUND_ONLY = True

    # ---- Adversarial head ("AdversarialROIHeads"), A-Fast-RCNN, Wang et al. CVPR 2017 ----
    _C.MODEL.GANAUG.ASDN = CN()
    # Adversarial spatial dropout on foreground ROI features during training.
    _C.MODEL.GANAUG.ASDN.ENABLED = True
    # Width of the mask network's convolutions.
    _C.MODEL.GANAUG.ASDN.HIDDEN = 64
    # Side of the stage-1 sliding window, in ROI grid cells; 0 = POOLER_RESOLUTION // 3.
    _C.MODEL.GANAUG.ASDN.WINDOW = 0
    # Fraction of the S x S grid cells dropped per ROI in stage 2.
    _C.MODEL.GANAUG.ASDN.DROP_FRACTION = 1.0 / 3.0
    # Draw the dropped cells with probability given by the mask scores (else the top ones).
    _C.MODEL.GANAUG.ASDN.SAMPLE = True
    # Iterations of stage 1 (ASDN learns the max-loss windows, detector sees clean
    # features); joint training with dropped features starts after them.
    _C.MODEL.GANAUG.ASDN.STAGE1_ITERS = 1000
    # Foreground ROIs per batch searched by the stage-1 sliding window: each costs
    # ((S - WINDOW) + 1)**2 extra box-head forwards (36 with S = 7).
    _C.MODEL.GANAUG.ASDN.STAGE1_MAX_ROIS = 16
    # Weight of ASDN's own losses ("loss_asdn_mask"); they train only ASDN.
    _C.MODEL.GANAUG.ASDN.LOSS_WEIGHT = 1.0

    _C.MODEL.GANAUG.ASTN = CN()
    # Adversarial rotation of channel groups of foreground ROI features during training.
    _C.MODEL.GANAUG.ASTN.ENABLED = False
    # Channel groups, each with its own angle; must divide the ROI feature channels.
    _C.MODEL.GANAUG.ASTN.NUM_GROUPS = 4
    # Bound on the rotation, in degrees.
    _C.MODEL.GANAUG.ASTN.MAX_ANGLE = 10.0
    # Width of the localisation network.
    _C.MODEL.GANAUG.ASTN.HIDDEN = 64
    # Gradient-reversal factor: ASTN ascends the detector's loss at this rate.
    _C.MODEL.GANAUG.ASTN.REVERSE_SCALE = 1.0

    # ---- Optimizer of the adversaries (PGAN discriminator, ASDN, ASTN) ----
    # Stepped by ganaug.detectron2.AdversaryOptimizerHook right after the backward, so the
    # detector's own optimizer (SOLVER.*) never updates these networks.
    _C.SOLVER.GANAUG_ADV = CN()
    # Adam learning rate.
    _C.SOLVER.GANAUG_ADV.BASE_LR = 1e-4
    # Adam betas (0.5 is the usual GAN choice for the first moment).
    _C.SOLVER.GANAUG_ADV.BETAS = (0.5, 0.999)
    # Adam weight decay.
    _C.SOLVER.GANAUG_ADV.WEIGHT_DECAY = 0.0

    # ---- Copy-paste dataset mapper (GANAUG.PASTE.*), commented where they are defined ----
    from .paste_mapper import add_paste_config

    add_paste_config(_C)


def _merge_dicts(base: dict, child: dict) -> dict:
    """``child`` over ``base``, recursively for nested mappings (fvcore's _BASE_ rule)."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_base(base: str, referrer: Path) -> Path:
    if base.startswith(MODEL_ZOO_PREFIX):
        from detectron2 import model_zoo

        rel = base[len(MODEL_ZOO_PREFIX) :]
        try:
            return Path(model_zoo.get_config_file(rel))
        except RuntimeError as err:
            raise FileNotFoundError(
                f"{referrer}: _BASE_ {base!r} names {rel!r}, which this detectron2 "
                "installation's model zoo does not have"
            ) from err
    path = Path(os.path.expanduser(base))
    return path if path.is_absolute() else referrer.parent / path


def _load_with_base(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping at top level")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    base_path = _resolve_base(str(base), path)
    if base.startswith(MODEL_ZOO_PREFIX):
        # The zoo's own chain uses plain relative bases: let detectron2 read it.
        base_data = CN.load_yaml_with_base(str(base_path), allow_unsafe=True)
    else:
        base_data = _load_with_base(base_path)
    return _merge_dicts(base_data, data)


def merge_ganaug_config_file(cfg: CN, config_file: str | os.PathLike) -> None:
    """``cfg.merge_from_file`` that also resolves ``_BASE_: "model_zoo/..."``.

    Args:
        cfg: a config that already has :func:`add_ganaug_config` applied when the file
            sets ``MODEL.GANAUG`` keys.
        config_file: path to a detectron2 YAML config.
    """
    merged = _load_with_base(Path(config_file))
    # Hand the flattened result to detectron2 so that its version upgrades and key
    # checks apply unchanged.
    fd, tmp = tempfile.mkstemp(suffix=".yaml", prefix="ganaug_cfg_")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(merged, f)
        cfg.merge_from_file(tmp)
    finally:
        os.unlink(tmp)
