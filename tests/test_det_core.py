"""Framework-free detection modules: Perceptual GAN, ASDN, ASTN (ganaug.core.detection)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ganaug.core.detection import (
    ASDN,
    ASTN,
    ASDNMaskLoss,
    PerceptualDiscriminator,
    PerceptualGAN,
    PerceptualGANLoss,
    PerceptualGenerator,
    apply_drop_mask,
    asdn_adversarial_loss,
    asdn_adversarial_rois,
    asdn_drop_mask,
    asdn_mask_loss,
    asdn_stage1_targets,
    grad_reverse,
    pgan_discriminator_loss,
    pgan_generator_loss,
    rotate_features,
    sliding_window_masks,
    small_object_mask,
)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    # Zero-initialised output layers make untrained modules the identity; give them weights.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# -- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5])
def test_shapes(n):
    feats = torch.randn(n, 16, 7, 7)
    gen = PerceptualGenerator(in_channels=16, fine_channels=8)
    assert gen(feats, torch.randn(n, 8, 14, 14)).shape == (n, 16, 7, 7)
    assert PerceptualDiscriminator(in_channels=16)(feats).shape == (n,)
    assert ASDN(in_channels=16)(feats).shape == (n, 7, 7)
    rotated, angles = ASTN(in_channels=16, num_groups=4)(feats)
    assert rotated.shape == (n, 16, 7, 7) and angles.shape == (n, 4)
    assert asdn_drop_mask(torch.randn(n, 7, 7)).shape == (n, 7, 7)
    assert sliding_window_masks(7).shape == (36, 7, 7)  # window 7 // 3 = 2, 6 x 6 places


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, 16, S, S\)"):
        ASDN(in_channels=16)(torch.randn(2, 8, 7, 7))
    with pytest.raises(ValueError, match="fine_features=None"):
        PerceptualGenerator(in_channels=16, fine_channels=8)(torch.randn(2, 16, 7, 7))
    with pytest.raises(ValueError, match="divisible"):
        ASTN(in_channels=10, num_groups=4)
    with pytest.raises(ValueError, match="divisible by G"):
        rotate_features(torch.randn(2, 6, 5, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="bool"):
        PerceptualGAN(in_channels=4).enhance(torch.randn(3, 4, 5, 5), torch.tensor([1, 0, 1]))


def test_untrained_generator_and_astn_are_identity():
    feats = torch.randn(3, 8, 7, 7)
    assert torch.equal(PerceptualGenerator(in_channels=8)(feats), feats)
    rotated, angles = ASTN(in_channels=8, num_groups=2)(feats)
    assert torch.count_nonzero(angles) == 0
    torch.testing.assert_close(rotated, feats, atol=1e-6, rtol=0)


# -- Perceptual GAN ------------------------------------------------------------------------


def test_small_large_routing_by_area():
    boxes = torch.tensor(
        [[0, 0, 31, 31], [0, 0, 32, 32], [10, 10, 43, 43], [5, 5, 5, 50], [0, 0, 16, 16]],
        dtype=torch.float32,
    )
    assert small_object_mask(boxes).tolist() == [True, False, False, True, True]
    # In an input resized by 0.5, a 16 x 16 box is 32 x 32 original pixels: not small.
    assert small_object_mask(boxes, scale=0.5).tolist() == [False, False, False, True, False]
    assert small_object_mask(boxes, area_threshold=2000).tolist() == [True] * 5

    pgan = PerceptualGAN(in_channels=8, small_area=32 * 32)
    _perturb(pgan)
    feats = torch.randn(5, 8, 7, 7)
    small = pgan.small_mask(boxes)
    out = pgan.enhance(feats, small)
    assert torch.equal(out[~small], feats[~small])
    assert not torch.allclose(out[small], feats[small])
    # The generator sees small ROIs only: its output for them does not depend on large ones.
    out2 = pgan.enhance(torch.where(small[:, None, None, None], feats, 0.0), small)
    torch.testing.assert_close(out2[small], out[small])


def test_pgan_enhance_in_place():
    pgan = PerceptualGAN(in_channels=8)
    _perturb(pgan)
    feats = torch.randn(5, 8, 7, 7)
    small = torch.tensor([True, False, True, False, False])
    with torch.no_grad():
        copied = pgan.enhance(feats, small)
        stack = feats.clone()
        out = pgan.enhance(stack, small, inplace=True)
    assert out is stack
    torch.testing.assert_close(out, copied)
    assert torch.equal(copied[~small], feats[~small])  # the copying path left feats alone
    with pytest.raises(ValueError, match="inplace=True"):
        pgan.enhance(feats.clone().requires_grad_(), small, inplace=True)


def test_pgan_fine_features_change_the_output():
    gen = PerceptualGenerator(in_channels=8, fine_channels=4)
    _perturb(gen)
    feats = torch.randn(2, 8, 7, 7)
    a = gen(feats, torch.randn(2, 4, 14, 14))
    b = gen(feats, torch.randn(2, 4, 14, 14))
    assert not torch.allclose(a, b)


def test_pgan_losses_function_and_module_agree_and_handle_empty():
    real, fake = torch.randn(4), torch.randn(3)
    expected_d = F.softplus(-real).mean() + F.softplus(fake).mean()
    torch.testing.assert_close(pgan_discriminator_loss(real, fake), expected_d)
    torch.testing.assert_close(PerceptualGANLoss()(fake, real), expected_d)
    torch.testing.assert_close(pgan_generator_loss(fake), F.softplus(-fake).mean())
    torch.testing.assert_close(PerceptualGANLoss()(fake), pgan_generator_loss(fake))
    empty = torch.zeros(0)
    torch.testing.assert_close(pgan_discriminator_loss(real, empty), F.softplus(-real).mean())
    assert float(pgan_generator_loss(empty)) == 0.0


def test_pgan_gradients_go_where_intended():
    torch.manual_seed(0)
    pgan = PerceptualGAN(in_channels=8)
    _perturb(pgan)
    feats = torch.randn(6, 8, 7, 7, requires_grad=True)
    small = torch.tensor([True, True, True, False, False, False])
    enhanced = pgan.enhance(feats, small)
    g_loss = pgan.generator_loss(enhanced[small])
    d_loss = pgan.discriminator_loss(feats[~small], enhanced[small])
    (g_loss + d_loss).backward()
    # Generator loss trains G (and what feeds it) but leaves D's gradients empty.
    disc_grads = [p.grad for p in pgan.discriminator.parameters()]
    gen_grads = [p.grad for p in pgan.generator.parameters()]
    assert all(g is not None for g in gen_grads)
    assert feats.grad is not None and feats.grad[small].abs().sum() > 0
    assert feats.grad[~small].abs().sum() == 0  # D loss reads detached features
    # D's gradients equal those of d_loss alone, i.e. g_loss added nothing to them.
    pgan.zero_grad()
    pgan.discriminator_loss(feats[~small], enhanced[small].detach()).backward()
    for before, p in zip(disc_grads, pgan.discriminator.parameters()):
        torch.testing.assert_close(before, p.grad)
    assert all(p.requires_grad for p in pgan.discriminator.parameters())


def test_pgan_generator_gradcheck():
    torch.manual_seed(0)
    gen = PerceptualGenerator(in_channels=2, fine_channels=1, hidden_channels=2, num_blocks=1)
    _perturb(gen)
    gen = gen.double()
    feats = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    fine = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gen, (feats, fine))


# -- ASDN ----------------------------------------------------------------------------------


def test_asdn_stage1_picks_the_max_loss_window():
    # Each ROI's evidence for its class sits in one 2 x 2 block; zeroing exactly that block
    # raises the classification loss most, so it must be the stage-1 target.
    s, window = 6, 2
    corners = [(0, 0), (3, 1), (4, 4), (2, 3)]
    feats = torch.zeros(len(corners), 3, s, s)
    for i, (y, x) in enumerate(corners):
        feats[i, :, y : y + 2, x : x + 2] = 1.0
        feats[i, :, 0, s - 1] = 0.1  # weaker evidence elsewhere, to break ties
    labels = torch.ones(len(corners), dtype=torch.long)

    def per_roi_loss(occluded, roi):
        logits = torch.stack([torch.zeros(len(occluded)), occluded.sum(dim=(1, 2, 3))], dim=1)
        return F.cross_entropy(logits, labels[roi], reduction="none")

    targets, best = asdn_stage1_targets(feats, per_roi_loss, window=window, chunk_size=7)
    for i, (y, x) in enumerate(corners):
        expected = torch.zeros(s, s)
        expected[y : y + 2, x : x + 2] = 1.0
        assert torch.equal(targets[i], expected), f"ROI {i}"
    assert best.tolist() == [y * (s - window + 1) + x for y, x in corners]


def test_asdn_stage1_handles_empty_batch():
    targets, best = asdn_stage1_targets(torch.zeros(0, 4, 7, 7), lambda o, r: o.sum((1, 2, 3)))
    assert targets.shape == (0, 7, 7) and best.shape == (0,)


def test_asdn_drop_mask_counts_and_ranks():
    logits = torch.arange(2 * 36, dtype=torch.float32).view(2, 6, 6)
    drop = asdn_drop_mask(logits, drop_fraction=1 / 3, sample=False)
    assert drop.sum(dim=(1, 2)).tolist() == [12.0, 12.0]
    assert torch.equal(drop[0].flatten()[-12:], torch.ones(12))  # the top-12 scores
    # Sampling varies the mask but still favours high scores.
    g = torch.Generator().manual_seed(0)
    scores = torch.linspace(-6, 6, 36).view(1, 6, 6).repeat(200, 1, 1)
    sampled = asdn_drop_mask(scores, sample=True, generator=g)
    assert sampled.sum(dim=(1, 2)).eq(12).all()
    freq = sampled.mean(0).flatten()
    # Cells are drawn with probability proportional to sigmoid(score): saturated top cells
    # share the draws, cells far below zero are almost never dropped.
    assert freq[-6:].mean() > 0.5 and freq[:6].mean() < 0.05
    assert freq[18:].mean() > 2 * freq[:18].mean()
    assert len({tuple(m.flatten().tolist()) for m in sampled}) > 1


def test_asdn_no_gradient_leaks():
    torch.manual_seed(0)
    asdn = ASDN(in_channels=8)
    head = torch.nn.Linear(8 * 7 * 7, 3)
    feats = torch.randn(4, 8, 7, 7, requires_grad=True)
    labels = torch.tensor([1, 2, 0, 1])
    logits = asdn(feats.detach())
    drop = asdn_drop_mask(logits)
    occluded = apply_drop_mask(feats, drop)
    det_loss = F.cross_entropy(head(occluded.flatten(1)), labels, reduction="none")
    det_loss.mean().backward(retain_graph=True)
    # The detector's loss reaches the features and head, never ASDN.
    assert all(p.grad is None for p in asdn.parameters())
    assert feats.grad is not None
    feats.grad = None
    adv = asdn_adversarial_loss(logits, drop, det_loss)
    adv.backward()
    # ASDN's loss reaches ASDN only, never the features it read.
    assert feats.grad is None
    assert all(p.grad is not None for p in asdn.parameters())


def test_asdn_adversarial_loss_reinforces_only_harder_masks():
    logits = torch.zeros(3, 2, 2, requires_grad=True)
    drop = torch.tensor([[[1.0, 0], [0, 0]]] * 3)
    clean = torch.tensor([1.0, 1.0, 1.0])
    occluded = torch.tensor([2.0, 0.5, 1.0])  # only ROI 0 got harder
    asdn_adversarial_loss(logits, drop, occluded, clean).backward()
    assert logits.grad[1:].abs().sum() == 0
    # At zero logits BCE pushes dropped cells up (negative gradient) and the rest down.
    assert logits.grad[0, 0, 0] < 0 and (logits.grad[0].flatten()[1:] > 0).all()
    # Median reference: ROI 0 (above the median) only.
    logits.grad = None
    asdn_adversarial_loss(logits, drop, occluded).backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1:].abs().sum() == 0


def test_asdn_mask_loss_function_and_module_agree():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 7, 7), (torch.rand(3, 7, 7) > 0.5).float()
    ref = F.binary_cross_entropy(torch.sigmoid(logits), targets)
    torch.testing.assert_close(asdn_mask_loss(logits, targets), ref)
    torch.testing.assert_close(ASDNMaskLoss()(logits, targets), ref)
    with pytest.raises(ValueError, match="same shape"):
        asdn_mask_loss(logits, targets[:, :3])


# -- ASTN ----------------------------------------------------------------------------------


def test_astn_rotation_of_a_known_map():
    x = torch.arange(2 * 25, dtype=torch.float32).view(1, 2, 5, 5)
    # Group 0 by +90 degrees (the +x axis turns towards +y), group 1 untouched.
    out = rotate_features(x, torch.tensor([[math.pi / 2, 0.0]]))
    torch.testing.assert_close(out[:, :1], torch.rot90(x[:, :1], k=-1, dims=(2, 3)))
    torch.testing.assert_close(out[:, 1:], x[:, 1:])
    # A single hot cell right of the centre moves below it.
    hot = torch.zeros(1, 1, 7, 7)
    hot[0, 0, 3, 5] = 1.0
    moved = rotate_features(hot, torch.tensor([[math.pi / 2]]))
    assert (moved[0, 0] > 0.99).nonzero().tolist() == [[5, 3]]
    # Seeded regression value for a small, non-right angle (bilinear mixing).
    small = rotate_features(x[:, :1], torch.tensor([[math.radians(10.0)]]))
    assert float(small.sum()) == pytest.approx(277.9116, abs=1e-3)


def test_astn_angles_are_bounded():
    astn = ASTN(in_channels=8, num_groups=2, max_angle=10.0)
    with torch.no_grad():
        astn.angle.weight.fill_(50.0)
        astn.angle.bias.fill_(50.0)
    _, angles = astn(torch.rand(3, 8, 7, 7) + 1.0)
    assert angles.abs().max() <= math.radians(10.0) + 1e-6
    assert angles.abs().min() > math.radians(9.9)


def test_astn_gradient_reversal_makes_it_raise_the_loss():
    torch.manual_seed(0)
    astn = ASTN(in_channels=4, num_groups=2, reverse_scale=1.0)
    _perturb(astn)
    feats = torch.randn(3, 4, 7, 7, requires_grad=True)
    target = torch.randn(3, 4, 7, 7)

    def grads(scale):
        astn.zero_grad()
        astn.reverse_scale = scale
        rotated, _ = astn(feats)
        F.mse_loss(rotated, target).backward()
        return [p.grad.clone() for p in astn.parameters()]

    reversed_, plain = grads(1.0), grads(-1.0)  # -1: plain descent direction
    for r, p in zip(reversed_, plain):
        torch.testing.assert_close(r, -p)
    # A step along the reversed gradient raises the loss.
    with torch.no_grad():
        before = F.mse_loss(astn(feats)[0], target)
        for param, g in zip(astn.parameters(), reversed_):
            param.sub_(1e-2 * g)
        after = F.mse_loss(astn(feats)[0], target)
    assert after > before


def test_rotate_features_gradcheck():
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    angles = (0.2 * torch.randn(2, 2, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(rotate_features, (feats, angles))
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.5))


# -- memory-saving paths compute the same thing -------------------------------------------


@pytest.mark.parametrize("ckpt", [False, True])
def test_asdn_chunked_checkpointed_forward_matches_whole_batch(ckpt):
    torch.manual_seed(0)
    whole = ASDN(in_channels=8, chunk_size=0)
    chunked = ASDN(in_channels=8, chunk_size=3, checkpoint=ckpt)
    chunked.load_state_dict(whole.state_dict())
    feats = torch.randn(7, 8, 7, 7)  # 3 + 3 + 1 ROIs
    with torch.no_grad():
        torch.testing.assert_close(chunked(feats), whole(feats))
    weight = torch.randn(7, 7, 7)
    (whole(feats) * weight).sum().backward()
    (chunked(feats) * weight).sum().backward()
    for a, b in zip(whole.parameters(), chunked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        ASDN(in_channels=8, chunk_size=-1)


@pytest.mark.parametrize("ckpt", [False, True])
def test_astn_chunked_localisation_matches_plain(ckpt):
    torch.manual_seed(0)
    plain = ASTN(in_channels=8, num_groups=2, loc_chunk_size=0)
    _perturb(plain)
    chunked = ASTN(in_channels=8, num_groups=2, loc_chunk_size=2, loc_checkpoint=ckpt)
    chunked.load_state_dict(plain.state_dict())
    feats = torch.randn(5, 8, 7, 7, requires_grad=True)
    out_p, ang_p = plain(feats)
    out_c, ang_c = chunked(feats)
    torch.testing.assert_close(ang_c, ang_p)
    torch.testing.assert_close(out_c, out_p)
    weight = torch.randn_like(out_p)
    grads_p = torch.autograd.grad((out_p * weight).sum(), [feats, *plain.parameters()])
    grads_c = torch.autograd.grad((out_c * weight).sum(), [feats, *chunked.parameters()])
    assert grads_p[-1].abs().sum() > 0  # the reversed gradient reaches the angle layer
    for a, b in zip(grads_p, grads_c):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_asdn_loss_on_selected_rois_equals_full_batch_loss():
    torch.manual_seed(0)
    logits = torch.randn(9, 3, 3, requires_grad=True)
    drop = asdn_drop_mask(logits.detach(), sample=False)
    occluded = torch.rand(9)
    full = asdn_adversarial_loss(logits, drop, occluded)
    (g_full,) = torch.autograd.grad(full, logits)
    rois = asdn_adversarial_rois(occluded)
    assert rois.tolist() == torch.where(occluded > occluded.median())[0].tolist()
    sub = asdn_adversarial_loss(
        logits[rois], drop[rois], occluded[rois], occluded.median().expand(len(rois))
    )
    (g_sub,) = torch.autograd.grad(sub, logits)
    torch.testing.assert_close(sub, full)
    torch.testing.assert_close(g_sub, g_full)
    clean = occluded.clone()
    clean[0] = -1.0  # only ROI 0 got harder than on clean features
    assert asdn_adversarial_rois(occluded, clean).tolist() == [0]
    assert asdn_adversarial_rois(torch.zeros(0)).numel() == 0
    with pytest.raises(ValueError, match=r"occluded_loss \(N,\)"):
        asdn_adversarial_rois(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="must both be"):
        asdn_adversarial_rois(torch.zeros(3), torch.zeros(2))
