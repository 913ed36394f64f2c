"""Effect of a Pix2PixHD synthetic set on segmentation: baseline vs real+synthetic.

Trains the main job's small UNet-FCN on CamVid twice per seed -- real data only, and real
mixed with the synthetic set at the mix config's ratio -- for the same number of
iterations and batch size, then compares per-class val IoU (rarest class first).

    nice -n 10 .venv/bin/python tools/p2p_effect.py --synth work_dirs/p2p/synth \\
        --iters 300 --seeds 0 1 --out outputs/p2p_effect

Writes comparison.md/.json/.png (and one per_class_metrics.json per run) to --out; the
synthetic set's distribution report (``<synth>_report``) is copied next to them.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "baseline": "configs/adv_seg/fcn_unet-s4_1xb8-600it_camvid-120x160.py",
    "p2p_mix": "configs/pix2pixhd/fcn_unet-s4_1xb8-600it_camvid-120x160_p2p-mix.py",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", required=True, help="synthetic set written by `ganaug synth`")
    p.add_argument("--iters", type=int, default=None, help="iterations per run (config: 600)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="outputs/p2p_effect")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)

    synth = Path(args.synth).resolve()
    if not (synth / "manifest.json").is_file():
        raise SystemExit(f"{synth} is not a synthetic set (no manifest.json); run `ganaug synth`.")
    os.environ["GANAUG_P2P_SYNTH"] = str(synth)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ganaug.main_job import run_comparison

    configs = {k: str(REPO / v) for k, v in CONFIGS.items()}
    run_comparison(args.out, configs=configs, max_iters=args.iters, seeds=args.seeds)
    report = synth.with_name(synth.name + "_report")
    if report.is_dir():
        shutil.copytree(report, Path(args.out) / "synthetic_distribution", dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
