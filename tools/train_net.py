#!/usr/bin/env python
"""Train or evaluate a detectron2 model with ganaug's ROI heads; detectron2's CLI.

Same arguments as detectron2's ``tools/train_net.py`` (``--config-file``, ``--resume``,
``--eval-only``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``,
trailing ``KEY VALUE`` overrides); configs may use ``_BASE_: "model_zoo/..."``.

    python tools/train_net.py --config-file configs/detectron2/coco128_tiny_pgan.yaml
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu  # 2 procs, gloo
"""

from __future__ import annotations

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import ganaug.detectron2  # noqa: F401  (registers the heads and coco128)
from ganaug.detectron2 import GanaugTrainer, add_ganaug_config, merge_ganaug_config_file


def setup(args):
    cfg = get_cfg()
    add_ganaug_config(cfg)
    if args.config_file:
        merge_ganaug_config_file(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # The adapter's log lines (copy-paste bank, adversary optimizer, per-class metrics) in
    # the same log.txt and console as detectron2's; not the core's per-object INFO lines.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ganaug.detectron2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = GanaugTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return GanaugTrainer.test(cfg, model)
    trainer = GanaugTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
