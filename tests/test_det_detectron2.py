"""detectron2 adapter: config, coco128 registration, real train steps of each head and hook,
inference equivalence, checkpoint round trip and a 2-process gloo run on CPU."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (not on PyPI; see docs/readme/detectron2.md)"
)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as d2utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import ganaug.detectron2 as gd  # noqa: E402
from ganaug.data_root import ENV_VAR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "detectron2"


def _cfg(variant: str = "baseline", *opts):
    """The tiny coco128 config shrunk further so that a train step takes about a second."""
    cfg = get_cfg()
    gd.add_ganaug_config(cfg)
    gd.merge_ganaug_config_file(cfg, CONFIGS / f"coco128_tiny_{variant}.yaml")
    cfg.merge_from_list(
        [
            "INPUT.MIN_SIZE_TRAIN", (96,),
            "INPUT.MAX_SIZE_TRAIN", 128,
            "INPUT.MIN_SIZE_TEST", 96,
            "INPUT.MAX_SIZE_TEST", 128,
            "MODEL.FPN.OUT_CHANNELS", 32,
            "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
            "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
            *opts,
        ]
    )  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def batch(coco128_dir):
    return _load_batch()


def _load_batch():
    """Two real coco128 images with many objects, small ones included, as model inputs."""
    records = gd.load_coco128("coco128")
    records = sorted(records, key=lambda r: -len(r["annotations"]))[:2]
    aug = T.ResizeShortestEdge(96, 128)
    out = []
    for rec in records:
        image = d2utils.read_image(rec["file_name"], format="BGR")
        aug_input = T.AugInput(image)
        tfm = aug(aug_input)
        annos = [
            d2utils.transform_instance_annotations(a, [tfm], aug_input.image.shape[:2])
            for a in rec["annotations"]
        ]
        inst = d2utils.annotations_to_instances(annos, aug_input.image.shape[:2])
        out.append(
            {
                "image": torch.as_tensor(aug_input.image.transpose(2, 0, 1).copy()),
                "instances": d2utils.filter_empty_instances(inst),
                "height": rec["height"],
                "width": rec["width"],
            }
        )
    return out


def _train_step(model, hook, optimizer, batch):
    optimizer.zero_grad()
    losses = model(batch)
    sum(losses.values()).backward()
    hook.step()
    optimizer.step()
    return losses


# ---------------------------------------------------------------- config and data


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_merges(path):
    cfg = get_cfg()
    gd.add_ganaug_config(cfg)
    gd.merge_ganaug_config_file(cfg, path)
    # The zoo base came through: the FPN layout of faster_rcnn_R_50_FPN_1x.
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    if "pgan" in path.name:
        assert cfg.MODEL.ROI_HEADS.NAME == "PerceptualGANROIHeads"
    elif any(k in path.name for k in ("asdn", "astn")):
        assert cfg.MODEL.ROI_HEADS.NAME == "AdversarialROIHeads"
        assert cfg.MODEL.GANAUG.ASDN.ENABLED == ("asdn" in path.name)
        assert cfg.MODEL.GANAUG.ASTN.ENABLED == ("astn" in path.name)
    else:
        assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"


def test_every_config_key_is_commented():
    import inspect

    lines = inspect.getsource(gd.add_ganaug_config).splitlines()
    keys = [i for i, line in enumerate(lines) if line.strip().startswith("_C.") and " = " in line]
    assert len(keys) >= 20
    cfg = get_cfg()
    gd.add_ganaug_config(cfg)
    # The copy-paste mapper's keys come from the same single entry point.
    assert "PASTE" in cfg.GANAUG and "ENABLED" in cfg.GANAUG.PASTE
    for i in keys:
        if lines[i].strip().endswith("CN()"):
            continue
        assert lines[i - 1].strip().startswith("#"), f"uncommented key: {lines[i].strip()}"


def test_bad_zoo_base_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "model_zoo/COCO-Detection/no_such_config.yaml"\n')
    with pytest.raises(FileNotFoundError, match="bad.yaml"):
        gd.merge_ganaug_config_file(get_cfg(), bad)


def test_coco128_registered(coco128_dir):
    for name in gd.COCO128_SPLITS:
        assert name in DatasetCatalog.list()
    full = DatasetCatalog.get("coco128")
    train, val = DatasetCatalog.get("coco128_train"), DatasetCatalog.get("coco128_val")
    assert len(full) == 128 and len(train) == 96 and len(val) == 32
    assert not {r["image_id"] for r in train} & {r["image_id"] for r in val}
    assert sum(not r["annotations"] for r in full) == 2
    assert len(MetadataCatalog.get("coco128").thing_classes) == 80
    for rec in full:
        for ann in rec["annotations"]:
            x1, y1, x2, y2 = ann["bbox"]
            assert 0 <= x1 < x2 <= rec["width"] and 0 <= y1 < y2 <= rec["height"]
    counts = gd.class_counts(["coco128"])
    assert len(counts) == 71 and counts["person"] == 254


def test_bad_boxes_clipped_and_dropped(tmp_path, monkeypatch, caplog):
    from PIL import Image

    root = tmp_path / "coco128"
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("L", (40, 30)).save(root / "train2017" / "a.jpg")  # greyscale on purpose
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20], "iscrowd": 0,
         "area": 400},  # reaches outside: clipped to (30, 20, 40, 30)
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 8], "iscrowd": 0,
         "area": 0},  # zero width: dropped
    ]  # fmt: skip
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="ganaug.detectron2.data"):
        (rec,) = gd.load_coco128("coco128", metadata_name="coco128_bad_input_test")
    assert [a["bbox"] for a in rec["annotations"]] == [[30.0, 20.0, 40.0, 30.0]]
    assert "clipped 1" in caplog.text and "dropped 1" in caplog.text
    assert d2utils.read_image(rec["file_name"], format="BGR").shape == (30, 40, 3)

    (root / "train2017" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        gd.load_coco128("coco128", metadata_name="coco128_bad_input_test")


# ---------------------------------------------------------------- train steps


@pytest.mark.parametrize(
    "variant, steps, expected",
    [
        ("pgan", 1, {"loss_pgan_gen", "loss_pgan_disc"}),
        # One ASDN stage-1 step, then one joint step with ASTN.
        ("asdn_astn", 2, {"loss_asdn_mask"}),
    ],
)
def test_train_steps_with_hook(batch, variant, steps, expected):
    torch.manual_seed(0)
    # GanaugTrainer.build_model: PGAN measures areas in original pixels (batch has height/width).
    model = gd.GanaugTrainer.build_model(_cfg(variant, "MODEL.GANAUG.ASDN.STAGE1_ITERS", 1))
    model.train()
    hook = gd.AdversaryOptimizerHook(model, base_lr=1e-3)
    adv = {n: [p.detach().clone() for p in net.parameters()] for n, net in hook.networks.items()}
    main = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    head = model.roi_heads
    with EventStorage(0) as storage:
        for _ in range(steps):
            losses = _train_step(model, hook, main, batch)
            storage.step()
    assert expected <= set(losses) and {"loss_cls", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert int(head.ganaug_iter) == steps
    # Every adversary moved, through its own optimizer, and left no gradient behind for
    # the detector's optimizer.
    for name, net in hook.networks.items():
        moved = [not torch.equal(a, p) for a, p in zip(adv[name], net.parameters())]
        assert any(moved), name
        assert all(p.grad is None for p in net.parameters()), name
    logged = set(storage.histories())
    if variant == "pgan":
        assert {"pgan/num_small", "pgan/disc_acc_real", "pgan/disc_acc_fake"} <= logged
        assert storage.history("pgan/num_small").latest() > 0
        # The generator started as the identity (zero last layer) and has left it.
        assert head.pgan.generator.out.weight.abs().sum() > 0
    else:
        stages = [v for v, _ in storage.history("asdn/stage").values()]
        assert stages == [1, 2]
        assert "asdn/target_hit" in logged and "asdn/drop_fraction" in logged
        drop = storage.history("asdn/drop_fraction").latest()
        assert drop == pytest.approx(round(49 / 3) / 49, abs=1e-6)
        # ASTN starts without rotation and has learned to rotate by the second step.
        angles = [v for v, _ in storage.history("astn/abs_angle_deg").values()]
        assert angles[0] == 0 and 0 < angles[-1] <= 10


def test_adversary_losses_do_not_reach_the_detector(batch):
    """ASDN's and the discriminator's losses train only their own networks."""
    for variant, key in (("asdn", "loss_asdn_mask"), ("pgan", "loss_pgan_disc")):
        torch.manual_seed(0)
        model = build_model(_cfg(variant))
        model.train()
        with EventStorage(0):
            losses = model(batch)
        losses[key].backward()
        own = {id(p) for net in gd.find_adversaries(model).values() for p in net.parameters()}
        leaked = [
            n for n, p in model.named_parameters()
            if id(p) not in own and p.grad is not None and p.grad.abs().sum() > 0
        ]  # fmt: skip
        assert not leaked, (variant, leaked[:3])
        assert any(p.grad is not None for net in gd.find_adversaries(model).values()
                   for p in net.parameters())  # fmt: skip


@pytest.mark.parametrize("variant", ["pgan", "asdn_astn"])
def test_inference_matches_standard_head(batch, variant):
    """ASDN/ASTN change nothing at inference; an untrained PGAN generator is the identity."""
    torch.manual_seed(0)
    ours = build_model(_cfg(variant)).eval()
    base = build_model(_cfg("baseline")).eval()
    missing, unexpected = [], []
    result = base.load_state_dict(ours.state_dict(), strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    assert not missing and all(k.startswith("roi_heads.") for k in unexpected)
    inputs = [{k: v for k, v in b.items() if k != "instances"} for b in batch]
    with torch.no_grad():
        a, b = ours(inputs), base(inputs)
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y)
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor)
        torch.testing.assert_close(x.scores, y.scores)


@pytest.mark.parametrize("reference", ["original", "input"])
def test_pgan_small_area_in_original_pixels(batch, reference, monkeypatch):
    """After detectron2's resize (about 0.2x here), a box of 31 x 31 original pixels is
    small and one of 33 x 33 is large (COCO's 32 x 32 rule, SMALL_AREA 1024); measured in
    network-input pixels both would be small."""
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    cfg = _cfg("pgan", "MODEL.GANAUG.PGAN.AREA_REFERENCE", reference)
    assert cfg.MODEL.GANAUG.PGAN.SMALL_AREA == 1024.0
    model = gd.GanaugTrainer.build_model(cfg).eval()
    model.proposal_generator = None  # detectron2's precomputed-proposals path
    head = model.roi_heads
    inputs = []
    for b in batch:
        h, w = b["image"].shape[-2:]
        assert h * w < 0.1 * b["height"] * b["width"]  # really resized
        to_input = ((h * w) / (b["height"] * b["width"])) ** 0.5
        boxes = [[10.0, 10.0, 10.0 + side * to_input, 10.0 + side * to_input] for side in (31, 33)]
        props = Instances((h, w))
        props.proposal_boxes = Boxes(torch.tensor(boxes))
        props.objectness_logits = torch.zeros(2)
        inputs.append({"image": b["image"], "height": b["height"], "width": b["width"],
                       "proposals": props})  # fmt: skip
    seen = []
    enhance = head.pgan.enhance

    def spy(features, small, fine_features=None, **kwargs):
        seen.append(small.clone())
        return enhance(features, small, fine_features, **kwargs)

    monkeypatch.setattr(head.pgan, "enhance", spy)
    with torch.no_grad():
        model(inputs)
    want = [True, False, True, False] if reference == "original" else [True] * 4
    assert seen[0].tolist() == want
    assert head._original_sizes is None  # cleared after the forward


def test_pgan_fine_pooling_and_inplace_inference(batch, monkeypatch):
    """The fine level is pooled for the small proposals only, and equals pooling every
    proposal then selecting; inference writes the generated rows in place (no_grad) and
    gives the same detections as the copying path (eval with autograd on)."""
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    cfg = _cfg("pgan", "MODEL.GANAUG.PGAN.FINE_FEATURE", "p2")
    model = gd.GanaugTrainer.build_model(cfg).eval()
    model.proposal_generator = None
    head = model.roi_heads
    with torch.no_grad():
        head.pgan.generator.out.weight.normal_(std=0.1)  # no longer the identity
    inputs = []
    for b in batch:
        h, w = b["image"].shape[-2:]
        to_input = ((h * w) / (b["height"] * b["width"])) ** 0.5
        sides = (20, 31, 33, 200)  # original pixels: small, small, large, large
        boxes = [[5.0 + i, 8.0, 5.0 + i + s * to_input, 8.0 + s * to_input]
                 for i, s in enumerate(sides)]  # fmt: skip
        props = Instances((h, w))
        props.proposal_boxes = Boxes(torch.tensor(boxes))
        props.objectness_logits = torch.zeros(len(sides))
        inputs.append({"image": b["image"], "height": b["height"], "width": b["width"],
                       "proposals": props})  # fmt: skip
    calls = []
    pool = head.fine_pooler.forward

    def spy(x, boxes):
        out = pool(x, boxes)
        every = pool(x, [p.proposal_boxes for p in proposals])
        calls.append((sum(len(b) for b in boxes), out, every))
        return out

    proposals = [i["proposals"] for i in inputs]
    monkeypatch.setattr(head.fine_pooler, "forward", spy)
    with torch.no_grad():
        in_place = model(inputs)
    ((n_small, fine, every),) = calls
    assert n_small == 2 * len(inputs)
    small = torch.tensor([True, True, False, False] * len(inputs))
    torch.testing.assert_close(fine, every[small])
    model.eval()
    with torch.enable_grad():
        copied = model(inputs)
    for x, y in zip(in_place, copied):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y)
        torch.testing.assert_close(x.scores, y.scores.detach())


def test_empty_proposals_and_no_foreground(batch):
    torch.manual_seed(0)
    model = build_model(_cfg("asdn_astn", "MODEL.GANAUG.ASDN.STAGE1_ITERS", 0))
    model.train()
    # An image without annotations: every proposal is background.
    empty = dict(batch[0])
    empty["instances"] = batch[0]["instances"][:0]
    with EventStorage(0):
        losses = model([empty])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in model.roi_heads.asdn.parameters())


# ---------------------------------------------------------------- trainer, checkpoint, launch


def _trainer_cfg(tmp_path, variant, max_iter, *opts):
    cfg = _cfg(
        variant,
        "SOLVER.MAX_ITER", max_iter,
        "SOLVER.IMS_PER_BATCH", 1,
        "SOLVER.WARMUP_ITERS", 1,
        "DATASETS.TEST", (),
        "OUTPUT_DIR", str(tmp_path),
        *opts,
    )  # fmt: skip
    return cfg


def test_checkpoint_round_trip(tmp_path, coco128_dir):
    """Model (generator + discriminator), SGD and the adversaries' Adam all come back."""
    torch.manual_seed(0)
    cfg = _trainer_cfg(tmp_path, "pgan", 2)
    trainer = gd.GanaugTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "model_final.pth").is_file()
    hook = next(h for h in trainer._hooks if isinstance(h, gd.AdversaryOptimizerHook))
    adam_state = hook.optimizer.state_dict()
    assert adam_state["state"], "the adversaries' Adam never stepped"

    cfg2 = _trainer_cfg(tmp_path, "pgan", 3)
    torch.manual_seed(1)
    restored = gd.GanaugTrainer(cfg2)
    restored.resume_or_load(resume=True)
    assert restored.start_iter == 2
    want = trainer.model.state_dict()
    got = restored.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    hook2 = next(h for h in restored._hooks if isinstance(h, gd.AdversaryOptimizerHook))
    for sid, st in adam_state["state"].items():
        torch.testing.assert_close(hook2.optimizer.state_dict()["state"][sid]["exp_avg"],
                                   st["exp_avg"])  # fmt: skip
    sgd_want = trainer.optimizer.state_dict()["state"]
    sgd_got = restored.optimizer.state_dict()["state"]
    assert sgd_want.keys() == sgd_got.keys()


def test_trainer_pastes_when_enabled(tmp_path, coco128_dir, monkeypatch):
    """GANAUG.PASTE.ENABLED: GanaugTrainer's loader maps with PasteDatasetMapper, whose
    bank holds only training-split objects; two real train steps."""
    from ganaug.detectron2.paste_mapper import PasteDatasetMapper

    seen = []
    call = PasteDatasetMapper.__call__

    def spy(self, dataset_dict):
        out = call(self, dataset_dict)
        n_in = sum(not a.get("iscrowd", 0) for a in dataset_dict.get("annotations", []))
        seen.append((self, n_in, len(out["instances"])))
        return out

    monkeypatch.setattr(PasteDatasetMapper, "__call__", spy)
    cfg = _trainer_cfg(
        tmp_path, "paste", 2,
        "DATASETS.TRAIN", ("coco128_train",),
        "GANAUG.PASTE.PROB", 1.0,
        "GANAUG.PASTE.MAX_PER_CLASS", 5,
        "GANAUG.PASTE.SEED", 0,
    )  # fmt: skip
    trainer = gd.GanaugTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 2 and seen
    mapper = seen[0][0]
    assert mapper.copy_paste is not None
    assert any(n_out > n_in for _, n_in, n_out in seen), seen
    # Objects are cut from training images only: none from the held-out split.
    val_files = {Path(r["file_name"]).name for r in DatasetCatalog.get("coco128_val")}
    sources = {
        Path(inst.source).name for c in mapper.copy_paste.bank.classes
        for inst in mapper.copy_paste.bank[c]
    }  # fmt: skip
    assert sources and not sources & val_files
    # Without the key the loader is detectron2's own.
    cfg.defrost()
    cfg.GANAUG.PASTE.ENABLED = False
    seen.clear()
    next(iter(gd.GanaugTrainer.build_train_loader(cfg)))
    assert not seen


def test_learned_paste_hook_online(tmp_path, coco128_dir):
    """GANAUG.PASTE.LEARNED: the synthesizer and its discriminator train online beside a
    PGAN detector (whose discriminator keeps its own Adam); state in the checkpoint."""
    from ganaug.detectron2.paste_hook import LearnedPasteHook

    torch.manual_seed(0)
    cfg = _trainer_cfg(
        tmp_path, "paste_learned", 2,
        "MODEL.ROI_HEADS.NAME", "PerceptualGANROIHeads",
        "DATASETS.TRAIN", ("coco128_train",),
        "GANAUG.PASTE.MAX_PER_CLASS", 3,
        "GANAUG.PASTE.LEARNED.PERIOD", 1,
        "GANAUG.PASTE.LEARNED.BATCH", 1,
        "GANAUG.PASTE.LEARNED.FG_SIZE", 32,
        "GANAUG.PASTE.LEARNED.SYN_SIZE", 32,
        "GANAUG.PASTE.LEARNED.SYN_WIDTH", 8,
        "GANAUG.PASTE.LEARNED.DISC_WIDTH", 8,
        "SOLVER.CHECKPOINT_PERIOD", 2,
    )  # fmt: skip
    trainer = gd.GanaugTrainer(cfg)
    hook = next(h for h in trainer._hooks if isinstance(h, LearnedPasteHook))
    syn0 = [p.detach().clone() for p in hook.paste.synthesizer.parameters()]
    disc0 = [p.detach().clone() for p in hook.paste.discriminator.parameters()]
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert hook.paste.steps == 2
    assert any(not torch.equal(a, p) for a, p in zip(syn0, hook.paste.synthesizer.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(disc0, hook.paste.discriminator.parameters()))
    # The adversaries' gradients were consumed by their own Adam, not the detector's SGD.
    for net in gd.find_adversaries(trainer.model).values():
        assert all(p.grad is None for p in net.parameters())
    hist = trainer.storage.histories()
    assert {"paste/loss_adv", "paste/loss_disc", "paste/task_loss"} <= set(hist)
    assert np.isfinite(trainer.storage.history("paste/task_loss").latest())
    ckpt = torch.load(tmp_path / "model_final.pth", weights_only=False)
    state = ckpt["trainer"]["hooks"]
    key = next(k for k in state if k.endswith("LearnedPasteHook"))
    assert state[key]["paste"]["steps"] == 2


def test_per_class_metrics_record(tmp_path):
    bbox = {"AP": 1.5, "AP50": 3.0, "AP75": 0.5, "APs": 0.1, "APm": 2.0, "APl": float("nan"),
            "AP-person": 4.0, "AP-zebra": float("nan")}  # fmt: skip
    rec = gd.per_class_metrics(bbox, run="r", counts={"person": 254})
    path = tmp_path / "x" / "per_class_metrics.json"
    gd.write_per_class_metrics(path, rec)
    loaded = json.loads(path.read_text())
    assert loaded["task"] == "detection" and loaded["metric"] == "AP"
    assert loaded["per_class"] == {"person": 4.0}
    assert loaded["summary"]["mAP"] == 1.5 and "APl" not in loaded["summary"]
    assert loaded["class_counts"] == {"person": 254} and loaded["run"] == "r"


def _launch_main(cfg):
    trainer = gd.GanaugTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    from detectron2.utils import comm

    # Both processes must hold the same weights after DDP steps (adversaries included).
    net = gd.find_adversaries(trainer.model)
    flat = torch.cat([p.detach().flatten() for n in sorted(net) for p in net[n].parameters()])
    everything = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    all_flat = comm.all_gather((flat, everything))
    inner = trainer.model.module
    tracked = bool(getattr(inner, "_ganaug_tracks_sizes", False))
    if comm.is_main_process():
        torch.save(
            {"adv": [a for a, _ in all_flat], "all": [b for _, b in all_flat], "tracked": tracked},
            os.path.join(cfg.OUTPUT_DIR, "adv_params.pt"),
        )


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("GANAUG_TEST_DIST") != "1",
    reason="2-process launch re-imports torch and detectron2 in each process (about 30 s on "
    "a quiet 2-core machine, minutes on a busy one): set GANAUG_TEST_DIST=1 to run it",
)
@pytest.mark.parametrize("variant", ["asdn_astn", "pgan"])
def test_launch_two_cpu_processes(tmp_path, coco128_dir, variant):
    """Under detectron2's launch (2 gloo processes, DDP without device_ids) both processes
    end with identical adversary weights: ASDN (stage 1 then 2) + ASTN, and the PGAN
    discriminator (its generator is part of the DDP-synchronised detector)."""
    from detectron2.engine import launch

    cfg = _trainer_cfg(tmp_path, variant, 2, "MODEL.GANAUG.ASDN.STAGE1_ITERS", 1)
    cfg.SOLVER.IMS_PER_BATCH = 2  # one image per process
    env = {ENV_VAR: os.environ.get(ENV_VAR, str(coco128_dir.parent))}
    os.environ.update(env)
    launch(_launch_main, 2, dist_url="auto", args=(cfg,))
    saved = torch.load(tmp_path / "adv_params.pt")
    torch.testing.assert_close(saved["adv"][0], saved["adv"][1])
    torch.testing.assert_close(saved["all"][0], saved["all"][1])
    # The Perceptual-GAN head measured areas in original pixels inside DDP, too.
    assert saved["tracked"] == (variant == "pgan")
