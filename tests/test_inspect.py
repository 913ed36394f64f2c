"""ganaug inspect: statistics on constructed inputs with known answers, the three sample
sets, bad input, and recommendations from constructed figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ganaug.inspect import InspectError, detect_format, inspect_dataset
from ganaug.inspect import coco as coco_mod
from ganaug.inspect._common import ScaleAccumulator, imbalance_ratio
from ganaug.inspect.classfolder import inspect_classfolders, split_samples_and_masks
from ganaug.inspect.formats import find_labelmap_splits
from ganaug.inspect.labelmap import inspect_labelmaps, read_label_map
from ganaug.inspect.recommend import NOT_AVAILABLE, recommend
from ganaug.inspect.report import format_markdown, format_summary, write_report


def main(argv):
    """Run our subcommand through its own parser: ganaug.cli would also import every other
    subcommand (mmseg's main job among them), which costs seconds unrelated to this test."""
    import argparse
    import importlib

    from ganaug.cli import SUBCOMMANDS

    assert SUBCOMMANDS[argv[0]] == "ganaug.inspect.cli"
    parser = argparse.ArgumentParser()
    importlib.import_module("ganaug.inspect.cli").add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------- shared statistics


def test_imbalance_ratio_ignores_absent_classes():
    assert imbalance_ratio([10, 0, 2]) == 5.0
    assert imbalance_ratio([0, 0]) is None


def test_scale_accumulator_buckets_and_cv():
    acc = ScaleAccumulator(num_classes=2)
    # 31^2 is small, 32^2 is medium (COCO: small < 32^2), 96^2 is large.
    areas = np.array([31.0**2, 32.0**2, 95.0**2, 96.0**2, 50.0**2])
    acc.add(classes=np.array([0, 0, 0, 0, 1]), areas=areas)
    assert acc.buckets[0].tolist() == [1, 2, 1]
    assert acc.buckets[1].tolist() == [0, 1, 0]
    scale = np.sqrt(areas[:4])
    assert acc.cv()[0] == pytest.approx(scale.std() / scale.mean())
    assert math.isnan(acc.cv()[1])  # one object: no spread to measure
    overall = acc.overall()
    assert overall["objects"] == 5 and overall["small_share"] == pytest.approx(0.2)
    assert overall["scale_cv"] == pytest.approx(np.sqrt(areas).std() / np.sqrt(areas).mean())


def test_box_iou_pairs_known_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]], dtype=float)
    b = np.array([[1, 1, 2, 2], [0, 0, 2, 2], [5, 5, 1, 1]], dtype=float)
    np.testing.assert_allclose(coco_mod.box_iou_pairs(a, b), [1 / 7, 1.0, 0.0])


@pytest.mark.parametrize("budget", [4_000_000, 7])
def test_max_overlap_matches_brute_force(monkeypatch, budget):
    # A tiny budget sends every multi-box image through the row-block path.
    monkeypatch.setattr(coco_mod, "_PAIR_BUDGET", budget)
    rng = np.random.default_rng(0)
    n = 60
    img = rng.integers(0, 7, n)
    boxes = np.c_[rng.uniform(0, 50, (n, 2)), rng.uniform(1, 30, (n, 2))]
    got, pi, pj = coco_mod.max_overlap_per_instance(image_index=img, boxes=boxes)
    want = np.zeros(n)
    pairs = set()
    for i in range(n):
        for j in range(n):
            if i != j and img[i] == img[j]:
                v = coco_mod.box_iou_pairs(boxes[i : i + 1], boxes[j : j + 1])[0]
                want[i] = max(want[i], v)
                if v > 0:
                    pairs.add((min(i, j), max(i, j)))
    np.testing.assert_allclose(got, want)
    assert {(min(a, b), max(a, b)) for a, b in zip(pi, pj)} == pairs


# ---------------------------------------------------------------- COCO


def _coco_doc():
    def ann(i, img, cat, box, **kw):
        return {
            "id": i,
            "image_id": img,
            "category_id": cat,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": 0,
            **kw,
        }

    return {
        "images": [
            {"id": k, "file_name": f"{k}.jpg", "width": 200, "height": 200} for k in (1, 2, 3)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            ann(1, 1, 1, [0, 0, 10, 10]),  # small
            ann(2, 1, 1, [100, 100, 50, 50]),  # medium
            ann(3, 2, 1, [0, 0, 100, 100]),  # large
            ann(4, 2, 2, [0, 0, 100, 50]),  # IoU 0.5 with ann 3
            ann(5, 2, 99, [0, 0, 5, 5]),  # category outside the declared ones
            ann(6, 1, 2, [0, 0, 10, 10], iscrowd=1),
            ann(7, 1, 2, [3, 3, 0, 4]),  # zero width
        ],
    }


def test_coco_statistics_known_answers(tmp_path):
    path = tmp_path / "instances_toy.json"
    path.write_text(json.dumps(_coco_doc()))
    r = coco_mod.inspect_coco(path, occlusion_iou=0.3, mask_overlap=False)
    assert r["class_counts"] == {"a": 3, "b": 2, "c": 0}
    assert r["absent_classes"] == ["c"]
    assert r["imbalance_ratio"] == pytest.approx(1.5)
    a, b = r["per_class"]["a"], r["per_class"]["b"]
    assert (a["small"], a["medium"], a["large"]) == (1, 1, 1)
    assert a["images"] == 2 and b["images"] == 2  # degenerate box still marks presence
    assert a["image_share"] == pytest.approx(2 / 3)
    # Box 3 (class a) and box 4 (class b) overlap with IoU 0.5; degenerate box excluded.
    assert a["occluded_share"] == pytest.approx(1 / 3)
    assert b["occluded_share"] == pytest.approx(1.0)
    assert b["mean_max_iou"] == pytest.approx(0.5)
    assert r["occlusion"]["overlapping_pairs"] == 1
    s = np.sqrt([100, 2500, 10000])
    assert a["scale_cv"] == pytest.approx(s.std() / s.mean())
    p = r["problems"]
    assert p["images_without_annotations"] == {"count": 1, "examples": ["3.jpg"]}
    assert p["labels_outside_classes"] == {"count": 1, "values": {"99": 1}}
    assert p["degenerate_boxes"]["count"] == 1 and p["degenerate_boxes"]["examples"] == [7]
    assert p["duplicate_image_ids"]["count"] == 0
    assert p["crowd_annotations"] == 1


def test_coco_mask_overlap(tmp_path):
    doc = _coco_doc()
    # Two square polygons: 10x10 and a 10x10 shifted by 5 -> mask IoU 50/150.
    sq = lambda x, y: [[x, y, x + 10, y, x + 10, y + 10, x, y + 10]]  # noqa: E731
    doc["annotations"] = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "segmentation": sq(0, 0),
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "bbox": [5, 0, 10, 10],
            "area": 100,
            "segmentation": sq(5, 0),
            "iscrowd": 0,
        },
    ]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    r = coco_mod.inspect_coco(path)
    assert r["occlusion"]["mask_pairs_checked"] == 1
    assert r["per_class"]["a"]["mask_overlap_mean"] == pytest.approx(1 / 3, abs=0.03)
    assert r["per_class"]["a"]["mean_max_iou"] == pytest.approx(1 / 3)


def test_duplicate_image_ids_reported(tmp_path):
    doc = _coco_doc()
    doc["images"].append({"id": 2, "file_name": "again.jpg"})
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(doc))
    dup = coco_mod.inspect_coco(path, mask_overlap=False)["problems"]["duplicate_image_ids"]
    assert dup == {"count": 1, "examples": [2]}


def test_truncated_coco_json_names_the_file(tmp_path):
    path = tmp_path / "instances_cut.json"
    path.write_text(json.dumps(_coco_doc())[:150])
    with pytest.raises(InspectError, match="instances_cut.json.*truncated"):
        inspect_dataset(path)


def test_malformed_annotation_is_located(tmp_path):
    doc = _coco_doc()
    del doc["annotations"][4]["bbox"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InspectError, match=r"bad.json: annotations\[4\] has no 'bbox'"):
        coco_mod.inspect_coco(path)


def test_coco_missing_and_unreadable_images_are_reported(tmp_path):
    doc = _coco_doc()
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (200, 200)).save(tmp_path / "imgs" / "1.jpg")
    (tmp_path / "imgs" / "2.jpg").write_bytes(b"not an image")
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    r = coco_mod.inspect_coco(path, images_dir=tmp_path / "imgs")
    bad = {
        e["file"].rsplit("/", 1)[1]: e["error"]
        for e in r["problems"]["unreadable_files"]["examples"]
    }
    assert set(bad) == {"2.jpg", "3.jpg"}
    assert "does not exist" in bad["3.jpg"] and "cannot be read" in bad["2.jpg"]


# ---------------------------------------------------------------- label maps


def _write_labelmaps(root, maps, names=None):
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, lab in enumerate(maps):
        name = names[i] if names else f"m{i}"
        Image.fromarray(lab.astype(np.uint8), mode="L").save(root / "annotations" / f"{name}.png")
        Image.new("RGB", lab.shape[::-1]).save(root / "images" / f"{name}.jpg")


def _toy_maps():
    m0 = np.zeros((8, 8), np.uint8)
    m0[:, 4:] = 1
    m0[0, 0] = 255  # ignored
    m1 = np.zeros((8, 8), np.uint8)
    m1[2:4, 2:4] = 2
    m1[6, 6] = 2  # a second region of class 2
    m1[7, 0] = 7  # outside the three declared classes
    return [m0, m1]


def test_labelmap_statistics_known_answers(tmp_path):
    _write_labelmaps(tmp_path, _toy_maps())
    splits = find_labelmap_splits(tmp_path)
    assert [(s.name, s.labels.name) for s in splits] == [("images", "annotations")]
    r = inspect_labelmaps(splits, classes=["bg", "one", "two"], ignore_index=255)
    assert r["class_counts"] == {"bg": 31 + 58, "one": 32, "two": 5}
    assert r["ignored_pixels"] == 1
    assert r["per_class"]["two"]["share"] == pytest.approx(5 / 126)
    assert r["per_class"]["one"]["image_share"] == 0.5
    assert r["per_class"]["bg"]["images"] == 2
    assert r["per_class"]["two"]["regions"] == 2
    assert r["per_class"]["two"]["small"] == 2
    s = np.sqrt([4.0, 1.0])
    assert r["per_class"]["two"]["scale_cv"] == pytest.approx(s.std() / s.mean())
    out = r["problems"]["labels_outside_classes"]
    assert out["files_per_value"] == {"7": 1} and out["pixels_per_value"] == {"7": 1}
    assert out["examples"][0].endswith("m1.png")
    assert r["imbalance_ratio"] == pytest.approx(89 / 5)


def test_labelmap_without_declared_classes_uses_seen_values(tmp_path):
    _write_labelmaps(tmp_path, _toy_maps())
    r = inspect_dataset(tmp_path, components=False, recommend=False)
    assert r["format"] == "labelmap"
    assert r["classes"] == ["class_0", "class_1", "class_2", "class_7"]
    assert r["scale"] is None


def test_corrupt_label_png_reported_or_raised(tmp_path):
    _write_labelmaps(tmp_path, _toy_maps())
    (tmp_path / "annotations" / "m1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    r = inspect_dataset(tmp_path, classes="bg,one,two", recommend=False)
    bad = r["problems"]["unreadable_files"]
    assert bad["count"] == 1 and bad["examples"][0]["file"].endswith("m1.png")
    assert r["num_images"] == 1
    with pytest.raises(InspectError, match="m1.png: cannot be decoded"):
        inspect_dataset(tmp_path, classes="bg,one,two", strict=True)


def test_colour_label_map_is_refused_with_its_mode(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(InspectError, match="rgb.png: expected a single-channel.*mode RGB"):
        read_label_map(path)


def test_labelmap_pairing_problems(tmp_path):
    _write_labelmaps(tmp_path, _toy_maps())
    (tmp_path / "images" / "m0.jpg").unlink()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "orphan.jpg")
    Image.new("RGB", (9, 8)).save(tmp_path / "images" / "m1.jpg")
    r = inspect_dataset(tmp_path, recommend=False)
    p = r["problems"]
    assert p["label_maps_without_image"]["count"] == 1
    assert p["images_without_label_map"]["examples"][0].endswith("orphan.jpg")
    assert p["size_mismatch"]["examples"][0]["image"] == [8, 9]


# ---------------------------------------------------------------- class folders


def _write_classfolders(root):
    for cls, n in (("common", 3), ("rare", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (40, 20), 100).save(root / cls / f"x{i}.jpg")
            mask = np.zeros((20, 40), np.uint8)
            if cls == "rare":
                mask[5:10, 5:10] = 255
                mask[0, 39] = 127  # anti-aliased grey below the 128 threshold
            Image.fromarray(mask).save(root / cls / f"x{i}.png")


def test_classfolder_masks_not_counted_as_samples(tmp_path):
    _write_classfolders(tmp_path)
    samples, masks = split_samples_and_masks(tmp_path / "common")
    assert [p.name for p in samples] == ["x0.jpg", "x1.jpg", "x2.jpg"]
    assert masks[samples[0]].name == "x0.png"
    r = inspect_classfolders(tmp_path)
    assert r["class_counts"] == {"common": 3, "rare": 1}
    assert r["imbalance_ratio"] == 3.0
    rare = r["per_class"]["rare"]
    assert rare["mask_pixel_share"] == pytest.approx(25 / 800)
    assert (rare["regions"], rare["small"]) == (1, 1)
    assert r["per_class"]["common"]["empty_masks"] == 3
    assert r["per_class"]["common"]["width_mean"] == 40.0


def test_classfolder_corrupt_image_and_undeclared_folder(tmp_path):
    _write_classfolders(tmp_path)
    (tmp_path / "common" / "x1.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r = inspect_classfolders(tmp_path, classes=["common"])
    assert r["problems"]["unreadable_files"]["examples"][0]["file"].endswith("x1.jpg")
    assert r["class_counts"] == {"common": 2}
    assert r["problems"]["labels_outside_classes"]["folders"] == {"rare": 1}
    with pytest.raises(InspectError, match="x1.jpg"):
        inspect_classfolders(tmp_path, strict=True)


# ---------------------------------------------------------------- format detection


def test_detect_format_constructed_layouts(tmp_path):
    (tmp_path / "c" / "annotations").mkdir(parents=True)
    (tmp_path / "c" / "annotations" / "instances_val.json").write_text(json.dumps(_coco_doc()))
    _write_labelmaps(tmp_path / "s", _toy_maps())
    _write_classfolders(tmp_path / "k")
    assert detect_format(tmp_path / "c") == "coco"
    assert detect_format(tmp_path / "c" / "annotations" / "instances_val.json") == "coco"
    assert detect_format(tmp_path / "s") == "labelmap"
    assert detect_format(tmp_path / "k") == "classfolder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InspectError, match="empty: no known dataset layout"):
        detect_format(tmp_path / "empty")


def test_detect_format_sample_sets(camvid_dir, coco128_dir, magnetic_tile_dir):
    assert detect_format(camvid_dir) == "labelmap"
    assert detect_format(coco128_dir) == "coco"
    assert detect_format(magnetic_tile_dir) == "classfolder"


# ---------------------------------------------------------------- the three sample sets


@pytest.fixture(scope="module")
def coco128_report(coco128_dir):
    return inspect_dataset(coco128_dir)


@pytest.fixture(scope="module")
def camvid_report(camvid_dir):
    return inspect_dataset(camvid_dir)


@pytest.fixture(scope="module")
def magnetic_report(magnetic_tile_dir):
    return inspect_dataset(magnetic_tile_dir)


def test_coco128_figures(coco128_report):
    r = coco128_report
    assert r["num_images"] == 128 and r["num_annotations"] == 939
    assert r["class_counts"]["person"] == 254
    assert len(r["classes"]) - len(r["absent_classes"]) == 71
    assert r["scale"]["small_share"] == pytest.approx(0.446, abs=0.001)
    assert r["problems"]["images_without_annotations"]["count"] == 2
    assert r["problems"]["unreadable_files"]["count"] == 0
    keys = {rec["technique"] for rec in r["recommendations"]}
    assert {"perceptual_gan", "small_paste", "rare_paste"} <= keys


def test_camvid_figures(camvid_report):
    r = camvid_report
    assert r["splits"] == ["train"] and r["num_images"] == 367
    share = {k: round(100 * v["share"], 2) for k, v in r["per_class"].items()}
    assert share["Road"] == 33.10 and share["Bicyclist"] == 0.30 and share["Pole"] == 1.02
    assert r["imbalance_ratio"] == pytest.approx(110, rel=0.02)
    rec = next(x for x in r["recommendations"] if x["technique"] == "labelmap_rebalance")
    assert rec["trigger"]["classes"] == ["Bicyclist", "Pedestrian"]


def test_magnetic_tile_figures(magnetic_report):
    r = magnetic_report
    assert r["class_counts"] == {
        "MT_Blowhole": 87, "MT_Break": 64, "MT_Crack": 43,
        "MT_Fray": 24, "MT_Free": 714, "MT_Uneven": 78,
    }  # fmt: skip
    assert r["per_class"]["MT_Free"]["empty_masks"] == 714
    assert 0.0 < r["per_class"]["MT_Crack"]["mask_pixel_share"] < 0.05
    assert r["recommendations"][0]["technique"] == "gan_oversampling"


def test_outputs_for_sample_sets(tmp_path, coco128_report, camvid_report, magnetic_report):
    for report in (coco128_report, camvid_report, magnetic_report):
        out = tmp_path / report["name"]
        paths = write_report(report, out)
        data = json.loads(paths["json"].read_text())
        assert data["class_counts"] == report["class_counts"]
        assert paths["class_counts"].stat().st_size > 1000
        md = paths["markdown"].read_text()
        assert "## Recommendations" in md and "| class |" in md
        assert report["name"] in format_summary(report)
    assert (tmp_path / "camvid" / "presence.png").is_file()
    assert (tmp_path / "coco128" / "occlusion.png").is_file()


def test_cli_inspect_writes_files(tmp_path, coco128_dir, capsys):
    assert main(["inspect", str(coco128_dir), "--out", str(tmp_path), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "imbalance ratio (instances): 254.0:1" in text
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.md").is_file()


def test_cli_inspect_truncated_json_exit_code(tmp_path, capsys):
    path = tmp_path / "instances_cut.json"
    path.write_text('{"images": [{"id": 1}], "annotations": [')
    assert main(["inspect", str(path), "--out", str(tmp_path / "o")]) == 1
    assert "instances_cut.json: not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- recommendations


def _report(task, per_class, counts, ratio, **extra):
    return {
        "task": task,
        "per_class": per_class,
        "class_counts": counts,
        "imbalance_ratio": ratio,
        "absent_classes": [],
        "name": "toy",
        **extra,
    }


def test_recommend_small_objects_names_config_when_available(tmp_path):
    cfg = tmp_path / "configs" / "torchvision"
    cfg.mkdir(parents=True)
    (cfg / "pgan_frcnn_toy.py").write_text("")
    (cfg / "faster_rcnn_baseline.py").write_text("")
    r = _report(
        "detection",
        {"a": {"count": 20, "small_share": 0.9}},
        {"a": 20},
        1.0,
        scale={"small_share": 0.9},
    )
    recs = recommend(r, config_root=tmp_path, is_available=lambda m: True)
    pgan = next(x for x in recs if x["technique"] == "perceptual_gan")
    assert pgan["available"] and pgan["config"] == "configs/torchvision/pgan_frcnn_toy.py"
    assert pgan["trigger"] == {
        "figure": "small_share",
        "value": 0.9,
        "threshold": 0.3,
        "classes": ["a"],
    }
    assert "90.0% of objects are small" in pgan["reason"]


def test_recommend_says_not_yet_available(tmp_path):
    r = _report(
        "detection",
        {"a": {"count": 20, "occluded_share": 0.4}},
        {"a": 20},
        1.0,
        scale={"small_share": 0.0},
        occlusion={"iou_threshold": 0.3},
    )
    recs = recommend(r, config_root=tmp_path, is_available=lambda m: False)
    assert [x["technique"] for x in recs] == ["asdn_astn"]
    assert recs[0]["status"] == NOT_AVAILABLE and recs[0]["config"] is None


def test_recommend_segmentation_and_classification(tmp_path):
    seg = _report(
        "segmentation",
        {
            "road": {"share": 0.995, "image_share": 1.0},
            "bike": {"share": 0.005, "image_share": 0.05},
        },
        {"road": 995, "bike": 5},
        199.0,
    )
    recs = recommend(seg, config_root=tmp_path, is_available=lambda m: True)
    keys = [(x["technique"], x["trigger"]["figure"]) for x in recs]
    assert keys == [
        ("labelmap_rebalance", "pixel_share"),
        ("adv_seg", "pixel_share"),
        ("labelmap_rebalance", "image_share"),
    ]
    cls = _report("classification", {"ok": {}, "rare": {}}, {"ok": 500, "rare": 12}, 41.7)
    recs = recommend(cls, config_root=tmp_path, is_available=lambda m: True)
    assert [x["technique"] for x in recs] == ["gan_oversampling"]
    assert recs[0]["trigger"]["classes"] == ["rare"] and recs[0]["available"]


def test_recommend_nothing_for_balanced_data(tmp_path):
    r = _report("classification", {"a": {}, "b": {}}, {"a": 300, "b": 280}, 300 / 280)
    assert recommend(r, config_root=tmp_path) == []
    assert "None triggered" in format_markdown(
        {
            **r,
            "format": "classfolder",
            "source": "x",
            "num_images": 580,
            "classes": ["a", "b"],
            "count_unit": "images",
            "recommendations": [],
        }
    )


def test_labelmap_memory_does_not_grow_with_image_count(tmp_path):
    """Streaming: 18 more label maps of 64 kB each (decoded) add far less than one map to the
    peak of traced allocations (NumPy's included); only file names are kept per file."""
    import tracemalloc

    rng = np.random.default_rng(0)
    maps = [np.kron(rng.integers(0, 5, (32, 32)), np.ones((8, 8))) for _ in range(24)]
    _write_labelmaps(tmp_path / "few", maps[:6])
    _write_labelmaps(tmp_path / "many", maps)
    peaks = []
    for name in ("few", "many"):
        splits = find_labelmap_splits(tmp_path / name)
        inspect_labelmaps(splits)  # warm caches (imports, codecs) outside the measurement
        tracemalloc.start()
        r = inspect_labelmaps(splits)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert r["num_images"] == 24
    assert peaks[1] - peaks[0] < 18 * 4096, peaks  # < 4 kB per extra 64 kB map


def test_small_area_share_discounts_specks():
    acc = ScaleAccumulator(num_classes=1)
    # Nine 1-pixel specks and one 100x100 region: 90% of regions are small, 0.09% of area.
    acc.add(classes=np.zeros(10, np.int64), areas=np.array([1.0] * 9 + [10000.0]))
    e = acc.per_class(0)
    assert e["small_share"] == pytest.approx(0.9)
    assert e["small_area_share"] == pytest.approx(9 / 10009)


def test_recommend_config_matches_task_and_installed_framework(tmp_path):
    for rel in (
        "configs/paste/unet_camvid_rarepaste.py",
        "configs/detectron2/coco_pgan.yaml",
        "configs/torchvision/pgan_coco.yaml",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    r = _report(
        "detection",
        {"a": {"count": 20, "small_share": 0.9}},
        {"a": 20},
        1.0,
        scale={"small_share": 0.9},
        name="coco_toy",
    )
    recs = recommend(r, config_root=tmp_path, is_available=lambda m: m != "detectron2")
    by_key = {x["technique"]: x for x in recs}
    # A CamVid (segmentation) paste config is no start for a detection set; the module is.
    assert by_key["small_paste"]["config"] is None and by_key["small_paste"]["available"]
    assert by_key["perceptual_gan"]["config"] == "configs/torchvision/pgan_coco.yaml"
    recs = recommend(r, config_root=tmp_path, is_available=lambda m: True)
    assert recs[0]["config"] == "configs/detectron2/coco_pgan.yaml"


def test_classfolder_truncated_jpeg_is_caught(tmp_path):
    _write_classfolders(tmp_path)
    noisy = (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "rare" / "x0.jpg", quality=90)
    data = (tmp_path / "rare" / "x0.jpg").read_bytes()
    (tmp_path / "rare" / "x0.jpg").write_bytes(data[: len(data) // 2])  # header intact
    r = inspect_classfolders(tmp_path)
    bad = r["problems"]["unreadable_files"]["examples"]
    assert len(bad) == 1 and bad[0]["file"].endswith("rare/x0.jpg")
    assert "truncated" in bad[0]["error"]


def test_palette_and_16bit_label_maps(tmp_path):
    """Palette PNGs give their indices (VOC style), 16-bit maps values beyond 255."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    pal = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)  # index 1 is drawn red
    pal.save(root / "annotations" / "p.png")
    Image.fromarray(np.array([[0, 300], [300, 300]], np.uint16)).save(
        root / "annotations" / "w.png"
    )
    for name in ("p", "w"):
        Image.new("RGB", (2, 2)).save(root / "images" / f"{name}.jpg")
    assert read_label_map(root / "annotations" / "w.png").max() == 300
    r = inspect_dataset(root, recommend=False)
    assert r["class_counts"] == {"class_0": 2, "class_1": 3, "class_300": 3}
    assert r["per_class"]["class_300"]["regions"] == 1


def test_config_root_from_environment(tmp_path, monkeypatch):
    from ganaug.inspect.recommend import default_config_root

    monkeypatch.setenv("GANAUG_CONFIG_ROOT", str(tmp_path))
    assert default_config_root() == tmp_path
    monkeypatch.delenv("GANAUG_CONFIG_ROOT")
    assert (default_config_root() / "ganaug" / "inspect").is_dir()


def test_labelmap_reports_truncated_image_and_non_image_file(tmp_path, camvid_dir):
    """What a training loader would stop on is reported here, without stopping."""
    import shutil

    from ganaug.inspect.api import inspect_dataset

    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    names = sorted(p.name for p in (camvid_dir / "train").iterdir())[:3]
    for n in names:
        shutil.copy(camvid_dir / "train" / n, root / "train" / n)
        shutil.copy(camvid_dir / "trainannot" / n, root / "trainannot" / n)
    data = (root / "train" / names[0]).read_bytes()
    (root / "train" / names[0]).write_bytes(data[: len(data) // 2])
    (root / "train" / "notes.txt").write_text("not an image")
    problems = inspect_dataset(root, recommend=False)["problems"]
    assert problems["unreadable_files"]["count"] == 1
    assert names[0] in problems["unreadable_files"]["examples"][0]["file"]
    assert problems["not_image_files"]["count"] == 1
    assert problems["not_image_files"]["examples"][0].endswith("notes.txt")
