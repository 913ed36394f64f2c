"""Framework-free discriminator and losses of the adversarial segmentor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ganaug.core.adversarial import (
    AdversarialLoss,
    LabelMapDiscriminator,
    adversarial_loss,
    median_frequency_weights,
    one_hot_label_map,
    set_requires_grad,
)


@pytest.mark.parametrize("hw", [(120, 160), (64, 64), (37, 53)])
@pytest.mark.parametrize("downsample", [1, 2])
def test_discriminator_patch_output_shape(hw, downsample):
    d = LabelMapDiscriminator(num_classes=5, num_layers=3, downsample=downsample)
    out = d(torch.randn(2, 3, *hw), torch.rand(2, 5, *hw))
    h, w = hw
    for _ in range(int(math.log2(downsample))):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    for _ in range(3):
        h, w = h // 2, w // 2
    assert out.shape == (2, 1, h, w)


def test_discriminator_rejects_wrong_inputs():
    d = LabelMapDiscriminator(num_classes=4)
    with pytest.raises(ValueError, match="probability channels"):
        d(torch.randn(1, 3, 32, 32), torch.rand(1, 5, 32, 32))
    with pytest.raises(ValueError, match="spatial size"):
        d(torch.randn(1, 3, 32, 32), torch.rand(1, 4, 16, 32))
    with pytest.raises(ValueError, match="num_classes"):
        LabelMapDiscriminator(num_classes=0)


def test_discriminator_gradcheck_float64():
    torch.manual_seed(0)
    d = LabelMapDiscriminator(num_classes=2, base_channels=4, num_layers=1, norm="none").double()
    img = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    prob = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    # LeakyReLU is piecewise linear: gradcheck holds away from its kink, which random
    # inputs avoid with probability one.
    assert torch.autograd.gradcheck(lambda p: d(img, p), (prob,), eps=1e-6, atol=1e-5)


def test_one_hot_ignore_and_range():
    label = torch.tensor([[[0, 2], [255, 1]]])
    oh = one_hot_label_map(label, 3, ignore_index=255)
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 1, 0].sum() == 0  # ignored pixel is all zero
    assert oh[0, 2, 0, 1] == 1 and oh[0, 0, 0, 0] == 1 and oh[0, 1, 1, 1] == 1
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        one_hot_label_map(torch.tensor([[[0, 7]]]), 3, ignore_index=255)


@pytest.mark.parametrize(
    "loss_type,pred,real,for_disc,expected",
    [
        ("vanilla", 0.0, True, True, math.log(2)),
        ("vanilla", 2.0, False, True, 2.0 + math.log1p(math.exp(-2.0))),
        ("vanilla", -1.0, True, False, math.log1p(math.exp(1.0))),
        ("lsgan", 0.5, True, True, 0.25),
        ("lsgan", 0.25, False, True, 0.0625),
        ("hinge", 0.5, True, True, 0.5),
        ("hinge", 0.5, False, True, 1.5),
        ("hinge", 0.5, True, False, -0.5),
    ],
)
def test_adversarial_loss_hand_computed(loss_type, pred, real, for_disc, expected):
    p = torch.full((2, 1, 3, 3), pred)
    got = adversarial_loss(p, real, loss_type, for_disc=for_disc)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    module = AdversarialLoss(loss_type=loss_type, loss_weight=0.5)
    assert module(p, real, for_disc=for_disc).item() == pytest.approx(0.5 * expected, rel=1e-6)


@pytest.mark.parametrize("loss_type", ["vanilla", "lsgan", "hinge"])
def test_function_and_module_agree_on_random_scores(loss_type):
    torch.manual_seed(1)
    p = torch.randn(4, 1, 5, 7)
    for real, for_disc in [(True, True), (False, True), (True, False)]:
        a = adversarial_loss(p, real, loss_type, for_disc=for_disc)
        b = AdversarialLoss(loss_type=loss_type)(p, real, for_disc=for_disc)
        torch.testing.assert_close(a, b)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        adversarial_loss(torch.zeros(1), True, "wasserstein", for_disc=True)
    with pytest.raises(ValueError, match="loss_type"):
        AdversarialLoss(loss_type="nope")


def test_median_frequency_weights():
    w = median_frequency_weights([1, 2, 3, 0])
    np.testing.assert_allclose(w, [2.0, 1.0, 2.0 / 3.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(median_frequency_weights([1, 2, 3, 0], max_weight=1.5)[0], 1.5)
    with pytest.raises(ValueError, match="all class counts are zero"):
        median_frequency_weights([0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        median_frequency_weights([1, -1])


def test_generator_loss_reaches_prob_map_but_not_frozen_discriminator():
    torch.manual_seed(0)
    d = LabelMapDiscriminator(num_classes=3, base_channels=8)
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    set_requires_grad(d, False)
    loss = adversarial_loss(d(torch.randn(2, 3, 32, 32), logits.softmax(1)), True, for_disc=False)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())


def test_weighted_cross_entropy_matches_hand_computation():
    from ganaug.core.adversarial import weighted_cross_entropy

    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    w = torch.tensor([1.0, 3.0])
    ce0 = math.log1p(math.exp(-2.0))  # pixel 0, class 0
    ce1 = math.log1p(math.exp(-1.0))  # pixel 1, class 1
    expected = (1.0 * ce0 + 3.0 * ce1) / (1.0 + 3.0)
    got = weighted_cross_entropy(logits, target, w, ignore_index=255)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    all_ignored = weighted_cross_entropy(logits, torch.full_like(target, 255), w)
    assert all_ignored.item() == 0.0
    with pytest.raises(ValueError, match="class_weight has 3 entries"):
        weighted_cross_entropy(logits, target, torch.ones(3))
