"""Cost of adversarial segmentor training relative to the plain segmentor, in one run.

Both models are built from the main job's configs with identical segmentor weights and run
on the same batches. Reported as ratios (adversarial / plain):

- train step time: median over ``--steps`` steps, the two models interleaved step by step
  so that background load hits both alike;
- peak memory: on CUDA, ``max_memory_allocated``; on CPU, the growth of the process's peak
  resident set during training steps, each model in its own fresh process;
- inference time: median ``test_step`` time on val batches.

Usage:
    python tools/bench_adv_seg.py [--steps 20] [--out outputs/bench_adv_seg.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "configs/adv_seg/fcn_unet-s4_1xb8-600it_camvid-120x160.py"
ADVERSARIAL = "configs/adv_seg/advseg-vanilla_fcn_unet-s4_1xb8-600it_camvid-120x160.py"


def _build(config_path: str, device: str):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import ganaug.mmseg  # noqa: F401  (registers the components)

    cfg = Config.fromfile(os.path.join(REPO, config_path))
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model).to(device)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    return cfg, model, optim


def _batches(cfg, split: str, n: int) -> list:
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg[f"{split}_dataloader"])
    loader_cfg["num_workers"] = 0
    loader_cfg["persistent_workers"] = False
    torch.manual_seed(0)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def memory_worker(variant: str, steps: int) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model, optim = _build(BASELINE if variant == "baseline" else ADVERSARIAL, device)
    batches = _batches(cfg, "train", steps)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_kb() * 1024
    for batch in batches:
        model.train_step(batch, optim)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "device": device, "before": before, "peak": peak}


def timing(steps: int, warmup: int, infer_batches: int) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg_b, base, optim_b = _build(BASELINE, device)
    cfg_a, adv, optim_a = _build(ADVERSARIAL, device)
    # Same starting segmentor weights for both.
    adv.segmentor.load_state_dict(base.state_dict())
    batches = _batches(cfg_b, "train", warmup + steps)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    t_base, t_adv = [], []
    for i, batch in enumerate(batches):
        for model, optim, acc in ((base, optim_b, t_base), (adv, optim_a, t_adv)):
            sync()
            start = time.perf_counter()
            model.train_step(copy.copy(batch), optim)
            sync()
            if i >= warmup:
                acc.append(time.perf_counter() - start)

    val = _batches(cfg_b, "val", infer_batches)
    base.eval()
    adv.eval()
    i_base, i_adv = [], []
    with torch.no_grad():
        for batch in val:
            for model, acc in ((base, i_base), (adv, i_adv)):
                sync()
                start = time.perf_counter()
                model.test_step(batch)
                sync()
                acc.append(time.perf_counter() - start)
    return {
        "train_step_s": {"baseline": statistics.median(t_base), "adv": statistics.median(t_adv)},
        "infer_s": {"baseline": statistics.median(i_base), "adv": statistics.median(i_adv)},
        "batch_size": cfg_b.train_dataloader.batch_size,
        "steps": steps,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--infer-batches", type=int, default=10)
    parser.add_argument("--out", default="outputs/bench_adv_seg.json")
    parser.add_argument("--memory-worker", choices=["baseline", "adversarial"], help="internal")
    args = parser.parse_args(argv)

    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, min(args.steps, 8))))
        return 0

    t = timing(args.steps, args.warmup, args.infer_batches)
    mem = {}
    for variant in ("baseline", "adversarial"):
        out = (
            subprocess.run(
                [sys.executable, __file__, "--memory-worker", variant, "--steps", str(args.steps)],
                check=True,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        mem[variant] = json.loads(out)
    growth = {k: max(v["peak"] - v["before"], 1) for k, v in mem.items()}
    result = {
        "train_step_ratio": t["train_step_s"]["adv"] / t["train_step_s"]["baseline"],
        "inference_ratio": t["infer_s"]["adv"] / t["infer_s"]["baseline"],
        "peak_memory_ratio": growth["adversarial"] / growth["baseline"],
        "peak_process_memory_ratio": mem["adversarial"]["peak"] / mem["baseline"]["peak"],
        "timing": t,
        "memory": mem,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv or sys.argv[1:])),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"train step  adv/plain = {result['train_step_ratio']:.3f}  "
        f"({t['train_step_s']['adv'] * 1e3:.0f} ms vs {t['train_step_s']['baseline'] * 1e3:.0f} ms,"
        f" batch {t['batch_size']}, median of {t['steps']})\n"
        f"peak memory adv/plain = {result['peak_memory_ratio']:.3f} (training growth; whole "
        f"process {result['peak_process_memory_ratio']:.3f})\n"
        f"inference   adv/plain = {result['inference_ratio']:.3f}  "
        f"({t['infer_s']['adv'] * 1e3:.0f} ms vs {t['infer_s']['baseline'] * 1e3:.0f} ms)\n"
        f"wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
