"""Label-map rebalancing, synthetic-set writer, mixed real/synthetic dataset."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ganaug.core.rebalance import (
    CAMVID_CLASSES,
    CAMVID_IGNORE_INDEX,
    CAMVID_RULES,
    class_pixel_counts,
    distribution_table,
    load_label_map,
    load_label_maps,
    plot_distribution,
    rarest_target,
    rebalance,
)
from ganaug.core.synthetic_writer import is_valid_set, sha256_file, write_synthetic_set

NC = len(CAMVID_CLASSES)


@pytest.fixture(scope="module")
def camvid_maps(camvid_dir):
    return load_label_maps(
        camvid_dir / "trainannot", num_classes=NC, ignore_index=CAMVID_IGNORE_INDEX, limit=60
    )


@pytest.fixture(scope="module")
def result(camvid_maps):
    names, maps = camvid_maps
    counts = class_pixel_counts(maps, num_classes=NC)
    target = rarest_target(counts, k=3, share=0.04)
    return rebalance(
        maps, names, num_classes=NC, target=target, n_maps=30, rules=CAMVID_RULES, seed=3
    )


def test_reaches_target_within_tolerance(result):
    assert len(result.target) == 3
    shares = result.after / result.after.sum()
    for c, s in result.target.items():
        before = result.before[c] / result.before.sum()
        assert before < 0.02  # they really were rare
        assert shares[c] == pytest.approx(s, abs=0.004), CAMVID_CLASSES[c]


def test_never_pastes_onto_forbidden_classes(result, camvid_maps):
    names, maps = camvid_maps
    by_name = dict(zip(names, maps))
    n_changed = 0
    for new, rec in zip(result.maps, result.records):
        base = by_name[rec["base"]]
        changed = new != base
        n_changed += changed.sum()
        for c in np.unique(new[changed]):
            assert c in result.target, f"pasted a non-target class {c}"
            old = base[changed & (new == c)]
            allowed = set(CAMVID_RULES[int(c)].occlude)
            assert set(np.unique(old).tolist()) <= allowed, (CAMVID_CLASSES[c], np.unique(old))
        # every paste of a class with ground support stands mostly on its support classes
        for p in rec["pastes"]:
            rule = CAMVID_RULES[p["class"]]
            top, left, bottom, right = p["box"]
            assert 0 <= top < bottom <= new.shape[0] and 0 <= left < right <= new.shape[1]
            if rule.support is not None:
                region = base[top:bottom, left:right]
                pasted = (new[top:bottom, left:right] == p["class"]) & (region != p["class"])
                cols = np.flatnonzero(pasted.any(0))
                rows = pasted.shape[0] - 1 - np.argmax(pasted[::-1, cols], axis=0)
                on = np.isin(region[rows, cols], rule.support).mean()
                # bottom pixels of the visible part may differ from the full segment's
                assert on >= 0.3, (CAMVID_CLASSES[p["class"]], on)
    assert n_changed > 0


def test_deterministic_with_seed(camvid_maps, result):
    names, maps = camvid_maps
    again = rebalance(
        maps, names, num_classes=NC, target=result.target, n_maps=30, rules=CAMVID_RULES, seed=3
    )
    assert all(np.array_equal(a, b) for a, b in zip(again.maps, result.maps))
    other = rebalance(
        maps, names, num_classes=NC, target=result.target, n_maps=30, rules=CAMVID_RULES, seed=4
    )
    assert not all(np.array_equal(a, b) for a, b in zip(other.maps, result.maps))


def test_vertical_placement_statistics_are_kept(result, camvid_maps):
    names, maps = camvid_maps
    ped = CAMVID_CLASSES.index("Pedestrian")
    real_rows = np.concatenate([np.nonzero(m == ped)[0] for m in maps]) / maps[0].shape[0]
    new_rows = np.concatenate([np.nonzero(m == ped)[0] for m in result.maps]) / maps[0].shape[0]
    # pedestrians stay in the middle band of the frame, as in the real maps
    assert abs(np.median(new_rows) - np.median(real_rows)) < 0.1


def test_report_table_and_plot(result, tmp_path):
    table = distribution_table(result.before, result.after, CAMVID_CLASSES, result.target)
    assert table.count("\n") == NC + 1 and "| Bicyclist |" in table
    png = plot_distribution(result.before, result.after, CAMVID_CLASSES, tmp_path / "d.png")
    assert png.stat().st_size > 1000


def test_unknown_classes_in_a_label_map_are_named(tmp_path):
    bad = np.full((10, 12), 3, np.uint8)
    bad[0, 0] = 42
    path = tmp_path / "weird.png"
    cv2.imwrite(str(path), bad)
    with pytest.raises(ValueError, match=r"weird\.png: label values \[42\] are not among"):
        load_label_map(path, num_classes=NC, ignore_index=CAMVID_IGNORE_INDEX)


def test_impossible_targets_are_rejected(camvid_maps):
    names, maps = camvid_maps
    with pytest.raises(ValueError, match="sum below 1"):
        rebalance(maps, names, num_classes=NC, target={9: 0.6, 10: 0.5}, n_maps=1)
    with pytest.raises(ValueError, match=r"share must be in \(0, 1/k\)"):
        rarest_target(np.ones(NC), k=3, share=0.5)


# ----------------------------------------------------------------------------- writer


def _fake_generate(calls):
    def generate(labels):
        calls.append(len(labels))
        return [np.repeat((lb * 20)[..., None], 3, axis=2).astype(np.uint8) for lb in labels]

    return generate


def _items(n=6):
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, NC, (12, 16), dtype=np.uint8) for _ in range(n)]
    return [f"s{i:03d}.png" for i in range(n)], labels


def test_writer_manifest_and_files(tmp_path):
    names, labels = _items()
    ckpt = tmp_path / "g.pth"
    ckpt.write_bytes(b"weights")
    out = write_synthetic_set(
        tmp_path / "synth",
        names=names,
        labels=labels,
        generate=_fake_generate([]),
        seed=7,
        checkpoint=ckpt,
        records=[{"base": "x.png", "pastes": []}] * len(names),
        class_stats={"before_pixels": {"Sky": 1}},
        batch_size=4,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["num_items"] == 6
    assert manifest["generator_checkpoint"]["sha256"] == sha256_file(ckpt)
    assert [it["name"] for it in manifest["items"]] == names
    assert is_valid_set(out)
    lab = cv2.imread(str(out / "labels" / names[2]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(lab, labels[2])
    img = cv2.imread(str(out / "images" / names[2]))[..., ::-1]
    assert np.array_equal(img[..., 0], labels[2] * 20)
    assert not list(tmp_path.glob(".synth*")), "staging folder left behind"


def test_interrupted_run_keeps_previous_set_and_resumes(tmp_path):
    names, labels = _items()
    out = tmp_path / "synth"
    write_synthetic_set(
        out, names=names, labels=labels, generate=_fake_generate([]), seed=1, checkpoint=None
    )
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    old_manifest = (out / "manifest.json").read_text()

    # new run (other seed) that dies after the first batch
    calls = []

    def dying(batch):
        if calls:
            raise KeyboardInterrupt
        return _fake_generate(calls)(batch)

    new_labels = [lb[::-1].copy() for lb in labels]
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_set(
            out,
            names=names,
            labels=new_labels,
            generate=dying,
            seed=2,
            checkpoint=None,
            batch_size=2,
        )
    # the previous set is untouched and valid; no half-written file anywhere
    assert (out / "manifest.json").read_text() == old_manifest
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before
    assert is_valid_set(out)
    staging = tmp_path / ".synth.partial"
    assert sorted(p.name for p in (staging / "images").iterdir()) == names[:2]
    assert not [p for p in staging.rglob("*") if ".tmp-" in p.name]

    # resuming generates only the 4 missing items
    calls2 = []
    write_synthetic_set(
        out,
        names=names,
        labels=new_labels,
        generate=_fake_generate(calls2),
        seed=2,
        checkpoint=None,
        batch_size=2,
    )
    assert sum(calls2) == 4
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
    lab = cv2.imread(str(out / "labels" / names[0]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(lab, new_labels[0])


def test_interrupted_swap_restores_previous_set(tmp_path):
    names, labels = _items(2)
    out = tmp_path / "synth"
    write_synthetic_set(
        out, names=names, labels=labels, generate=_fake_generate([]), seed=1, checkpoint=None
    )
    # simulate a crash between "OUT -> .old" and ".partial -> OUT"
    out.rename(tmp_path / ".synth.old")
    write_synthetic_set(
        out, names=names, labels=labels, generate=_fake_generate([]), seed=1, checkpoint=None
    )
    assert is_valid_set(out) and not (tmp_path / ".synth.old").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    names, labels = _items(1)
    with pytest.raises(PermissionError, match="is not writable"):
        write_synthetic_set(
            blocker / "synth",
            names=names,
            labels=labels,
            generate=_fake_generate([]),
            seed=0,
            checkpoint=None,
        )


def test_missing_checkpoint_is_named(tmp_path):
    names, labels = _items(1)
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        write_synthetic_set(
            tmp_path / "s",
            names=names,
            labels=labels,
            generate=_fake_generate([]),
            seed=0,
            checkpoint=tmp_path / "nowhere.pth",
        )


# ----------------------------------------------------------------------------- mixed dataset


def test_mixed_dataset_ratio(tmp_path, camvid_dir):
    pytest.importorskip("mmseg", reason="the mixed dataset is an mmseg dataset wrapper")
    import ganaug.mmseg  # noqa: F401  (registers CamVidDataset)
    from ganaug.mmseg.mixed_dataset import MixedRealSyntheticDataset

    names, labels = _items(5)
    synth = write_synthetic_set(
        tmp_path / "synth", names=names, labels=labels, generate=_fake_generate([]), seed=0,
        checkpoint=None,
    )  # fmt: skip
    real = dict(
        type="CamVidDataset",
        data_root=str(camvid_dir),
        data_prefix=dict(img_path="train", seg_map_path="trainannot"),
        indices=30,
        pipeline=[],
    )
    syn = dict(
        type="CamVidDataset",
        data_root=str(synth),
        data_prefix=dict(img_path="images", seg_map_path="labels"),
        pipeline=[],
    )
    ds = MixedRealSyntheticDataset(real=real, synthetic=syn, ratio=0.25, max_ratio=0.4, seed=0)
    assert len(ds) == 30 + 20  # 0.4 / 0.6 * 30 extra slots
    items = [ds[i] for i in range(len(ds))]
    from_synth = [str(synth) in it["img_path"] for it in items]
    assert sum(from_synth) == round(0.25 * len(ds))
    assert sum(from_synth) == sum(ds.is_synthetic(i) for i in range(len(ds)))
    # all 5 synthetic samples are used before any repeats
    assert len({it["img_path"] for it, s in zip(items, from_synth) if s}) == 5
    ds.set_ratio(0.1)
    assert sum(ds.is_synthetic(i) for i in range(len(ds))) == 5
    with pytest.raises(ValueError, match="outside"):
        ds.set_ratio(0.5)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    with pytest.raises(ValueError, match="no images found|synthetic dataset is empty"):
        MixedRealSyntheticDataset(real=real, synthetic={**syn, "data_root": str(empty)})


def test_synthetic_ratio_hook_in_a_runner(tmp_path, camvid_dir):
    """A real Runner: the scheduled ratio sets the synthetic share of the batches drawn."""
    pytest.importorskip("mmseg", reason="the ratio hook is an mmseg hook")
    import torch
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import ganaug.mmseg  # noqa: F401  (registers the dataset, the hook and CamVidDataset)

    class PathRecorder(BaseModel):
        """One parameter, trained for real; records the files of every training batch."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def forward(self, inputs, data_samples=None, mode="tensor"):
            self.seen.append([s.img_path for s in data_samples])
            x = torch.stack([i.float() for i in inputs]).mean() / 255
            return {"loss": (self.w - x) ** 2}

    names, labels = _items(5)
    synth = write_synthetic_set(
        tmp_path / "synth", names=names, labels=labels, generate=_fake_generate([]), seed=0,
        checkpoint=None,
    )  # fmt: skip
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=(16, 12), keep_ratio=False),
        dict(type="PackSegInputs"),
    ]

    def part(root, img, seg, **kw):
        return dict(
            type="CamVidDataset",
            data_root=str(root),
            data_prefix=dict(img_path=img, seg_map_path=seg),
            pipeline=pipeline,
            **kw,
        )

    # 6 real frames + round(0.4 / 0.6 * 6) = 4 slots: one pass = 10 samples = 2 batches.
    model = PathRecorder()
    runner = Runner(
        model=model,
        work_dir=str(tmp_path / "work"),
        default_scope="mmseg",
        train_dataloader=dict(
            batch_size=5,
            num_workers=0,
            sampler=dict(type="InfiniteSampler", shuffle=True, seed=0),
            dataset=dict(
                type="MixedRealSyntheticDataset",
                real=part(camvid_dir, "train", "trainannot", indices=6),
                synthetic=part(synth, "images", "labels"),
                ratio=0.0,
                max_ratio=0.4,
            ),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=8),
        default_hooks=dict(checkpoint=None),
        custom_hooks=[dict(type="SyntheticRatioHook", schedule=[(0, 0.0), (4, 0.4)])],
    )
    runner.train()
    assert len(model.seen) == 8
    per_iter = [sum(str(synth) in p for p in paths) for paths in model.seen]
    assert per_iter[:4] == [0, 0, 0, 0], per_iter
    # From iteration 4 on, each pass (2 iterations) holds exactly round(0.4 * 10) = 4
    # synthetic samples; a ratio applied one batch late would miss those of iteration 4.
    assert per_iter[4] + per_iter[5] == 4, per_iter
    assert per_iter[6] + per_iter[7] == 4, per_iter
    assert runner.train_dataloader.dataset.ratio == 0.4
    assert model.w.item() != 0.0  # the optimizer really stepped
