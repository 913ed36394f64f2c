"""Helpers to run mmengine's distributed training on CPU-only machines."""

from __future__ import annotations

import torch
import torch.distributed as dist
from mmengine.config import Config


def prepare_cpu_distributed(cfg: Config) -> None:
    """Make a ``launcher='pytorch'`` config work without CUDA.

    mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device``; on a CPU machine we
    initialise a gloo process group first (from torchrun's environment variables), which
    the Runner then reuses, and make DDP wrap modules without ``device_ids``. Nothing is
    changed when CUDA is available.
    """
    if torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
    wrapper = cfg.get("model_wrapper_cfg", None)
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None)
    else:
        # The Runner fills in device_ids=[LOCAL_RANK] for every DDP-derived wrapper,
        # which DDP rejects for CPU modules.
        wrapper["device_ids"] = None
