"""Train a segmentor with mmengine's Runner, as mmseg's tools/train.py does.

Usage:
    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--cfg-options k=v ...]
    torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch

On a machine without CUDA, ``--launcher pytorch`` uses the gloo backend: the process group
is initialised here, before the Runner, because mmengine's own launcher assumes CUDA.
"""

from __future__ import annotations

import argparse
import glob
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from ganaug.mmseg.launch import prepare_cpu_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a segmentor (mmseg + ganaug)")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument(
        "--resume", action="store_true", help="resume from the latest checkpoint in work_dir"
    )
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (GPU)")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config settings, key=value (e.g. train_cfg.max_iters=100)",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def _has_checkpoint(work_dir: str) -> bool:
    return osp.isfile(osp.join(work_dir, "last_checkpoint")) or bool(
        glob.glob(osp.join(work_dir, "*.pth"))
    )


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    cfg.resume = args.resume
    if args.resume and not cfg.get("load_from") and not _has_checkpoint(cfg.work_dir):
        # mmengine would quietly start from scratch: a mistyped --work-dir must not do that.
        raise SystemExit(
            f"--resume: no checkpoint in work dir {cfg.work_dir!r} (no last_checkpoint or "
            "*.pth). Check --work-dir, or drop --resume to start a new run."
        )
    if cfg.resume or cfg.get("load_from"):
        # mmengine 0.10 checkpoints hold numpy arrays and its message hub, which torch >= 2.6
        # refuses under the default weights_only=True. You are loading your own checkpoint.
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if args.launcher != "none":
        prepare_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == "__main__":
    main()
