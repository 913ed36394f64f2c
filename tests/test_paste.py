"""Paste synthesis core: geometry, blending, selection, real data, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from ganaug.core.paste import (
    ClassSampler,
    CopyPaste,
    Instance,
    InstanceBank,
    Placement,
    ann_to_mask,
    blend,
    instances_from_binary_mask,
    instances_from_boxes,
    instances_from_coco_anns,
    instances_from_label_map,
    jitter_instance,
    mask_to_box,
    paste_instances,
    read_image,
)
from ganaug.core.paste.data import (
    CocoDetection,
    camvid_pairs,
    coco128_paths,
    magnetic_tile_items,
)


def _square_instance(side=10, label=7, value=200):
    img = np.full((side, side, 3), value, np.uint8)
    return Instance(image=img, mask=np.ones((side, side), bool), label=label, source="sq")


def _scene():
    """A 60x80 grey image with two objects: A (20x20 at 10,10), B (10x10 at 50,30)."""
    image = np.full((60, 80, 3), 50, np.uint8)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 30:40, 50:60] = True
    target = {
        "boxes": np.array([[10, 10, 30, 30], [50, 30, 60, 40]], np.float32),
        "labels": np.array([1, 2]),
        "masks": masks,
    }
    return image, target


# -- geometry ---------------------------------------------------------------------------
def test_pasted_mask_and_box_agree_and_occlusion_updates():
    image, target = _scene()
    # Covers the right half of A (200 of 400 px) and all of B.
    insts = [_square_instance(side=20), _square_instance(side=12, label=9)]
    places = [Placement(x=20, y=10), Placement(x=49, y=29)]
    out, tg = paste_instances(image, target, insts, places, occlusion_thresh=0.7)

    assert list(tg["labels"]) == [1, 7, 9]  # B fully covered -> dropped
    assert list(tg["pasted"]) == [False, True, True]
    np.testing.assert_array_equal(tg["boxes"][0], [10, 10, 20, 30])  # A shrunk to its left half
    assert tg["masks"][0].sum() == 200
    for box, m in zip(tg["boxes"], tg["masks"]):
        np.testing.assert_array_equal(box, mask_to_box(m))
    assert (out[tg["masks"][1]] == 200).all()
    assert (out[~tg["masks"].any(0)] == 50).all()
    assert tg is not target and target["masks"].sum() == 500  # input untouched


def test_occlusion_threshold_drops_mostly_covered_object():
    image, target = _scene()
    # Covers 300 of A's 400 px: kept at thresh 0.8, dropped at 0.7.
    places = [Placement(x=15, y=10)]
    inst = Instance(image=np.zeros((20, 15, 3), np.uint8), mask=np.ones((20, 15), bool), label=3)
    _, kept = paste_instances(image, target, [inst], places, occlusion_thresh=0.8)
    _, dropped = paste_instances(image, target, [inst], places, occlusion_thresh=0.7)
    assert 1 in kept["labels"].tolist()
    assert 1 not in dropped["labels"].tolist()


def test_box_only_targets_are_updated():
    image, target = _scene()
    del target["masks"]
    _, tg = paste_instances(image, target, [_square_instance(side=12)], [Placement(x=49, y=29)])
    assert "masks" not in tg
    assert list(tg["labels"]) == [1, 7]
    np.testing.assert_array_equal(tg["boxes"][1], [49, 29, 61, 41])


def test_jitter_flip_rotate_scale():
    img = np.zeros((10, 20, 3), np.uint8)
    mask = np.zeros((10, 20), bool)
    mask[:, :5] = True
    inst = Instance(image=img, mask=mask, label=1)
    flipped = jitter_instance(inst, flip=True)
    assert flipped.mask[:, 15:].all() and not flipped.mask[:, :15].any()
    rot = jitter_instance(inst, angle=90)
    assert rot.size == (20, 10)
    assert abs(rot.area - inst.area) <= 10
    big = jitter_instance(inst, scale=2.0)
    assert big.size == (20, 40) and big.area == 4 * inst.area


def _reference_bookkeeping(masks, subs):
    """Brute force over full-image masks: each paste clears its pixels from all earlier."""
    out = [m.copy() for m in masks]
    for sub in subs:
        out = [m & ~sub for m in out] + [sub.copy()]
    return out


def test_local_bookkeeping_matches_full_image_reference():
    # Random blobs and pastes (some cut by the border, some overlapping): the box-local
    # updates must equal a full-image recomputation, mask by mask and box by box.
    rng = np.random.default_rng(5)
    h, w = 70, 90
    masks = np.zeros((5, h, w), bool)
    for k in range(5):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        masks[k, y : y + rng.integers(4, 25), x : x + rng.integers(4, 25)] = True
        masks[k, y, x + 3 :] = True  # a thin tail: the box is wider than the bulk
    target = {
        "boxes": np.stack([mask_to_box(m) for m in masks]),
        "labels": np.arange(1, 6),
        "masks": masks,
    }
    insts, places = [], []
    for side, (x, y) in zip((18, 25, 12, 30), ((20, 15), (-8, 40), (60, 50), (35, 5))):
        m = np.zeros((side, side), bool)
        m[2:, : side - 3] = True
        insts.append(Instance(image=np.full((side, side, 3), 99, np.uint8), mask=m, label=9))
        places.append(Placement(x=x, y=y))
    _, tg = paste_instances(
        np.zeros((h, w, 3), np.uint8), target, insts, places, occlusion_thresh=1.0,
        min_visible_pixels=1, blend_mode="alpha",
    )  # fmt: skip
    subs = []  # each paste's full-image footprint, built independently of the code
    for inst, pl in zip(insts, places):
        big = np.zeros((h + 200, w + 200), bool)
        ih, iw = inst.mask.shape
        big[100 + pl.y : 100 + pl.y + ih, 100 + pl.x : 100 + pl.x + iw] = inst.mask
        subs.append(big[100 : 100 + h, 100 : 100 + w])
    ref = _reference_bookkeeping(list(masks), subs)
    assert len(tg["masks"]) == len(ref) and tg["pasted"].sum() == 4
    for k, (m, r) in enumerate(zip(tg["masks"], ref)):
        np.testing.assert_array_equal(m, r)
        if tg["pasted"][k] or tg["changed"][k]:
            np.testing.assert_array_equal(tg["boxes"][k], mask_to_box(m))
        else:
            np.testing.assert_array_equal(tg["boxes"][k], target["boxes"][k])
    assert tg["changed"].any() and target["masks"].sum() == masks.sum()


def test_flip_is_folded_into_the_rotation_warp():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (17, 23, 3), dtype=np.uint8)
    mask = np.zeros((17, 23), bool)
    mask[3:15, 2:12] = True
    inst = Instance(image=img, mask=mask, label=1)
    both = jitter_instance(inst, flip=True, angle=17.0, scale=1.3)
    steps = jitter_instance(jitter_instance(inst, flip=True), angle=17.0, scale=1.3)
    assert both.size == steps.size
    np.testing.assert_array_equal(both.mask, steps.mask)
    assert np.abs(both.image.astype(int) - steps.image.astype(int)).max() <= 1


def test_rgba_cache_follows_a_swapped_image():
    inst = _square_instance(side=4, value=10)
    assert inst.rgba()[0, 0].tolist() == [10, 10, 10, 255]
    inst.image = np.full((4, 4, 3), 77, np.uint8)  # as the mmseg adapter does (RGB -> BGR)
    assert inst.rgba()[0, 0].tolist() == [77, 77, 77, 255]


def test_label_map_follows_pastes():
    image, target = _scene()
    target["label_map"] = np.zeros((60, 80), np.int64)
    _, tg = paste_instances(image, target, [_square_instance(side=10, label=5)], [Placement(5, 5)])
    assert (tg["label_map"] == 5).sum() == 100
    assert (tg["label_map"][5:15, 5:15] == 5).all()


# -- blending -----------------------------------------------------------------------------
@pytest.fixture
def blend_inputs():
    rng = np.random.default_rng(0)
    bg = np.full((40, 40, 3), 30, np.uint8)
    fg = rng.integers(150, 250, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    return bg, fg, mask


def test_blend_alpha_exact(blend_inputs):
    bg, fg, mask = blend_inputs
    out = blend(bg, fg, mask, mode="alpha")
    np.testing.assert_array_equal(out[mask], fg[mask])
    np.testing.assert_array_equal(out[~mask], bg[~mask])


def test_blend_gaussian_feathers_inwards(blend_inputs):
    bg, fg, mask = blend_inputs
    out = blend(bg, fg, mask, mode="gaussian", sigma=1.5)
    np.testing.assert_array_equal(out[~mask], bg[~mask])
    np.testing.assert_allclose(out[18:22, 18:22], fg[18:22, 18:22], atol=1)  # deep inside
    edge = out[10, 12:28].astype(float).mean()
    assert bg[0, 0, 0] + 5 < edge < fg[10, 12:28].mean() - 5  # edge is a mix


def test_blend_poisson_changes_only_inside(blend_inputs):
    bg, fg, mask = blend_inputs
    out = blend(bg, fg, mask, mode="poisson")
    np.testing.assert_array_equal(out[~mask], bg[~mask])
    # Gradient-domain: the flat background's level pulls the inside far below the source.
    assert out[mask].mean() < fg[mask].mean() - 40
    # ...but keeps the source's texture (correlated with it inside the mask).
    r = np.corrcoef(out[15:25, 15:25, 0].ravel(), fg[15:25, 15:25, 0].ravel())[0, 1]
    assert r > 0.5


def test_blend_poisson_at_border(blend_inputs):
    bg, fg, _ = blend_inputs
    mask = np.zeros((40, 40), bool)
    mask[0:10, 0:10] = True
    out = blend(bg, fg, mask, mode="poisson")
    np.testing.assert_array_equal(out[~mask], bg[~mask])
    assert np.corrcoef(out[2:8, 2:8, 0].ravel(), fg[2:8, 2:8, 0].ravel())[0, 1] > 0.5
    # A one-pixel strip on the border leaves seamlessClone nothing: gaussian fallback.
    strip = np.zeros((40, 40), bool)
    strip[:, 0] = True
    out = blend(bg, fg, strip, mode="poisson")
    np.testing.assert_array_equal(out[~strip], bg[~strip])


@pytest.mark.parametrize("mode", ["alpha", "gaussian", "poisson"])
def test_greyscale_background(mode):
    image, target = _scene()
    grey = image[:, :, 0]
    tex = np.random.default_rng(0).integers(100, 250, (12, 12, 3), dtype=np.uint8)
    inst = Instance(image=tex, mask=np.ones((12, 12), bool), label=7)
    out, tg = paste_instances(grey, target, [inst], [Placement(x=60, y=5)], blend_mode=mode)
    assert out.shape == grey.shape and out.dtype == np.uint8
    assert (tg["labels"] == 7).sum() == 1
    assert out[8:14, 63:69].std() > 10  # the texture arrived (Poisson keeps gradients)


def test_blend_rejects_bad_mode(blend_inputs):
    bg, fg, mask = blend_inputs
    with pytest.raises(ValueError, match="mode must be one of"):
        blend(bg, fg, mask, mode="cubic")


# -- determinism ---------------------------------------------------------------------------
def _toy_bank():
    rng = np.random.default_rng(1)
    insts = []
    for label, side in [(1, 6), (2, 9), (3, 14)]:
        for _ in range(3):
            img = rng.integers(0, 255, (side, side + 2, 3), dtype=np.uint8)
            insts.append(Instance(image=img, mask=np.ones((side, side + 2), bool), label=label))
    return InstanceBank(insts)


def test_seeded_determinism_and_regression():
    image, target = _scene()
    cp = CopyPaste(bank=_toy_bank(), count=(2, 4), blend_mode="gaussian")
    a_img, a_tg = cp(image, target, rng=np.random.default_rng(123))
    b_img, b_tg = cp(image, target, rng=np.random.default_rng(123))
    c_img, _ = cp(image, target, rng=np.random.default_rng(124))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_tg["boxes"], b_tg["boxes"])
    assert not np.array_equal(a_img, c_img)
    # Seeded regression values (numpy PCG64 stream + OpenCV resize/rotate).
    assert a_tg["labels"].tolist() == [1, 2, 1, 1, 1]
    assert a_img.astype(float).mean() == pytest.approx(51.60, abs=0.3)


# -- selection -----------------------------------------------------------------------------
def test_inverse_frequency_weights():
    s = ClassSampler.inverse_frequency({1: 99, 2: 9, 3: 0}, smoothing=1.0)
    expected = np.array([1 / 100, 1 / 10, 1 / 1])
    np.testing.assert_allclose(s.probs, expected / expected.sum())
    sq = ClassSampler.inverse_frequency({1: 99, 2: 9}, smoothing=1.0, power=0.5)
    np.testing.assert_allclose(sq.probs, np.array([0.1, 1 / 10**0.5]) / (0.1 + 1 / 10**0.5))


def test_selection_frequencies_follow_distribution():
    s = ClassSampler.inverse_frequency({1: 254, 2: 40, 3: 6, 4: 1}, smoothing=2.0)
    draws = s.sample(np.random.default_rng(0), 20000)
    observed = np.array([draws.count(c) for c in s.classes])
    chi2 = stats.chisquare(observed, s.probs * len(draws))
    assert chi2.pvalue > 0.01
    # A wrong distribution (uniform) is rejected by the same test on the same draws.
    assert stats.chisquare(observed, np.full(4, len(draws) / 4)).pvalue < 1e-6


def test_target_distribution_and_metric_gaps():
    t = ClassSampler.target_distribution({1: 80, 2: 20}, {1: 0.5, 2: 0.5})
    assert t.as_dict() == {1: 0.0, 2: 1.0}
    g = ClassSampler.metric_gaps({1: 0.6, 2: 0.3, 3: 0.0}, eps=0.0, power=1.0)
    np.testing.assert_allclose(g.probs, [0.0, 1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="not all zero"):
        ClassSampler(weights={1: 0.0})


def test_rare_classes_pasted_small():
    s = ClassSampler.inverse_frequency(
        {1: 100, 2: 1}, rare_classes=[2], rare_small_prob=1.0, small_size=(8, 12)
    )
    inst = [
        Instance(image=np.zeros((40, 40, 3), np.uint8), mask=np.ones((40, 40), bool), label=c)
        for c in (1, 2)
    ]
    cp = CopyPaste(bank=InstanceBank(inst), sampler=s, count=(5, 5), max_rotation=0)
    image = np.zeros((100, 100, 3), np.uint8)
    _, tg = cp(image, {"labels": np.zeros(0)}, rng=np.random.default_rng(0))
    sides = (tg["boxes"][:, 2:] - tg["boxes"][:, :2]).max(1)
    assert (tg["labels"] == 2).any()
    assert (sides[tg["labels"] == 2] <= 12).all()


# -- bad input -----------------------------------------------------------------------------
def test_empty_mask_and_outside_polygon(caplog):
    image = np.zeros((50, 50, 3), np.uint8)
    anns = [
        {"id": 1, "category_id": 3, "segmentation": [[], [1, 1, 2, 2]], "bbox": [0, 0, 1, 1]},
        # Partly outside the image: clipped, not an error.
        {"id": 2, "category_id": 4, "segmentation": [[40, 40, 70, 40, 70, 70, 40, 70]]},
    ]
    with caplog.at_level(logging.DEBUG, logger="ganaug.core.paste.instances"):
        insts = instances_from_coco_anns(image, anns, min_area=1, source="x.jpg")
    assert [i.label for i in insts] == [4]
    assert insts[0].size == (10, 10)
    assert "empty mask" in caplog.text
    assert ann_to_mask([[40, 40, 70, 40, 70, 70, 40, 70]], 50, 50).sum() == 100
    with pytest.raises(ValueError, match="x.jpg#ann3"):
        instances_from_coco_anns(
            image, [{"id": 3, "category_id": 1, "segmentation": 5}], source="x.jpg"
        )


def test_foreground_larger_than_background():
    image = np.zeros((30, 20, 3), np.uint8)
    out, tg = paste_instances(
        image, {"labels": []}, [_square_instance(side=50)], [Placement(x=0, y=0)]
    )
    w, h = tg["boxes"][0, 2:] - tg["boxes"][0, :2]
    assert w <= 20 and h <= 30 and (out > 0).any()


def test_bad_types_raise_clear_errors():
    with pytest.raises(ValueError, match="expected dtype uint8"):
        paste_instances(np.zeros((5, 5), np.float32), {"labels": []}, [], [])
    with pytest.raises(ValueError, match="2 labels but 1"):
        paste_instances(
            np.zeros((5, 5), np.uint8),
            {"labels": [1, 2], "masks": np.zeros((1, 5, 5), bool)},
            [],
            [],
        )
    with pytest.raises(ValueError, match="does not match"):
        Instance(image=np.zeros((4, 4, 3), np.uint8), mask=np.ones((3, 4), bool), label=1)
    with pytest.raises(ValueError, match="empty"):
        CopyPaste(bank=InstanceBank())
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image("nope.jpg")


def test_box_crops():
    image = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    insts = instances_from_boxes(image, [[-5, 2, 10, 12], [30, 30, 30, 31]], [1, 2], min_area=1)
    assert len(insts) == 1 and insts[0].size == (10, 10) and insts[0].mask.all()


# -- real data -----------------------------------------------------------------------------
def test_coco128_pipeline(coco128_dir):
    ann, img_dir = coco128_paths(coco128_dir)
    ds = CocoDetection(ann, img_dir)
    ids = ds.ids[:12]
    bank = InstanceBank.from_coco(ann, img_dir, image_ids=ids, cat_to_label=ds.cat_to_label)
    assert len(bank) > 10 and set(bank.classes) <= set(ds.cat_to_label.values())
    sampler = ClassSampler.inverse_frequency(ds.class_counts(), smoothing=1.0)
    cp = CopyPaste(bank=bank, sampler=sampler, count=(2, 3))
    rng = np.random.default_rng(0)
    empty_seen = grey_seen = False
    for i in range(len(ds)):
        info = ds.coco.loadImgs(ds.ids[i])[0]
        raw = read_image(img_dir / info["file_name"])
        is_grey = np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(
            raw[..., 1], raw[..., 2]
        )
        if not (i < 3 or len(ds.coco.getAnnIds(imgIds=ds.ids[i])) == 0 or is_grey):
            continue
        image, target = ds[i]
        empty_seen |= len(target["labels"]) == 0
        grey_seen |= is_grey
        out, tg = cp(image, target, rng=rng)
        assert out.shape == image.shape
        assert len(tg["labels"]) == len(tg["boxes"]) == len(tg["masks"])
        assert tg["pasted"].sum() >= 1
        for box, m in zip(tg["boxes"][tg["pasted"]], tg["masks"][tg["pasted"]]):
            np.testing.assert_array_equal(box, mask_to_box(m))
    assert empty_seen and grey_seen


def test_camvid_label_map_paste(camvid_dir):
    pairs = camvid_pairs(camvid_dir, "train")[:6]
    rare = [9, 10]  # Pedestrian, Bicyclist
    bank = InstanceBank.from_label_maps(pairs, classes=rare, min_area=20)
    assert set(bank.classes) <= set(rare) and len(bank) > 0
    counts = bank.class_counts()
    assert counts[3] > counts[9]  # Road pixels >> Pedestrian pixels
    image = read_image(pairs[0][0])
    import cv2

    lab = cv2.imread(str(pairs[0][1]), cv2.IMREAD_UNCHANGED)
    cp = CopyPaste(bank=bank, count=(3, 3), blend_mode="gaussian")
    out, tg = cp(image, {"labels": [], "label_map": lab}, rng=np.random.default_rng(0))
    added = (tg["label_map"] != lab) & np.isin(tg["label_map"], rare)
    assert added.sum() > 0
    assert (out[added] != image[added]).any()


def test_magnetic_tile_defects(magnetic_tile_dir):
    items = [it for it in magnetic_tile_items(magnetic_tile_dir) if "Blowhole" in str(it[0])][:4]
    bank = InstanceBank.from_binary_masks(items)
    assert len(bank) >= 1 and bank.classes == [1]
    inst = bank[1][0]
    assert inst.image.shape[2] == 1  # greyscale kept
    free = sorted((magnetic_tile_dir / "MT_Free").glob("*.jpg"))[0]
    bg = read_image(free, grey=True)
    cp = CopyPaste(bank=bank, count=(2, 2), blend_mode="poisson", scale=(1.0, 1.0))
    out, tg = cp(bg, {"labels": []}, rng=np.random.default_rng(0))
    assert out.shape == bg.shape and len(tg["labels"]) >= 1


def test_label_map_components():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:5, 2:5] = 1
    lab[10:15, 10:15] = 1
    lab[0:2, 18:20] = 255
    insts = instances_from_label_map(np.zeros((20, 20, 3), np.uint8), lab, min_area=1)
    assert sorted(i.area for i in insts) == [9, 25, 362]  # class 0 is a class too
    mask = np.zeros((20, 20), np.uint8)
    mask[5:8, 5:8] = 127  # below the threshold: not a defect
    mask[12:16, 12:16] = 200
    found = instances_from_binary_mask(np.zeros((20, 20), np.uint8), mask, label=4)
    assert [(i.label, i.area) for i in found] == [(4, 16)]


# -- learned task-aware compositing ------------------------------------------------------
torch = pytest.importorskip("torch")

from ganaug.core.paste.learned import (  # noqa: E402
    DiscriminatorLoss,
    PlacementSynthesizer,
    RealismDiscriminator,
    TaskAwarePaste,
    affine_from_params,
    discriminator_loss,
    grad_reverse,
    instances_to_rgba,
    warp_foreground,
)


def test_grad_reverse_flips_only_its_branch():
    # Not a gradcheck: the reversal is deliberately not the true derivative.
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = grad_reverse(x, 0.7) * x.sin()
    assert torch.equal(y, x * x.sin())  # identity forward
    y.sum().backward()
    expected = -0.7 * x.sin() + x * x.cos()  # d/dx through the reversed branch is -0.7
    assert torch.allclose(x.grad, expected.detach())


def test_affine_placement_geometry():
    fg = torch.zeros(1, 4, 20, 20)
    fg[:, 3, :, :10] = 1  # left half opaque

    def box(scale, angle, shift):
        th = affine_from_params(
            torch.tensor([scale]), torch.tensor([angle]), torch.tensor([shift]), out_hw=(40, 80)
        )
        a = warp_foreground(fg, th, (40, 80))[0, 3] > 0.5
        ys, xs = torch.nonzero(a, as_tuple=True)
        return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]

    # Side 0.5 * min(40, 80) = 20 px centred at (40, 20); the left half covers x 30..40.
    assert box(0.5, 0.0, [0.0, 0.0]) == [30, 10, 40, 30]
    assert box(0.5, 0.0, [0.5, 0.0]) == [50, 10, 60, 30]  # centre x = 40 + 0.5 * 40
    assert box(0.5, np.pi / 2, [0.0, 0.0]) == [30, 10, 50, 20]  # left edge turned up


def test_warp_gradcheck():
    fg = torch.rand(1, 4, 6, 6, dtype=torch.float64)

    def f(scale, angle, shift):
        th = affine_from_params(scale, angle, shift, out_hw=(7, 9))
        return warp_foreground(fg, th, (7, 9))

    args = (
        torch.tensor([0.6], dtype=torch.float64, requires_grad=True),
        torch.tensor([0.2], dtype=torch.float64, requires_grad=True),
        torch.tensor([[0.1, -0.2]], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, args, atol=1e-5)


def test_losses_function_and_module_agree():
    real, fake = torch.randn(5), torch.randn(7)
    assert torch.allclose(DiscriminatorLoss()(real, fake), discriminator_loss(real, fake))
    # Reference value: softplus(-0) + softplus(0) = 2 log 2.
    assert float(discriminator_loss(torch.zeros(2), torch.zeros(2))) == pytest.approx(2 * np.log(2))


class _SegTarget(torch.nn.Module):
    """A real (tiny) segmentation network as target: per-pixel CE against label maps."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images, targets):
        logits = self.net(torch.stack(images))
        labels = torch.stack([t["label_map"] for t in targets])
        return {"loss_ce": torch.nn.functional.cross_entropy(logits, labels)}


def _learned_setup(seed=0):
    torch.manual_seed(seed)
    synth = PlacementSynthesizer(in_size=16, width=4, noise_dim=0)
    disc = RealismDiscriminator(in_size=16, width=4)
    tap = TaskAwarePaste(synthesizer=synth, discriminator=disc, min_pixels=4)
    images = [torch.rand(3, 24, 32) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]),
            "labels": torch.tensor([1]),
            "label_map": torch.zeros(24, 32, dtype=torch.int64),
        }
        for _ in range(2)
    ]
    insts = [_square_instance(side=8, label=3), _square_instance(side=6, label=2)]
    return tap, images, targets, instances_to_rgba(insts, size=16), [3, 2]


def test_compose_targets_follow_hard_mask():
    tap, images, targets, fg, labels = _learned_setup()
    comps, new_t, aux = tap.compose(images, targets, fg, labels)
    for c, t, a in zip(comps, new_t, aux["alpha"]):
        hard = a > 0.5
        ys, xs = torch.nonzero(hard, as_tuple=True)
        expect = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert torch.equal(t["boxes"][-1], expect)
        assert int(t["labels"][-1]) in (2, 3)
        assert torch.equal(t["label_map"] > 0, hard)
        assert c.shape == (3, 24, 32) and c.requires_grad


def test_online_step_reverses_target_gradient():
    tap, images, targets, fg, labels = _learned_setup()
    target = _SegTarget()
    tap.adv_weight = 0.0
    for group in tap.opt_g.param_groups:
        group["lr"] = 0.0  # keep the weights: compare gradients only
    opt = torch.optim.SGD(target.parameters(), lr=0.0)
    out = tap.online_step(
        target_fn=target, target_optimizer=opt, images=images, targets=targets,
        foregrounds=fg, labels=labels,
    )  # fmt: skip
    assert set(out) >= {"loss_ce", "loss_paste_adv", "loss_paste_disc"}
    got = [p.grad.clone() for p in tap.synthesizer.parameters()]
    comps, new_t, _ = tap.compose(images, targets, fg, labels)
    task = target(comps, new_t)["loss_ce"]
    direct = torch.autograd.grad(task, list(tap.synthesizer.parameters()))
    for g, d in zip(got, direct):
        assert torch.allclose(g, -d, atol=1e-6)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in target.parameters())


def test_offline_step_leaves_target_alone_and_checkpoint_roundtrip(tmp_path):
    tap, images, targets, fg, labels = _learned_setup()
    target = _SegTarget()
    before = [p.detach().clone() for p in tap.synthesizer.parameters()]
    tap.offline_step(
        target_fn=target, images=images, targets=targets, foregrounds=fg, labels=labels
    )
    assert all(p.grad is None for p in target.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, tap.synthesizer.parameters())]
    assert any(changed)
    tap.save(tmp_path / "tap.pth")
    other, *_ = _learned_setup(seed=1)
    other.load(tmp_path / "tap.pth")
    for a, b in zip(tap.synthesizer.parameters(), other.synthesizer.parameters()):
        assert torch.equal(a, b)
    assert other.opt_g.state_dict()["state"].keys() == tap.opt_g.state_dict()["state"].keys()
    assert other.steps == 1
    with pytest.raises(ValueError, match="Cannot load"):
        other.load(tmp_path / "missing.pth")


def test_compose_rejects_mismatched_batch():
    tap, images, targets, fg, labels = _learned_setup()
    with pytest.raises(ValueError, match="same number"):
        tap.compose(images[:1], targets, fg, labels)


@pytest.mark.parametrize("blend_mode", ["alpha", "gaussian"])
def test_in_place_paste_equals_copying_paste(coco128_dir, blend_mode):
    """``in_place`` + ``mask_reserve`` reuse the decoded arrays and give identical output."""
    ann, img_dir = coco128_paths(coco128_dir)
    plain = CocoDetection(ann, img_dir)
    spare = CocoDetection(ann, img_dir, mask_reserve=3)
    ids = plain.ids[:8]
    bank = InstanceBank.from_coco(ann, img_dir, image_ids=ids, cat_to_label=plain.cat_to_label)
    cp = CopyPaste(bank=bank, count=(1, 3), blend_mode=blend_mode, occlusion_thresh=0.5)
    reused = 0
    for i in range(6):
        image, target = plain[i]
        keep = (image.copy(), target["masks"].copy())
        out_copy, tg_copy = cp(image, target, rng=np.random.default_rng(i))
        np.testing.assert_array_equal(image, keep[0])  # copying mode leaves the input alone
        np.testing.assert_array_equal(target["masks"], keep[1])

        image2, target2 = spare[i]
        assert target2["masks"].shape == target["masks"].shape
        cp.in_place = True
        try:
            out_in, tg_in = cp(image2, target2, rng=np.random.default_rng(i))
        finally:
            cp.in_place = False
        np.testing.assert_array_equal(out_in, out_copy)
        assert set(tg_in) == set(tg_copy)
        for key in tg_copy:
            np.testing.assert_array_equal(np.asarray(tg_in[key]), np.asarray(tg_copy[key]))
        if tg_in["pasted"].any():
            assert out_in is image2 or np.shares_memory(out_in, image2)
            reused += np.shares_memory(tg_in["masks"], target2["masks"])
    assert reused >= 1  # the pasted masks went into the reserved rows at least once
