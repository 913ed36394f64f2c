"""Paste synthesis in each framework: torchvision wrapper + detector, mmseg, detectron2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ganaug.core.paste import ClassSampler, CopyPaste, InstanceBank, mask_to_box
from ganaug.core.paste.data import (
    CocoDetection,
    annotations_to_target,
    camvid_pairs,
    coco128_paths,
    target_to_annotations,
)
from ganaug.core.paste.factory import (
    copy_paste_for_label_maps,
    make_sampler,
    read_per_class_metrics,
)


@pytest.fixture(scope="module")
def coco_small(coco128_dir):
    ann, img_dir = coco128_paths(coco128_dir)
    ds = CocoDetection(ann, img_dir, with_masks=False)
    bank = InstanceBank.from_coco(
        ann, img_dir, image_ids=ds.ids[:10], cat_to_label=ds.cat_to_label, min_area=64
    )
    sampler = ClassSampler.inverse_frequency(ds.class_counts(), smoothing=1.0)
    return ann, img_dir, ds, CopyPaste(bank=bank, sampler=sampler, count=(1, 2))


# -- framework-free glue -----------------------------------------------------------------
def test_annotation_dict_roundtrip():
    annos = [
        {"bbox": [2, 3, 10, 5], "category_id": 4, "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
        {"bbox": [0, 0, 30, 20], "category_id": 1, "iscrowd": 1},
    ]
    target = annotations_to_target(annos, 20, 30)
    np.testing.assert_allclose(target["boxes"], [[2, 3, 12, 8]])
    assert target["masks"].shape == (1, 20, 30) and target["labels"].tolist() == [4]
    back = target_to_annotations(target)
    again = annotations_to_target(back, 20, 30)
    np.testing.assert_array_equal(again["masks"], target["masks"])
    assert back[0]["bbox_mode"] == 0


def test_metric_file_selection(tmp_path):
    path = tmp_path / "per_class_metrics.json"
    path.write_text('{"task": "segmentation", "metric": "IoU", "per_class": {"a": 0.9, "b": 0.3}}')
    metrics = read_per_class_metrics(path, ["a", "b", "c"])
    assert metrics == {0: 0.9, 1: 0.3}
    s = make_sampler("metric", counts={0: 5, 1: 5}, metrics=metrics, power=1.0)
    assert s.as_dict()[1] > s.as_dict()[0]
    with pytest.raises(ValueError, match="none of the classes"):
        read_per_class_metrics(path, ["x"])
    with pytest.raises(ValueError, match="selection must be one of"):
        make_sampler("random", counts={0: 1})


# -- torchvision ---------------------------------------------------------------------------
def test_paste_dataset_torchvision_format(coco_small, coco128_dir):
    from ganaug.datasets.coco import CocoDetectionDataset
    from ganaug.torchvision.paste import PasteDataset

    ann, img_dir, _, cp = coco_small
    base = CocoDetectionDataset(image_dir=img_dir, ann_file=ann, image_ids=None)
    wrapped = PasteDataset(base, copy_paste=cp, seed=3)
    img0, tgt0 = base[0]
    img, tgt = wrapped[0]
    assert img.shape == img0.shape and img.dtype == torch.float32
    assert len(tgt["boxes"]) == len(tgt["labels"]) == len(tgt["area"]) == len(tgt["iscrowd"])
    assert tgt["pasted"].any() and tgt["image_id"] == tgt0["image_id"]
    again, _ = wrapped[0]
    assert torch.equal(img, again)  # depends on (seed, epoch, index) only
    wrapped.set_epoch(1)
    other, _ = wrapped[0]
    assert not torch.equal(img, other)
    loader = torch.utils.data.DataLoader(
        wrapped, batch_size=2, collate_fn=lambda b: tuple(zip(*b)), num_workers=0
    )
    images, targets = next(iter(loader))
    assert len(images) == 2 and all(t["boxes"].shape[1] == 4 for t in targets)


def test_det_train_paste_section(tmp_path):
    """`ganaug det-train` with the imbalance-aware paste config, a few real images."""
    from pathlib import Path

    from ganaug.torchvision.engine import build_datasets, load_config, train
    from ganaug.torchvision.paste import PasteDataset, paste_dataset_from_config

    configs = Path(__file__).resolve().parent.parent / "configs" / "torchvision"
    tiny = ["model.fpn_channels=16", "model.min_size=64", "model.max_size=96",
            "model.representation_size=32", "model.rpn_batch_size_per_image=16",
            "model.box_batch_size_per_image=16", "model.rpn_post_nms_top_n_train=32",
            "model.rpn_post_nms_top_n_test=16", "data.train_images='0:6'",
            "data.val_images='6:8'", "train.iters=2", "train.warmup_iters=0",
            "train.eval_batch_size=2", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    cfg = load_config(configs / "paste_imbalance_tiny_coco128.yaml", tiny)
    assert cfg["paste"]["selection"] == "inverse" and cfg["paste"]["count"] == [1, 3]
    train_ds, _ = build_datasets(cfg)
    wrapped = paste_dataset_from_config(train_ds, cfg["paste"], seed=0)
    assert isinstance(wrapped, PasteDataset)
    # Instances come from the six training images only.
    names = {train_ds.image_info(i)["file_name"] for i in range(len(train_ds))}
    sources = {i.source.split("#")[0] for c in wrapped.copy_paste.bank.classes
               for i in wrapped.copy_paste.bank[c]}  # fmt: skip
    assert sources and sources <= names
    _, tgt = wrapped[0]
    assert tgt["pasted"].any() and len(tgt["boxes"]) == len(tgt["labels"])
    result = train(cfg)
    assert result["iterations"] == 2 and result["eval"]["num_images"] == 2
    assert (tmp_path / "run" / "per_class_metrics.json").is_file()
    off = load_config(configs / "baseline_tiny_coco128.yaml", ["paste.enabled=false"])
    assert paste_dataset_from_config(train_ds, off["paste"]) is train_ds
    with pytest.raises(KeyError, match="selectoin"):
        paste_dataset_from_config(train_ds, {"enabled": True, "selectoin": "uniform"})
    with pytest.raises(ValueError, match="paste-learn"):
        paste_dataset_from_config(train_ds, {"enabled": True, "learned": True})


def test_learned_online_step_with_faster_rcnn(coco_small):
    """One online step against torchvision's Faster R-CNN (MobileNetV3 FPN, scratch)."""
    from ganaug.core.paste.learned import (
        PlacementSynthesizer,
        RealismDiscriminator,
        TaskAwarePaste,
        instances_to_rgba,
    )
    from ganaug.torchvision.paste import build_target_detector, detector_loss_fn

    _, _, ds, cp = coco_small
    torch.manual_seed(0)
    images, targets = [], []
    for i in (0, 1):
        im, t = ds[i]
        im = np.ascontiguousarray(im[::4, ::4])  # keep it tiny: ~160 px
        images.append(torch.from_numpy(im).permute(2, 0, 1).float() / 255)
        targets.append(
            {"boxes": torch.from_numpy(t["boxes"] / 4), "labels": torch.from_numpy(t["labels"])}
        )
    insts = [cp.bank[c][0] for c in cp.bank.classes[:2]]
    model = build_target_detector(num_classes=len(ds.cat_ids), min_size=128, max_size=160)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    tap = TaskAwarePaste(
        synthesizer=PlacementSynthesizer(in_size=32, width=8),
        discriminator=RealismDiscriminator(in_size=32, width=8),
    )
    before = [p.detach().clone() for p in tap.synthesizer.parameters()]
    out = tap.online_step(
        target_fn=detector_loss_fn(model),
        target_optimizer=opt,
        images=images,
        targets=targets,
        foregrounds=instances_to_rgba(insts, size=32),
        labels=[i.label for i in insts],
    )
    assert {"loss_classifier", "loss_objectness", "loss_paste_adv"} <= set(out)
    assert all(np.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, tap.synthesizer.parameters()))


# -- mmseg ---------------------------------------------------------------------------------
def test_mmseg_rare_class_paste(camvid_dir):
    pytest.importorskip("mmcv.ops", reason="mmseg needs a full mmcv build (with ops)")
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    from mmcv.transforms import Compose
    from mmseg.registry import TRANSFORMS

    import ganaug.mmseg.transforms  # noqa: F401  (registers RareClassPaste)

    cfgs = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(
            type="RareClassPaste",
            img_dir=str(camvid_dir / "train"),
            ann_dir=str(camvid_dir / "trainannot"),
            classes=[9, 10],
            count=(3, 3),
            ignore_index=11,
        ),
    ]
    pipeline = Compose([TRANSFORMS.build(c) for c in cfgs])
    img_path, lab_path = camvid_pairs(camvid_dir, "train")[0]
    np.random.seed(0)
    res = pipeline(dict(img_path=str(img_path), seg_map_path=str(lab_path), reduce_zero_label=False,
                        seg_fields=[]))  # fmt: skip
    import cv2

    lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
    added = (res["gt_seg_map"] != lab) & np.isin(res["gt_seg_map"], [9, 10])
    assert added.sum() > 0 and res["img"].shape[:2] == lab.shape


def test_label_map_factory_picks_rarest(camvid_dir):
    pairs = camvid_pairs(camvid_dir, "train")[:8]
    cp = copy_paste_for_label_maps(pairs, num_rare=3, ignore_index=11, min_area=8)
    counts = cp.bank.class_counts()
    rarest = sorted(counts, key=counts.get)[:3]
    assert set(cp.bank.classes) <= set(rarest)


# -- detectron2 ----------------------------------------------------------------------------
def test_detectron2_paste_mapper(coco128_dir, tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is not installed (not on PyPI)")
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from ganaug.detectron2.paste_mapper import PasteDatasetMapper, add_paste_config

    ann, img_dir = coco128_paths(coco128_dir)
    # A 12-image subset (in tmp, not the repo) keeps the bank quick to build.
    coco = json.loads(ann.read_text())
    keep = {im["id"] for im in coco["images"][:12]}
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    sub = tmp_path / "coco12.json"
    sub.write_text(json.dumps(coco))
    name = f"ganaug_paste_coco12_{tmp_path.name}"
    register_coco_instances(name, {}, str(sub), str(img_dir))
    cfg = get_cfg()
    add_paste_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.MASK_ON = True
    cfg.GANAUG.PASTE.ENABLED = True
    cfg.GANAUG.PASTE.MAX_PER_CLASS = 3
    cfg.GANAUG.PASTE.SEED = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (256,)
    cfg.INPUT.MAX_SIZE_TRAIN = 320
    mapper = PasteDatasetMapper(cfg, True)
    dicts = DatasetCatalog.get(name)[:3]
    for d in dicts:
        out = mapper(d)
        inst = out["instances"]
        assert len(inst) >= 1 and out["image"].shape[0] == 3
        boxes = inst.gt_boxes.tensor.numpy()
        masks = inst.gt_masks.polygons if hasattr(inst.gt_masks, "polygons") else None
        assert boxes.shape[1] == 4 and (masks is None or len(masks) == len(boxes))
    # Bitmask format: the last object is a pasted one; its box agrees with its mask
    # after detectron2's resize (to a pixel or two of interpolation).
    cfg.INPUT.MASK_FORMAT = "bitmask"
    out = PasteDatasetMapper(cfg, True)(dicts[0])
    inst = out["instances"]
    box = mask_to_box(inst.gt_masks.tensor[-1].numpy())
    np.testing.assert_allclose(inst.gt_boxes.tensor[-1].numpy(), box, atol=2.0)
    # Evaluation mapping is the plain DatasetMapper path: no pasting, no annotations.
    assert "instances" not in PasteDatasetMapper(cfg, False)(dicts[0])


def test_paste_learn_offline_cli(tmp_path, coco128_dir, monkeypatch, capsys):
    """`ganaug paste-learn`: offline steps against a saved detector, atomic COCO export."""
    from ganaug.cli import main
    from ganaug.torchvision import build_faster_rcnn

    monkeypatch.setenv("GANAUG_DATA_ROOT", str(coco128_dir.parent))
    weights = tmp_path / "det.pth"
    torch.save(build_faster_rcnn(num_classes=80, min_size=96, max_size=128).state_dict(), weights)
    out = tmp_path / "synth"
    argv = ["paste-learn", "--detector", "tiny", "--detector-weights", str(weights),
            "--min-size", "96", "--steps", "1", "--batch", "1", "--num-out", "2",
            "--bank-images", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    coco = json.loads((out / "annotations.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(coco["images"]) == 2 == manifest["num_images"]
    assert manifest["num_objects"] == len(coco["annotations"]) >= 2
    assert not (tmp_path / ".synth.partial").exists()
    assert (tmp_path / "synth_synthesizer.pth").is_file()
    # A checkpoint of another architecture: one error line (the traceback only with -v).
    assert main(argv[:2] + ["mobilenet"] + argv[3:]) == 2
    assert "ganaug paste-learn: error: Detector checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not fit"):
        main(["-v"] + argv[:2] + ["mobilenet"] + argv[3:])


def test_learned_online_step_with_detectron2(coco_small):
    """TaskAwarePaste trained online against a detectron2 Faster R-CNN (tiny config)."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed (not on PyPI)")
    from pathlib import Path

    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import ganaug.detectron2 as gd
    from ganaug.core.paste.learned import (
        PlacementSynthesizer,
        RealismDiscriminator,
        TaskAwarePaste,
        instances_to_rgba,
    )
    from ganaug.detectron2.paste_mapper import detectron2_target_fn

    cfg = get_cfg()
    gd.add_ganaug_config(cfg)
    repo = Path(__file__).resolve().parent.parent
    gd.merge_ganaug_config_file(cfg, repo / "configs/detectron2/coco128_tiny_baseline.yaml")
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
                         "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    _, _, ds, cp = coco_small
    images, targets = [], []
    for i in (0, 1):
        im, t = ds[i]
        im = np.ascontiguousarray(im[::4, ::4])
        images.append(torch.from_numpy(im).permute(2, 0, 1).float() / 255)
        # ganaug's labels are 1-based (0 = background); detectron2's are 0-based.
        targets.append({"boxes": torch.from_numpy(t["boxes"] / 4),
                        "labels": torch.from_numpy(t["labels"] - 1)})  # fmt: skip
    insts = [cp.bank[c][0] for c in cp.bank.classes[:2]]
    tap = TaskAwarePaste(
        synthesizer=PlacementSynthesizer(in_size=32, width=8),
        discriminator=RealismDiscriminator(in_size=32, width=8),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with EventStorage(0):
        out = tap.online_step(
            target_fn=detectron2_target_fn(model, input_format=cfg.INPUT.FORMAT),
            target_optimizer=opt, images=images, targets=targets,
            foregrounds=instances_to_rgba(insts, size=32),
            labels=[i.label - 1 for i in insts],
        )  # fmt: skip
    assert {"loss_cls", "loss_rpn_cls", "loss_paste_adv"} <= set(out)
    assert all(np.isfinite(v) for v in out.values())
