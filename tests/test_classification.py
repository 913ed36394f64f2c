"""Classification pipeline on a few real magnetic-tile images: loaders and their errors,
oversampler counts and filters, atomic writing, metrics, FID/KID, the timm baselines and
a tiny end-to-end ``cls-compare``."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm", reason="classification needs timm (pip install ganaug[timm])")

from ganaug.classification.data import (  # noqa: E402
    ClassNotFoundError,
    EmptyClassError,
    ImageSet,
    UnreadableImageError,
    load_fashion_mnist_lt,
    load_image_folder,
    long_tail_counts,
    stratified_split,
)
from ganaug.classification.metrics import classification_report, write_per_class_metrics  # noqa: E402
from ganaug.classification.oversample import (  # noqa: E402
    OversampleConfig,
    Oversampler,
    knn_outlier_scores,
    plan_counts,
    read_image_set,
    write_image_set,
)
from ganaug.classification.train import (  # noqa: E402
    METHODS,
    FocalLoss,
    TrainConfig,
    UnknownModelError,
    _epoch_indices,
    build_classifier,
    check_model_name,
    focal_loss,
    predict,
    train_classifier,
)
from ganaug.core.cgan import CGANConfig, CGANTrainer  # noqa: E402

CLASSES = ["MT_Crack", "MT_Fray", "MT_Free"]
PER_CLASS = {"MT_Crack": 4, "MT_Fray": 3, "MT_Free": 8}  # imbalanced on purpose


@pytest.fixture(scope="module")
def tile_folder(magnetic_tile_dir, tmp_path_factory):
    """A class-folder copy (in tmp) of a few real magnetic-tile images, masks left out."""
    root = tmp_path_factory.mktemp("tiles")
    for name, n in PER_CLASS.items():
        (root / name).mkdir()
        for f in sorted((magnetic_tile_dir / name).glob("*.jpg"))[:n]:
            shutil.copy(f, root / name / f.name)
    return root


@pytest.fixture(scope="module")
def tiles(tile_folder):
    return load_image_folder(tile_folder, image_size=16, channels=1)


@pytest.fixture(scope="module")
def tiny_gan(tiles):
    """An (untrained) real conditional generator: enough to exercise the oversampler."""
    cfg = CGANConfig(image_size=16, latent_dim=8, g_width=8, d_width=8, epochs=1, batch_size=8)
    tr = CGANTrainer(num_classes=3, config=cfg, seed=0)
    tr.fit(tiles.as_float(), tiles.labels)
    return tr


def test_image_folder_loads_real_images(tiles):
    assert tiles.images.shape == (15, 1, 16, 16) and tiles.images.dtype == torch.uint8
    assert tiles.class_names == CLASSES
    assert tiles.class_counts() == [4, 3, 8]
    assert tiles.images.float().std() > 5  # real texture, not a constant
    train, test = stratified_split(tiles, test_fraction=0.3, seed=0)
    assert [a + b for a, b in zip(train.class_counts(), test.class_counts())] == [4, 3, 8]
    assert min(test.class_counts()) >= 1 and min(train.class_counts()) >= 1


def test_empty_class_folder(tile_folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tile_folder, root)
    (root / "MT_Empty").mkdir()
    (root / "MT_Empty" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyClassError, match="MT_Empty.*holds no images"):
        load_image_folder(root, image_size=16)


def test_unreadable_image(tile_folder, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tile_folder, root)
    bad = root / "MT_Fray" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        load_image_folder(root, image_size=16)
    with caplog.at_level(logging.WARNING):
        data = load_image_folder(root, image_size=16, skip_unreadable=True)
    assert data.class_counts() == [4, 3, 8]
    assert "broken.jpg" in caplog.text


def test_requested_class_absent(tile_folder, tiles):
    with pytest.raises(ClassNotFoundError, match="MT_Uneven"):
        load_image_folder(tile_folder, image_size=16, classes=["MT_Crack", "MT_Uneven"])
    with pytest.raises(ClassNotFoundError, match="MT_Blowhole.*available"):
        plan_counts(tiles.class_counts(), tiles.class_names, {"MT_Blowhole": 10})
    with pytest.raises(ClassNotFoundError, match="no real training image"):
        plan_counts([5, 0], ["a", "b"], {"b": 3})


def test_unknown_timm_name_lists_close_names():
    assert check_model_name("test_resnet") == "test_resnet"
    with pytest.raises(UnknownModelError, match="close names: .*test_resnet"):
        check_model_name("test_resnnet")
    with pytest.raises(UnknownModelError, match="no model named"):
        train_classifier(
            ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"]),
            config=TrainConfig(model="resnet_does_not_exist"),
        )


def test_weights_from_path(tmp_path):
    src = build_classifier("test_resnet", num_classes=5, in_chans=1)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    # Different head size: the head is skipped, the body is loaded.
    dst = build_classifier("test_resnet", num_classes=3, in_chans=1, pretrained_path=path)
    s, d = src.state_dict(), dst.state_dict()
    same = [k for k in d if k in s and s[k].shape == d[k].shape]
    assert same and all(torch.equal(s[k], d[k]) for k in same)
    assert any(s[k].shape != d[k].shape for k in d)


def test_plan_counts_balanced_and_target():
    assert plan_counts([4, 3, 8], CLASSES, "balanced") == [4, 5, 0]
    assert plan_counts([4, 3, 8], CLASSES, {"MT_Fray": 10}) == [0, 7, 0]


@pytest.mark.parametrize("filt", ["none", "knn", "confidence"])
def test_oversampler_reaches_requested_counts(tiles, tiny_gan, filt):
    clf = build_classifier("test_resnet", num_classes=3, in_chans=1).eval()

    def proba(x):
        with torch.no_grad():
            return F.softmax(clf(x.float() / 127.5 - 1), dim=1)

    cfg = OversampleConfig(target={"MT_Crack": 12, "MT_Fray": 9}, filter=filt, max_rounds=2)
    synth = Oversampler(sample_fn=tiny_gan.sample, config=cfg, classifier=proba, seed=0).generate(
        tiles
    )
    assert synth.class_counts() == [8, 6, 0]
    assert synth.images.shape[1:] == tiles.images.shape[1:] and synth.images.dtype == torch.uint8
    assert all(s.startswith("generated:") for s in synth.sources)


def test_oversampler_mix_uses_real_copies(tiles, tiny_gan):
    cfg = OversampleConfig(target="balanced", mix=0.5)
    synth = Oversampler(sample_fn=tiny_gan.sample, config=cfg, seed=0).generate(tiles)
    assert synth.class_counts() == [4, 5, 0]
    copies = [i for i, s in enumerate(synth.sources) if s.startswith("copy:")]
    # 4 - round(4 * 0.5) and 5 - round(5 * 0.5) (Python rounds 2.5 to 2)
    assert len(copies) == 2 + 3
    # Copies are exact real images of the right class.
    for i in copies:
        src = synth.sources[i][len("copy:") :]
        j = tiles.sources.index(src)
        assert torch.equal(synth.images[i], tiles.images[j])
        assert synth.labels[i] == tiles.labels[j]


def test_knn_outlier_scores_constructed():
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cand = torch.tensor([[0.5, 0.5], [10.0, 10.0]])
    scores, thr = knn_outlier_scores(cand, real, k=1, quantile=1.0)
    assert thr == pytest.approx(1.0)  # nearest other real point is 1 away for all
    assert scores[0] == pytest.approx(0.5**0.5)
    assert scores[1] > thr and scores[0] < thr


def test_write_is_atomic_with_manifest(tiles, tmp_path):
    out = tmp_path / "gen"
    write_image_set(tiles, out, manifest={"seed": 3})
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 3 and man["counts"] == {"MT_Crack": 4, "MT_Fray": 3, "MT_Free": 8}
    assert len(man["files"]) == 15
    back = read_image_set(out)
    assert torch.equal(back.images, tiles.images) and torch.equal(back.labels, tiles.labels)
    with pytest.raises(FileExistsError):
        write_image_set(tiles, out)
    # A failure mid-write (label with no class folder) leaves the old set intact, no temp dir.
    broken = ImageSet(tiles.images[:2], torch.tensor([0, 7]), tiles.class_names)
    with pytest.raises(IndexError):
        write_image_set(broken, out, overwrite=True)
    assert torch.equal(read_image_set(out).images, tiles.images)
    assert sorted(os.listdir(tmp_path)) == ["gen"]
    # A successful overwrite replaces the set completely.
    write_image_set(tiles.subset([0, 1]), out, overwrite=True)
    assert len(read_image_set(out)) == 2 and sorted(os.listdir(tmp_path)) == ["gen"]


def test_metrics_constructed_case(tmp_path):
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    rep = classification_report(targets, preds, class_names=["a", "b", "c"])
    assert rep["per_class_recall"] == {"a": 0.75, "b": 0.5, "c": 0.0}
    assert rep["balanced_accuracy"] == pytest.approx(1.25 / 3)
    # precision a = 3/5; F1: a = 2 * .6 * .75 / 1.35 = 2/3, b = 2 * .5 * .5 / 1 = .5, c = 0
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 3)
    assert rep["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [1, 0, 0]]
    p = write_per_class_metrics(
        tmp_path / "m" / "per_class_metrics.json",
        per_class=rep["per_class_recall"],
        summary={"balanced_accuracy": rep["balanced_accuracy"]},
        run="t",
        class_counts={"a": 4, "b": 2, "c": 1},
    )
    doc = json.loads(p.read_text())
    assert doc["task"] == "classification" and doc["metric"] == "recall"
    assert doc["per_class"]["b"] == 0.5 and doc["class_counts"]["c"] == 1


def test_focal_loss_reference_and_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    # gamma = 0 is cross-entropy.
    assert torch.allclose(focal_loss(logits, t, gamma=0.0), F.cross_entropy(logits, t))
    p = F.softmax(logits, 1)[torch.arange(6), t]
    ref = (-((1 - p) ** 2) * p.log()).mean()
    assert torch.allclose(focal_loss(logits, t, gamma=2.0), ref)
    assert torch.allclose(FocalLoss(gamma=2.0)(logits, t), ref)
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, t, gamma=2.0), (logits,))


def test_random_oversampling_indices_are_balanced():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    idx = _epoch_indices(labels, "random_oversampling", 3000, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx], minlength=3).float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.04)


def test_fid_kid_small_classes():
    from ganaug.classification.quality import fid_kid

    torch.manual_seed(0)
    a = torch.randn(50, 4)
    same = fid_kid(a, a.clone())
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    shifted = fid_kid(a, a + 2.0)
    assert shifted["fid"] == pytest.approx(16.0, rel=1e-4)  # ||mean shift||^2 = 4 * 2^2
    assert shifted["kid"] > same["kid"]
    small = fid_kid(a[:3], a[10:40])  # KID subset shrinks to 3
    assert small["kid_subset_size"] == 3 and small["fid"] is not None
    assert fid_kid(a[:1], a)["fid"] is None


@pytest.fixture(scope="module")
def tiny_split(tiles):
    return stratified_split(tiles, test_fraction=0.3, seed=0)


@pytest.mark.parametrize("method", METHODS)
def test_each_baseline_short_real_run(method, tiny_split, tiny_gan):
    train, test = tiny_split
    synth = None
    if method == "gan":
        synth = Oversampler(sample_fn=tiny_gan.sample, seed=0).generate(train)
    cfg = TrainConfig(model="test_resnet", epochs=1, batch_size=8, lr=1e-2, warmup_epochs=0)
    init = build_classifier("test_resnet", num_classes=3, in_chans=1)
    torch.manual_seed(0)
    model = train_classifier(train, method=method, config=cfg, seed=0, synthetic=synth)
    preds = predict(model, test.images)
    assert preds.shape == (len(test),) and preds.min() >= 0 and preds.max() < 3
    # Training moved the weights away from a fresh init.
    moved = [
        not torch.equal(p, q)
        for p, q in zip(model.state_dict().values(), init.state_dict().values())
        if p.dtype.is_floating_point
    ]
    assert any(moved)


def test_gan_method_needs_synthetic(tiny_split):
    with pytest.raises(ValueError, match="synthetic"):
        train_classifier(tiny_split[0], method="gan")


def test_long_tailed_fashion_mnist():
    from ganaug.classification.data import DatasetError

    assert long_tail_counts(1000, 10, 100) == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    try:
        train, test = load_fashion_mnist_lt(n_max=200, imbalance_factor=100, test_per_class=5)
    except DatasetError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    assert train.class_counts() == long_tail_counts(200, 10, 100)
    assert test.class_counts() == [5] * 10
    assert train.images.shape[1:] == (1, 28, 28)


def test_cls_compare_end_to_end(tile_folder, tmp_path):
    from ganaug.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
run: tiny
dataset: {{name: image_folder, root: {tile_folder}, image_size: 16, test_fraction: 0.3}}
seeds: [0]
classifier: {{model: test_resnet, epochs: 1, batch_size: 8}}
gan: {{latent_dim: 8, g_width: 8, d_width: 8, epochs: 1, batch_size: 8}}
oversample: {{filter: knn}}
"""
    )
    out = tmp_path / "out"
    assert main(["cls-compare", "--config", str(cfg), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == set(METHODS)
    for m in METHODS:
        assert (out / f"confusion_{m}.png").stat().st_size > 1000
        doc = json.loads((out / m / "per_class_metrics.json").read_text())
        assert set(doc["per_class"]) == set(CLASSES) and "balanced_accuracy" in doc["summary"]
    man = json.loads((out / "generated_seed0" / "manifest.json").read_text())
    assert man["counts"] == {"MT_Crack": 3, "MT_Fray": 4, "MT_Free": 0}
    assert "fid_kid" in res["gan"][0]
    assert (out / "results.md").read_text().startswith("| method |")
