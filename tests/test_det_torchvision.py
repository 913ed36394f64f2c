"""torchvision adapter, COCO dataset and COCO evaluation, on real coco128 images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganaug.datasets.coco import CocoDetectionDataset, CocoFormatError, collate_detection
from ganaug.evaluation.coco_eval import evaluate_coco_boxes, write_per_class_metrics
from ganaug.torchvision import (
    VARIANTS,
    GanaugRoIHeads,
    adversary_parameters,
    build_faster_rcnn,
    detector_parameters,
)
from ganaug.torchvision.builder import load_weights
from ganaug.torchvision.engine import (
    _make_optimizers,
    evaluate,
    load_checkpoint,
    load_config,
    save_checkpoint,
    train_step,
)

# Small enough for a few seconds per step on 2 CPU cores.
TINY = dict(
    fpn_channels=32,
    min_size=96,
    max_size=128,
    representation_size=64,
    rpn_batch_size_per_image=32,
    box_batch_size_per_image=32,
    rpn_post_nms_top_n_train=64,
    rpn_post_nms_top_n_test=32,
    asdn_stage1_iters=1,
    asdn_stage1_max_rois=4,
)
TRAIN_CFG = {
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup_iters": 0,
    "lr_drop_at": 1.0,
    "adv_lr": 1e-3,
    "iters": 10,
}
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "torchvision"
# coco128 ids: 86 is the greyscale image, 250 and 508 have no annotations; 9 and 25 have
# several objects, 49 four small ones (box area < 32 x 32).
GREY_ID, EMPTY_IDS = 86, (250, 508)


@pytest.fixture(scope="module")
def coco(coco128_dir):
    return CocoDetectionDataset.from_root(coco128_dir)


def _batch(ds, ids):
    sub = ds.subset(list(ids))
    return collate_detection([sub[i] for i in range(len(sub))])


# -- dataset -------------------------------------------------------------------------------


def test_coco128_loads_greyscale_and_empty_images(coco):
    assert len(coco) == 128 and coco.num_classes == 80
    assert sum(1 for c in coco.class_counts().values() if c) == 71
    sub = coco.subset([GREY_ID, *EMPTY_IDS])
    grey, target = sub[0]
    assert grey.shape[0] == 3 and torch.equal(grey[0], grey[1])  # grey copied to RGB
    assert len(target["boxes"]) > 0
    for i in (1, 2):
        image, target = sub[i]
        assert image.shape[0] == 3
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    # Labels are contiguous and boxes lie within their images.
    for i in range(0, 128, 16):
        t = coco.target(i)
        info = coco.image_info(i)
        assert ((t["labels"] >= 1) & (t["labels"] <= 80)).all()
        assert (t["boxes"][:, 2] <= info["width"]).all() and (t["boxes"][:, :2] >= 0).all()


def _write_bad_coco(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "rgb.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "empty.png")
    data = {
        "images": [
            {"id": 1, "file_name": "rgb.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "grey.png", "width": 20, "height": 20},
            {"id": 3, "file_name": "empty.png", "width": 16, "height": 16},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [30, 20, 20, 20], "category_id": 7},  # outside
            {"id": 11, "image_id": 1, "bbox": [5, 5, 0, 10], "category_id": 3},  # zero area
            {"id": 12, "image_id": 1, "bbox": [45, 5, 10, 10], "category_id": 3},  # all out
            {"id": 13, "image_id": 2, "bbox": [2, 2, 5, 5], "category_id": 3, "iscrowd": 1},
            {"id": 14, "image_id": 2, "bbox": [1, 1, 8, 8], "category_id": 3},
            {"id": 15, "image_id": 2, "bbox": [1, 1, 8, 8], "category_id": 99},  # unknown cat
            {"id": 16, "image_id": 2, "bbox": [-3, -3, 8, 8], "category_id": 7},  # outside
            {"id": 17, "image_id": 2, "bbox": [1, float("nan"), 8, 8], "category_id": 7},  # NaN
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann


def test_bad_boxes_are_clipped_or_dropped_with_one_warning_each(tmp_path, caplog):
    ann = _write_bad_coco(tmp_path)
    with caplog.at_level(logging.INFO, logger="ganaug.datasets.coco"):
        ds = CocoDetectionDataset(image_dir=tmp_path, ann_file=ann)
    # The file path (and pytest's tmp folder name) precede the message: look past it.
    messages = [r.getMessage().split("ann.json: ", 1)[1] for r in caplog.records]
    assert sum("clipped" in m for m in messages) == 1
    assert any("3 boxes reaching outside" in m for m in messages)
    assert sum("dropped" in m and "side" in m for m in messages) == 1
    assert any("category_id not in" in m for m in messages)
    assert any("crowd" in m for m in messages)
    assert any("1 boxes with a NaN or infinite coordinate, dropped" in m for m in messages)

    assert ds.class_names == ["dog", "cat"]  # sorted by COCO id: dog 3 -> 1, cat 7 -> 2
    img, t = ds[0]
    assert img.shape == (3, 30, 40)
    assert t["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0]] and t["labels"].tolist() == [2]
    img, t = ds[1]
    assert img.shape == (3, 20, 20)
    assert t["boxes"].tolist() == [[1.0, 1.0, 9.0, 9.0], [0.0, 0.0, 5.0, 5.0]]
    assert ds[2][1]["boxes"].shape == (0, 4)
    assert len(CocoDetectionDataset(image_dir=tmp_path, ann_file=ann, keep_empty=False)) == 2


def test_bad_files_raise_clear_errors(tmp_path):
    ann = _write_bad_coco(tmp_path)
    (tmp_path / "grey.png").write_bytes(b"not an image")
    ds = CocoDetectionDataset(image_dir=tmp_path, ann_file=ann)
    with pytest.raises(CocoFormatError, match="grey.png"):
        ds[1]
    (tmp_path / "rgb.png").unlink()
    with pytest.raises(FileNotFoundError, match="rgb.png"):
        ds[0]  # deleted after the dataset was built
    with pytest.raises(FileNotFoundError, match=r"ann.json: 1 of the 3 images .*rgb.png"):
        CocoDetectionDataset(image_dir=tmp_path, ann_file=ann)  # found at build time
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(CocoFormatError, match="annotations"):
        CocoDetectionDataset(image_dir=tmp_path, ann_file=bad)


# -- evaluation ----------------------------------------------------------------------------


def test_coco_eval_ground_truth_scores_100_and_writes_per_class(coco, tmp_path):
    sub = coco.subset([9, 25, 30, 34, GREY_ID, *EMPTY_IDS])
    preds = []
    for i in range(len(sub)):
        t = sub.target(i)
        preds.append(
            {"image_id": t["image_id"], "boxes": t["boxes"], "labels": t["labels"],
             "scores": torch.ones(len(t["labels"]))}
        )  # fmt: skip
    res = evaluate_coco_boxes(preds, ann_file=sub.ann_file, cat_ids=sub.cat_ids, image_ids=sub.ids)
    assert res["AP"] == pytest.approx(100.0) and res["AP50"] == pytest.approx(100.0)
    present = {sub.class_names[int(lab) - 1] for p in preds for lab in p["labels"]}
    assert set(res["per_category_AP"]) == present
    # Dropping every prediction of one class zeroes its AP only.
    first = preds[0]["labels"][0]
    keep = [dict(p, **_only(p, p["labels"] != first)) for p in preds]
    res2 = evaluate_coco_boxes(keep, ann_file=sub.ann_file, cat_ids=sub.cat_ids)
    name = sub.class_names[int(first) - 1]
    assert res2["per_category_AP"][name] == 0.0
    assert all(v == pytest.approx(100.0) for k, v in res2["per_category_AP"].items() if k != name)

    path = write_per_class_metrics(tmp_path, res2, run="gt", class_counts=sub.class_counts())
    payload = json.loads(path.read_text())
    assert payload["task"] == "detection" and payload["metric"] == "AP"
    assert payload["summary"]["mAP"] == pytest.approx(res2["AP"])
    assert payload["per_class"][name] == 0.0 and payload["class_counts"]["person"] > 0


def _only(pred, keep):
    return {k: pred[k][keep] for k in ("boxes", "labels", "scores")}


# -- model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_train_steps_each_variant(coco, variant):
    torch.manual_seed(0)
    model = build_faster_rcnn(num_classes=coco.num_classes, variant=variant, **TINY)
    opt, adv_opt, _ = _make_optimizers(model, TRAIN_CFG)
    assert (adv_opt is None) == (variant == "baseline")
    images, targets = _batch(coco, [49, GREY_ID, EMPTY_IDS[0]])
    adv_before = [p.detach().clone() for p in adversary_parameters(model)]
    det_before = [p.detach().clone() for p in detector_parameters(model)]
    stats = []
    for _ in range(2):
        losses = train_step(model, images, targets, opt=opt, adv_opt=adv_opt, grad_clip=10.0)
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
        stats.append(dict(getattr(model.roi_heads, "last_stats", {})))
    assert any(not torch.equal(a, p) for a, p in zip(det_before, detector_parameters(model)))
    if variant != "baseline":
        after = adversary_parameters(model)
        assert any(not torch.equal(a, p) for a, p in zip(adv_before, after))
    if variant == "pgan":
        assert "aux_loss_pgan_disc" in losses and "loss_pgan_gen" in losses
        assert stats[-1]["pgan/small_fg_rois"] > 0  # image 49 has small objects
    if "asdn" in variant:
        assert [s["asdn/stage"] for s in stats] == [1.0, 2.0]
        assert stats[-1]["asdn/dropped_share"] == pytest.approx(16 / 49)
    if "astn" in variant:
        assert stats[-1]["astn/mean_abs_angle_deg"] <= 10.0


def test_asdn_astn_leave_inference_unchanged(coco):
    torch.manual_seed(0)
    base = build_faster_rcnn(num_classes=coco.num_classes, variant="baseline", **TINY)
    adv = build_faster_rcnn(num_classes=coco.num_classes, variant="asdn+astn", **TINY)
    missing, unexpected = adv.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(
        k.split(".")[1] in ("asdn", "astn", "train_iter") for k in missing
    )
    # Give the adversaries weights that would change features if they ran.
    with torch.no_grad():
        for p in adversary_parameters(adv):
            p.normal_()
    # Lower the score threshold so an untrained model returns boxes to compare.
    for m in (base, adv):
        m.roi_heads.score_thresh = 0.0
        m.eval()
    images, _ = _batch(coco, [9, 25])
    with torch.no_grad():
        out_base, out_adv = base(images), adv(images)
    assert len(out_base[0]["boxes"]) > 0
    for a, b in zip(out_base, out_adv):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


def test_pgan_runs_at_inference_on_small_proposals_only(coco):
    torch.manual_seed(0)
    model = build_faster_rcnn(num_classes=coco.num_classes, variant="pgan", **TINY)
    heads = model.roi_heads.eval()
    heads.score_thresh = 0.0  # keep every detection for the comparison below
    with torch.no_grad():
        heads.pgan.generator.out.weight.normal_()
    inputs = []
    heads.pgan.generator.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    feats = {k: torch.randn(1, 32, s, s) for k, s in (("0", 32), ("1", 16), ("2", 8), ("3", 4))}
    # Heads used alone see no resize: areas are in input pixels, threshold 32 x 32.
    boxes = torch.tensor(
        [[0, 0, 20, 20], [10, 10, 100, 90], [5, 5, 36, 36], [0, 0, 60, 40], [50, 50, 80, 60]],
        dtype=torch.float32,
    )
    with torch.no_grad():
        in_place, _ = heads(feats, [boxes], [(128, 128)])
        pooled = heads.box_roi_pool(feats, [boxes], [(128, 128)])
    assert len(inputs) == 1 and inputs[0].shape[0] == 3  # boxes 0, 2 and 4 are small
    torch.testing.assert_close(inputs[0], pooled[[0, 2, 4]])
    # Under no_grad the generated rows are written into the pooled stack; with autograd on
    # (eval mode) into a copy: the same detections.
    with torch.enable_grad():
        copied, _ = heads(feats, [boxes], [(128, 128)])
    assert len(in_place[0]["scores"])
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(in_place[0][key], copied[0][key].detach())
    # Through the full model the resize factor is applied (see GanaugFasterRCNN).
    inputs.clear()
    model.eval()
    images, _ = _batch(coco, [49])
    with torch.no_grad():
        model(images)
    assert heads.original_image_sizes is None  # reset after the forward


def test_empty_proposals(coco, caplog):
    torch.manual_seed(0)
    model = build_faster_rcnn(num_classes=coco.num_classes, variant="asdn+astn", **TINY)
    heads = model.roi_heads
    feats = {k: torch.randn(1, 32, s, s) for k, s in (("0", 32), ("1", 16), ("2", 8), ("3", 4))}
    shapes = [(128, 128)]
    heads.eval()
    result, losses = heads(feats, [torch.zeros(0, 4)], shapes)
    assert result[0]["boxes"].shape == (0, 4) and losses == {}
    heads.train()
    target = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    with caplog.at_level(logging.WARNING):
        _, losses = heads(feats, [torch.zeros(0, 4)], shapes, target)
        heads(feats, [torch.zeros(0, 4)], shapes, target)
    assert all(torch.isfinite(v) and float(v.detach()) == 0.0 for v in losses.values())
    assert sum("without any proposal" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="targets are required"):
        heads(feats, [torch.zeros(0, 4)], shapes)


def test_checkpoint_restores_every_network_and_optimizer(coco, tmp_path):
    torch.manual_seed(0)
    kw = dict(num_classes=coco.num_classes, variant="pgan", **TINY)
    model = build_faster_rcnn(**kw)
    opt, adv_opt, sched = _make_optimizers(model, TRAIN_CFG)
    images, targets = _batch(coco, [9, 25])
    train_step(model, images, targets, opt=opt, adv_opt=adv_opt)
    sched.step()
    path = save_checkpoint(
        tmp_path / "ck.pth", model=model, opt=opt, adv_opt=adv_opt, sched=sched,
        iteration=1, cfg={},
    )  # fmt: skip
    expected = train_step(model, images, targets, opt=opt, adv_opt=adv_opt)

    torch.manual_seed(123)
    fresh = build_faster_rcnn(**kw)
    f_opt, f_adv, f_sched = _make_optimizers(fresh, TRAIN_CFG)
    state = load_checkpoint(path, model=fresh, opt=f_opt, adv_opt=f_adv, sched=f_sched)
    assert state["iteration"] == 1 and int(fresh.roi_heads.train_iter) == 1
    assert f_adv.state_dict()["state"] and f_opt.state_dict()["state"]
    got = train_step(fresh, images, targets, opt=f_opt, adv_opt=f_adv)
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), k

    # The same file serves --eval-only / model.weights=..., read with weights_only=True.
    np.random.seed(7)
    saved = np.random.get_state()
    path2 = save_checkpoint(
        tmp_path / "ck2.pth", model=fresh, opt=f_opt, adv_opt=f_adv, sched=f_sched,
        iteration=2, cfg={},
    )  # fmt: skip
    np.random.rand(5)
    load_checkpoint(path2, model=fresh)
    now = np.random.get_state()
    assert np.array_equal(now[1], saved[1]) and now[2] == saved[2]  # numpy RNG restored
    other = build_faster_rcnn(**kw)
    load_weights(other, path2)
    for (name, a), b in zip(fresh.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_untrained_model_evaluates_on_real_images(coco, tmp_path):
    torch.manual_seed(0)
    model = build_faster_rcnn(num_classes=coco.num_classes, variant="pgan", **TINY)
    model.roi_heads.score_thresh = 0.0
    sub = coco.subset([9, 25, GREY_ID, EMPTY_IDS[1]])
    res = evaluate(model, sub, batch_size=2)
    assert res["num_images"] == 4
    for key in ("AP", "AP50", "APs", "APm", "APl"):
        assert res[key] != res[key] or 0.0 <= res[key] <= 100.0
    assert set(res["per_category_AP"]) == {n for n, c in sub.class_counts().items() if c}


def test_config_and_cli(tmp_path):
    from ganaug.cli import build_parser

    config = CONFIGS / "asdn_astn_tiny_coco128.yaml"
    cfg = load_config(config, ["train.iters=5"])
    assert cfg["model"]["variant"] == "asdn+astn" and cfg["train"]["iters"] == 5
    assert cfg["data"]["val_images"] == "96:128"  # inherited from the base file
    with pytest.raises(KeyError, match="itters"):
        load_config(None, ["train.itters=5"])
    with pytest.raises(KeyError, match="asdn_stage1_iter'.*in 'model'"):
        load_config(config, ["model.asdn_stage1_iter=2"])  # typo'd builder argument
    for path in sorted(CONFIGS.glob("*.yaml")):  # every shipped config passes the check
        load_config(path)
    args = build_parser("det-train").parse_args(
        ["det-train", "--config", "x.yaml", "train.iters=3"]
    )
    assert args.opts == ["train.iters=3"] and callable(args.func)
    assert isinstance(
        build_faster_rcnn(num_classes=3, variant="astn", **TINY).roi_heads, GanaugRoIHeads
    )
    with pytest.raises(ValueError, match="variant must be one of"):
        build_faster_rcnn(num_classes=3, variant="gan")


def test_slices_stay_strings_and_builder_options(tmp_path):
    # YAML 1.1 would read 8:12 as the base-60 integer 492.
    cfg = load_config(None, ["data.val_images=8:12", "data.train_images=:8"])
    assert cfg["data"]["val_images"] == "8:12" and cfg["data"]["train_images"] == ":8"
    model = build_faster_rcnn(num_classes=3, box_score_thresh=0.001, **TINY)
    assert model.roi_heads.score_thresh == 0.001
    r50 = build_faster_rcnn(num_classes=3, backbone="resnet50", variant="asdn", **TINY)
    assert r50.backbone.out_channels == 256 and r50.roi_heads.asdn.in_channels == 256
    with pytest.raises(ValueError, match="backbone must be"):
        build_faster_rcnn(num_classes=3, backbone="vgg")
    # The R50-FPN config builds (fpn_channels is the tiny backbone's, ignored here).
    r50_cfg = load_config(CONFIGS / "asdn_astn_r50fpn_coco128.yaml", ["model.min_size=64"])
    model = build_faster_rcnn(num_classes=3, **r50_cfg["model"])
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert model.roi_heads.box_head.fc6.out_features == 1024
    # Which adversary recomputes its activations in the backward pass.
    for ckpt, want in (("astn", (False, True)), ("asdn", (True, False)), (True, (True, True))):
        heads = build_faster_rcnn(
            num_classes=3, variant="asdn+astn", adversary_checkpoint=ckpt, **TINY
        ).roi_heads
        assert (heads.asdn.checkpoint, heads.astn.loc_checkpoint) == want, ckpt
    with pytest.raises(ValueError, match="adversary_checkpoint must be"):
        build_faster_rcnn(num_classes=3, variant="asdn", adversary_checkpoint="both", **TINY)


def test_eval_period_logs_history_without_changing_training(tmp_path):
    from ganaug.torchvision.engine import train

    def run(out, period):
        cfg = load_config(
            CONFIGS / "baseline_tiny_coco128.yaml",
            [
                "train.iters=2", "train.batch_size=1", "train.warmup_iters=0",
                f"train.eval_period={period}", "train.eval_train=true",
                "data.train_images=0:2", "data.val_images=2:3",
                *(f"model.{k}={v}" for k, v in TINY.items() if "asdn" not in k),
            ],
        )  # fmt: skip
        cfg["out_dir"] = str(tmp_path / out)
        return train(cfg)

    plain = run("plain", 0)
    logged = run("logged", 1)
    assert logged["final_losses"] == pytest.approx(plain["final_losses"], rel=1e-5)
    lines = (tmp_path / "logged" / "eval_history.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["iter"] for h in history] == [1, 2]
    assert {"AP", "AP50", "APs", "train_AP", "train_AP50"} <= set(history[0])
    assert not (tmp_path / "plain" / "eval_history.jsonl").exists()


def test_asdn_after_astn_trains_on_recomputed_rotated_features(coco):
    # With both adversaries the clean rotated stack is not kept: ASDN's trainable input is
    # recomputed for the ROIs its loss uses, and must equal those rows of ASTN's output.
    torch.manual_seed(0)
    model = build_faster_rcnn(
        num_classes=coco.num_classes, variant="asdn+astn", **{**TINY, "asdn_stage1_iters": 0}
    )
    heads = model.roi_heads
    with torch.no_grad():
        heads.astn.angle.weight.normal_(std=0.1)
        heads.astn.angle.bias.fill_(0.3)
    rotated, asdn_inputs = [], []
    heads.astn.register_forward_hook(lambda m, i, o: rotated.append(o[0].detach().clone()))
    heads.asdn.register_forward_hook(lambda m, i, o: asdn_inputs.append(i[0].detach().clone()))
    opt, adv_opt, _ = _make_optimizers(model, TRAIN_CFG)
    images, targets = _batch(coco, [9, 25])
    train_step(model, images, targets, opt=opt, adv_opt=adv_opt)
    assert len(rotated) == 1 and len(asdn_inputs) == 2  # scores (all ROIs), then training
    clean = rotated[0].flatten(1)
    assert heads.last_stats["astn/mean_abs_angle_deg"] > 1.0
    torch.testing.assert_close(asdn_inputs[0].flatten(1), clean)
    trained = asdn_inputs[1].flatten(1)
    assert 0 < len(trained) <= len(clean) // 2 + 1
    dist = torch.cdist(trained, clean, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(dim=1).values.max() < 1e-4


def test_bad_model_settings_weights_and_checkpoints_fail_naming_the_file(coco, tmp_path):
    for key, value in (("asdn_hidden", 0), ("astn_hidden", -1), ("pgan_gen_hidden", 0)):
        with pytest.raises(ValueError, match=f"{key} must be a positive integer"):
            build_faster_rcnn(num_classes=3, variant="asdn+astn", **{**TINY, key: value})
    with pytest.raises(ValueError, match="asdn_drop_fraction must be in"):
        build_faster_rcnn(num_classes=3, variant="asdn", asdn_drop_fraction=2, **TINY)
    with pytest.raises(ValueError, match="asdn_stage1_iters >= 0"):
        build_faster_rcnn(num_classes=3, variant="asdn", **{**TINY, "asdn_stage1_iters": -5})

    model = build_faster_rcnn(num_classes=3, variant="pgan", **TINY)
    text, empty, listed = tmp_path / "notes.pth", tmp_path / "empty.pth", tmp_path / "list.pth"
    text.write_text("not a checkpoint")
    empty.write_bytes(b"")
    torch.save([1, 2], listed)
    for path in (text, empty):
        with pytest.raises(ValueError, match=f"weights {path}: not a PyTorch state dict"):
            load_weights(model, path)
        with pytest.raises(ValueError, match=f"checkpoint {path}: not a ganaug checkpoint"):
            load_checkpoint(path, model=model)
    with pytest.raises(ValueError, match="expected a state dict .* got list"):
        load_weights(model, listed)
    with pytest.raises(ValueError, match="is a directory"):
        load_weights(model, tmp_path)
    # Same keys, other shapes (another FPN width): named as a configuration mismatch.
    wide = build_faster_rcnn(num_classes=3, variant="pgan", **{**TINY, "fpn_channels": 16})
    opt, adv_opt, sched = _make_optimizers(wide, TRAIN_CFG)
    ck = save_checkpoint(
        tmp_path / "wide.pth", model=wide, opt=opt, adv_opt=adv_opt, sched=sched,
        iteration=1, cfg={},
    )  # fmt: skip
    with pytest.raises(ValueError, match="do not fit this model .another configuration"):
        load_weights(model, ck)
    # A checkpoint of another variant, resumed: missing keys, named as such.
    asdn = build_faster_rcnn(num_classes=3, variant="asdn", **{**TINY, "fpn_channels": 16})
    with pytest.raises(ValueError, match="does not fit this config's model"):
        load_checkpoint(ck, model=asdn)


def test_det_train_config_values_selections_eval_only_and_intermixed_cli(tmp_path, monkeypatch):
    import ganaug.torchvision.engine as engine
    from ganaug.cli import main

    with pytest.raises(ValueError, match="train.batch_size must be an integer >= 1"):
        load_config(None, ["train.batch_size=0"])
    cfg = load_config(None, ["data.train_images=0:2", "data.val_images=4:4"])
    with pytest.raises(ValueError, match=r"data.val_images='4:4' selects no image: .*128"):
        engine.build_datasets(cfg)

    seen = []
    monkeypatch.setattr(engine, "_run_cli", lambda args: seen.append(args.opts) or 0)
    config = str(CONFIGS / "baseline_tiny_coco128.yaml")
    argv = ["det-train", "--config", config, "a.b=1", "--out-dir", "x", "c.d=2"]
    assert main(argv) == 0 and seen == [["a.b=1", "c.d=2"]]
    with pytest.raises(SystemExit):
        main(["det-train", "--config", config, "--no-such-option"])
    monkeypatch.undo()

    # --eval-only writes beside the run's results (eval_<weights stem>/), not over them.
    opts = ["data.val_images=0:2", "model.min_size=96", "model.max_size=128"]
    cfg = load_config(config, opts)
    model = build_faster_rcnn(num_classes=80, **cfg["model"])  # coco128 lists 80 categories
    torch.save(model.state_dict(), tmp_path / "w.pth")
    (tmp_path / "per_class_metrics.json").write_text("{}")  # the training run's
    argv = ["det-train", "--config", config, "--out-dir", str(tmp_path)]
    assert main([*argv, "--eval-only", str(tmp_path / "w.pth"), *opts]) == 0
    assert (tmp_path / "per_class_metrics.json").read_text() == "{}"
    result = json.loads((tmp_path / "eval_w" / "metrics.json").read_text())
    assert result["eval"]["num_images"] == 2 and "AP" in result["eval"]
    assert (tmp_path / "eval_w" / "per_class_metrics.json").is_file()


def test_backbone_weights_load_a_torchvision_resnet_state_dict(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet_like = resnet18(weights=None).state_dict()  # what torchvision ships, fc included
    torch.save(imagenet_like, tmp_path / "r18.pth")
    model = build_faster_rcnn(
        num_classes=3, backbone="resnet18", variant="asdn", backbone_weights=tmp_path / "r18.pth"
    )
    body = model.backbone.body.state_dict()
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer2.0.bn1.running_var"):
        assert torch.equal(body[key], imagenet_like[key]), key
    # The whole-detector loader refuses it, and says what it expects.
    with pytest.raises(ValueError, match="state dict of the whole detector"):
        load_weights(model, tmp_path / "r18.pth")
    # A file for another network is refused naming it.
    torch.save(build_faster_rcnn(num_classes=3, **TINY).state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match=r"backbone weights .*tiny.pth do not fit"):
        build_faster_rcnn(
            num_classes=3, backbone="resnet18", backbone_weights=tmp_path / "tiny.pth"
        )
