"""Cost of the Pix2PixHD rebalancing workflow on this machine.

Measures, in one run:
- label maps recombined per second (CamVid 240x180, k=3 rarest classes to 5% each), next to
  a baseline of just copying and counting the same number of maps;
- images generated per second by the slim generator at 120x160 (inference, fp32 and
  bfloat16 autocast);
- the same with instance features drawn from a per-class k-means bank (encoder models);
- the slim preset's train-step time (one D and one G update with LSGAN + feature matching),
  per image, at 120x160;
each for the given thread counts. Results go to stdout and, with --out, to a JSON file.

    nice -n 10 .venv/bin/python tools/bench_p2p.py --threads 1 2 --out outputs/bench_p2p.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ganaug.core.pix2pixhd import (
    FeatureMatchingLoss,
    InstanceFeatureBank,
    Pix2PixHDGenerator,
    build_discriminator,
    count_parameters,
    lsgan_loss,
)
from ganaug.core.rebalance import (
    CAMVID_IGNORE_INDEX,
    CAMVID_RULES,
    class_pixel_counts,
    load_label_maps,
    rarest_target,
    rebalance,
)
from ganaug.data_root import dataset_dir

H, W = 120, 160


def bench_rebalance(n_maps: int) -> dict:
    names, maps = load_label_maps(
        dataset_dir("camvid") / "trainannot", num_classes=11, ignore_index=CAMVID_IGNORE_INDEX
    )
    target = rarest_target(class_pixel_counts(maps, num_classes=11), k=3, share=0.05)
    t0 = time.perf_counter()
    for i in range(n_maps):  # baseline: copy a map and count its classes
        np.bincount(maps[i % len(maps)].copy().ravel(), minlength=256)
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = rebalance(
        maps, names, num_classes=11, target=target, n_maps=n_maps, rules=CAMVID_RULES, seed=0
    )
    dt = time.perf_counter() - t0
    pastes = sum(len(r["pastes"]) for r in res.records)
    return {
        "maps": n_maps,
        "seconds": round(dt, 3),
        "maps_per_s": round(n_maps / dt, 1),
        "pastes_per_map": round(pastes / n_maps, 1),
        "baseline_copy_count_maps_per_s": round(n_maps / base, 1),
        "reached_share": {str(k): round(v, 4) for k, v in res.reached.items()},
    }


def bench_generate(gen, batch: int, reps: int) -> dict:
    label = torch.randint(0, 12, (batch, H, W))
    out = {"batch": batch}
    ref = None
    for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            img = gen(label).float()  # warm-up (oneDNN primitive creation)
            t0 = time.perf_counter()
            for _ in range(reps):
                gen(label)
            dt = time.perf_counter() - t0
        out[f"images_per_s_{name}"] = round(batch * reps / dt, 2)
        if ref is None:
            ref = img
        else:
            out["bf16_max_abs_diff_to_fp32"] = round(float((img - ref).abs().max()), 4)
    return out


def bench_generate_bank(gen, batch: int, reps: int) -> dict:
    """Generation with instance features drawn from a fitted k-means bank vs without."""
    feat_gen = Pix2PixHDGenerator(num_labels=12, preset="slim", feat_dim=3).eval()
    bank = InstanceFeatureBank(num_clusters=10, seed=0)
    label = torch.randint(0, 12, (batch, H, W))
    # Blocky maps (8x8 cells) so that every class region is a realistic instance.
    label = label[:, ::8, ::8].repeat_interleave(8, 1).repeat_interleave(8, 2)
    for _ in range(4):
        bank.add(torch.randn(batch, 3, H, W), label, label)
    bank.fit()
    feat_gen.feature_bank = bank
    out = {"batch": batch}
    for name, g in (("plain", gen), ("feature_bank", feat_gen)):
        with torch.inference_mode():
            g(label)
            t0 = time.perf_counter()
            for _ in range(reps):
                g(label)
            dt = time.perf_counter() - t0
        out[f"images_per_s_{name}"] = round(batch * reps / dt, 2)
    out["bank_vs_plain"] = round(out["images_per_s_feature_bank"] / out["images_per_s_plain"], 3)
    return out


def bench_train_step(gen, batch: int, reps: int) -> dict:
    disc = build_discriminator(gen.cfg, in_channels=gen.in_channels + 3)
    n_disc = count_parameters(disc)
    fm = FeatureMatchingLoss(loss_weight=gen.cfg["lambda_feat"])
    opt_g = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))
    label = torch.randint(0, 12, (batch, H, W))
    real = torch.rand(batch, 3, H, W) * 2 - 1
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        cond = gen.encode(label)
        fake = gen.net(cond)
        disc.requires_grad_(True)
        loss_d = 0.5 * (
            lsgan_loss(disc(torch.cat([cond, fake.detach()], 1)), False)
            + lsgan_loss(disc(torch.cat([cond, real], 1)), True)
        )
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        disc.requires_grad_(False)
        out_fake = disc(torch.cat([cond, fake], 1))
        with torch.no_grad():
            out_real = disc(torch.cat([cond, real], 1))
        loss_g = lsgan_loss(out_fake, True) + fm(out_real, out_fake)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if i:  # the first step builds oneDNN primitives
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    return {
        "batch": batch,
        "seconds_per_step": round(step, 3),
        "seconds_per_image": round(step / batch, 3),
        "discriminator_params": n_disc,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--maps", type=int, default=200)
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--gen-reps", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-reps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    gen = Pix2PixHDGenerator(num_labels=12, preset="slim")
    result = {
        "generator_params": count_parameters(gen),
        "size_hw": [H, W],
        "rebalance": bench_rebalance(args.maps),
        "per_threads": {},
    }
    print(json.dumps(result["rebalance"]), flush=True)
    for t in args.threads:
        torch.set_num_threads(t)
        gen.eval()
        r = {"generate": bench_generate(gen, args.gen_batch, args.gen_reps)}
        r["generate_feature_bank"] = bench_generate_bank(gen, args.gen_batch, args.gen_reps)
        gen.train()
        r["train_step"] = bench_train_step(gen, args.train_batch, args.train_reps)
        result["per_threads"][str(t)] = r
        print(f"threads={t}: {json.dumps(r)}", flush=True)
    # The machine is shared: the load average says how much of it this run really had.
    result["loadavg_1min"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
