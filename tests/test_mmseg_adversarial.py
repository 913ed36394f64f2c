"""The adversarial segmentor in the real mmseg/mmengine runner, on a few CamVid frames."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmcv.ops", reason="mmsegmentation needs mmcv built with ops")
pytest.importorskip("mmseg", reason="mmsegmentation is not installed")

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import DATASETS, MODELS  # noqa: E402

import ganaug.mmseg  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
BASE_CFG = REPO / "configs/adv_seg/fcn_unet-s4_1xb8-600it_camvid-120x160.py"
ADV_CFG = REPO / "configs/adv_seg/advseg-vanilla_fcn_unet-s4_1xb8-600it_camvid-120x160.py"
MFW_CFG = REPO / "configs/adv_seg/advseg-mfw-lsgan_fcn_unet-s4_1xb8-600it_camvid-120x160.py"


def tiny_cfg(path: Path, work_dir: Path, data_root: Path, iters: int = 2) -> Config:
    """The shipped config shrunk to a few images and iterations."""
    os.environ["GANAUG_DATA_ROOT"] = str(data_root)
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(work_dir)
    for split, n in (("train", 4), ("val", 2)):
        loader = cfg[f"{split}_dataloader"]
        loader.batch_size = 2
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.indices = n
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = iters
    cfg.val_evaluator.per_class_json = str(work_dir / "per_class_metrics.json")
    cfg.randomness = dict(seed=0)
    return cfg


def first_batch(cfg: Config) -> dict:
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    return next(iter(loader))


@pytest.fixture(scope="module")
def data_root(camvid_dir):
    return camvid_dir.parent


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("frozen", ["segmentor", "discriminator"])
def test_train_step_updates_each_network_with_its_own_optimizer(tmp_path, data_root, frozen):
    cfg = tiny_cfg(ADV_CFG, tmp_path, data_root)
    cfg.model.warmup_iters = 0
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    model.train()
    # A zero learning rate (and no decay) freezes one network; the other must still move.
    cfg.optim_wrapper[frozen].optimizer = dict(type="SGD", lr=0.0)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    assert set(optim.keys()) == {"segmentor", "discriminator"}
    seg_before, disc_before = _params(model.segmentor), _params(model.discriminator)
    log_vars = model.train_step(first_batch(cfg), optim)
    for key in ("loss_disc", "loss_adv", "decode.loss_ce", "disc_real_score"):
        assert key in log_vars, key
        assert torch.isfinite(log_vars[key])
    assert _changed(seg_before, model.segmentor) == (frozen != "segmentor")
    assert _changed(disc_before, model.discriminator) == (frozen != "discriminator")
    assert int(model.num_train_steps) == 1
    assert all(p.requires_grad for p in model.discriminator.parameters())


def test_warmup_skips_adversarial_term(tmp_path, data_root):
    cfg = tiny_cfg(ADV_CFG, tmp_path, data_root)
    cfg.model.warmup_iters = 1
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = first_batch(cfg)
    assert "loss_adv" not in model.train_step(batch, optim)
    assert "loss_adv" in model.train_step(batch, optim)


def test_inference_is_the_plain_segmentor(tmp_path, data_root):
    cfg = tiny_cfg(ADV_CFG, tmp_path, data_root)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model).eval()
    plain = MODELS.build(Config.fromfile(str(BASE_CFG)).model).eval()
    plain.load_state_dict(model.segmentor.state_dict())
    batch = next(iter(Runner.build_dataloader(cfg.val_dataloader)))
    with torch.no_grad():
        a = model.test_step(batch)
        b = plain.test_step(batch)
    torch.testing.assert_close(a[0].seg_logits.data, b[0].seg_logits.data)


def test_median_frequency_class_weights_from_config(tmp_path, data_root):
    cfg = tiny_cfg(MFW_CFG, tmp_path, data_root)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    loss = model.segmentor.decode_head.loss_decode
    assert type(loss).__name__ == "WeightedCrossEntropyLoss"
    w = loss.class_weight.numpy()
    names = list(ganaug.mmseg.CAMVID_CLASSES)
    # Rare classes weigh more than common ones; the cap holds.
    assert w[names.index("Bicyclist")] > w[names.index("Pedestrian")] > w[names.index("Road")]
    assert w.max() <= 10.0
    assert model.adv_loss_type == "lsgan"
    # Trains on real labels that contain the ignore index (mmseg's own CE fails there).
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    log_vars = model.train_step(first_batch(cfg), optim)
    assert torch.isfinite(log_vars["decode.loss_ce"])


def test_runner_trains_evaluates_and_resumes_everything(tmp_path, data_root, monkeypatch):
    # As tools/train.py does for --resume: mmengine checkpoints need full unpickling.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    cfg = tiny_cfg(ADV_CFG, tmp_path, data_root, iters=2)
    cfg.model.warmup_iters = 0
    runner = Runner.from_cfg(cfg)
    runner.train()
    result = json.loads((tmp_path / "per_class_metrics.json").read_text())
    assert result["task"] == "segmentation" and result["metric"] == "IoU"
    assert list(result["per_class"]) == list(ganaug.mmseg.CAMVID_CLASSES)
    assert 0.0 <= result["summary"]["mIoU"] <= 100.0
    ckpt = tmp_path / "iter_2.pth"
    assert ckpt.is_file()

    cfg2 = tiny_cfg(ADV_CFG, tmp_path / "resumed", data_root, iters=2)
    runner2 = Runner.from_cfg(cfg2)
    runner2._train_loop = runner2.build_train_loop(runner2._train_loop)
    runner2.optim_wrapper = runner2.build_optim_wrapper(runner2.optim_wrapper)
    runner2.param_schedulers = runner2.build_param_scheduler(runner2.param_schedulers)
    runner2.resume(str(ckpt))
    assert runner2.iter == 2
    sd1, sd2 = runner.model.state_dict(), runner2.model.state_dict()
    assert sd1.keys() == sd2.keys()
    assert any(k.startswith("discriminator.") for k in sd1)
    for k in sd1:
        torch.testing.assert_close(sd1[k], sd2[k], msg=k)
    assert int(runner2.model.num_train_steps) == 2
    for name in ("segmentor", "discriminator"):
        o1 = runner.optim_wrapper[name].optimizer.state_dict()
        o2 = runner2.optim_wrapper[name].optimizer.state_dict()
        assert o1["param_groups"][0]["lr"] == o2["param_groups"][0]["lr"]
        assert len(o1["state"]) == len(o2["state"]) > 0
        for idx, st in o1["state"].items():
            for key, val in st.items():
                torch.testing.assert_close(val, o2["state"][idx][key], msg=f"{name} {key}")


# ---------------------------------------------------------------- bad input


def _mini_camvid(tmp_path: Path, camvid: Path, n: int = 2) -> Path:
    root = tmp_path / "camvid"
    for sub in ("train", "trainannot"):
        (root / sub).mkdir(parents=True)
    for name in sorted(os.listdir(camvid / "train"))[:n]:
        shutil.copy(camvid / "train" / name, root / "train" / name)
        shutil.copy(camvid / "trainannot" / name, root / "trainannot" / name)
    return root


def _dataset(root: Path, **kw):
    init_default_scope("mmseg")
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="ValidateSegLabels", num_classes=11, void_values=[11]),
    ]
    return DATASETS.build(
        dict(
            type="CamVidDataset",
            data_root=str(root),
            data_prefix=dict(img_path="train", seg_map_path="trainannot"),
            pipeline=pipeline,
            **kw,
        )
    )


def test_void_becomes_ignore(tmp_path, camvid_dir):
    root = _mini_camvid(tmp_path, camvid_dir)
    sample = _dataset(root)[0]
    seg = sample["gt_seg_map"]
    raw = np.asarray(Image.open(sample["seg_map_path"]))
    assert ((raw == 11) == (seg == 255)).all()
    assert seg[seg != 255].max() < 11


def test_label_out_of_range_names_file(tmp_path, camvid_dir):
    root = _mini_camvid(tmp_path, camvid_dir)
    bad = sorted((root / "trainannot").iterdir())[0]
    arr = np.asarray(Image.open(bad)).copy()
    arr[0, :5] = 42
    Image.fromarray(arr).save(bad)
    with pytest.raises(ValueError, match=rf"{bad.name}.*\[42\]"):
        _dataset(root)[0]


def test_image_label_size_mismatch_names_both_files(tmp_path, camvid_dir):
    root = _mini_camvid(tmp_path, camvid_dir)
    bad = sorted((root / "trainannot").iterdir())[0]
    Image.open(bad).resize((100, 80), Image.NEAREST).save(bad)
    with pytest.raises(ValueError, match=rf"size mismatch.*{bad.name}"):
        _dataset(root)[0]


def test_non_image_file_in_image_folder(tmp_path, camvid_dir):
    root = _mini_camvid(tmp_path, camvid_dir)
    (root / "train" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.txt: not an image file"):
        _dataset(root)


def test_corrupt_png_in_image_folder(tmp_path, camvid_dir):
    root = _mini_camvid(tmp_path, camvid_dir)
    (root / "train" / "zz_broken.png").write_bytes(b"GIF89a not really")
    with pytest.raises(ValueError, match=r"zz_broken\.png: has an image suffix"):
        _dataset(root)


def test_truncated_png_in_image_folder(tmp_path, camvid_dir):
    root = _mini_camvid(tmp_path, camvid_dir)
    victim = sorted((root / "train").iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{victim.name}: corrupt or truncated"):
        _dataset(root)


def test_missing_data_root_says_which_setting(tmp_path, monkeypatch):
    from ganaug.data_root import DataRootError, dataset_dir

    monkeypatch.setenv("GANAUG_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataRootError, match="GANAUG_DATA_ROOT"):
        dataset_dir("camvid")
    with pytest.raises(FileNotFoundError, match="image folder"):
        _dataset(tmp_path / "nowhere")


# ---------------------------------------------------------------- distributed


@pytest.mark.dist
def test_torchrun_two_processes_gloo(tmp_path, data_root):
    """mmengine's launcher path: torchrun, 2 CPU processes, one DDP wrapper per network."""
    work = tmp_path / "dist"
    opts = [
        "train_dataloader.batch_size=2",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "train_dataloader.dataset.indices=4",
        "val_dataloader.batch_size=1",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
        "val_dataloader.dataset.indices=2",
        "test_dataloader.num_workers=0",
        "test_dataloader.persistent_workers=False",
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
        "default_hooks.logger.interval=1",
        "model.warmup_iters=0",
        f"val_evaluator.per_class_json={work}/per_class_metrics.json",
    ]
    env = dict(os.environ, GANAUG_DATA_ROOT=str(data_root), OMP_NUM_THREADS="1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(REPO / "tools/train.py"),
        str(ADV_CFG),
        "--launcher",
        "pytorch",
        "--work-dir",
        str(work),
        "--cfg-options",
        *opts,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert (
        "Distributed launcher: pytorch" in log
        or "world_size: 2" in log
        or "Distributed: True" in log
    )
    ckpt = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)
    assert set(ckpt["optimizer"].keys()) >= {"segmentor", "discriminator"}
    assert (work / "per_class_metrics.json").is_file()
