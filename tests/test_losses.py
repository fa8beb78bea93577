"""One battery per loss term: shape, a hand-computed value, gradients flow, reduction over views."""

from __future__ import annotations

import math

import pytest
import torch

from t2l.losses import (
    GREEN,
    bootstrap_loss,
    bootstrap_weight,
    composite,
    directional_loss,
    greenscreen,
    sparsity_terms,
    spherical_distance,
    structure_loss,
    text_distance_loss,
)


def test_spherical_distance_known_values_and_scale_invariance():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 0.5], [2.0, 0.0]])
    d = spherical_distance(x, y)
    assert d.shape == (3,)
    # orthogonal: |x^ - y^| = sqrt(2) -> 2 * (pi/4)^2; scale does not matter; identical direction -> 0
    assert d[0].item() == pytest.approx(math.pi**2 / 8, abs=1e-6)
    assert d[1].item() == pytest.approx(math.pi**2 / 8, abs=1e-6)
    assert d[2].item() == pytest.approx(0.0, abs=1e-3)
    # opposite vectors: the maximum pi^2/2
    assert spherical_distance(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])).item() == pytest.approx(
        math.pi**2 / 2, abs=1e-5
    )


def test_text_distance_loss_averages_views_and_targets():
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # V=2
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # K=3 (with a repeat)
    loss = text_distance_loss(views, targets)
    # pairs: v0: 0, 0, pi^2/8 ; v1: pi^2/8, pi^2/8, 0  -> mean = 3/6 * pi^2/8
    assert loss.shape == ()
    assert loss.item() == pytest.approx(0.5 * math.pi**2 / 8, abs=1e-3)
    views2 = torch.tensor([[0.3, 1.0], [1.0, 0.2]], requires_grad=True)
    text_distance_loss(views2, targets).backward()
    assert views2.grad is not None and views2.grad.abs().sum() > 0


def test_directional_loss_known_values():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    inp = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0]])
    # view 0: out-in = (1,0) -> 1 - 1 = 0; view 1: (0,1) -> 1 - 0 = 1; mean 0.5
    loss = directional_loss(out, inp, dirs)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    loss.backward()
    assert out.grad.abs().sum() > 0
    # two directions: mean over views x directions
    dirs2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert directional_loss(out.detach(), inp, dirs2).item() == pytest.approx((0 + 2 + 1 + 1) / 4, abs=1e-6)


def test_structure_loss_mse_and_constant_input():
    ss_out = torch.zeros(1, 3, 3, requires_grad=True)
    ss_in = torch.full((1, 3, 3), 0.5, requires_grad=True)
    loss = structure_loss(ss_out, ss_in)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert ss_out.grad.abs().sum() > 0
    assert ss_in.grad is None  # the input's matrix is a constant


def test_sparsity_terms_known_values_and_grad():
    l0, l1 = sparsity_terms(torch.zeros(1, 1, 4, 4))
    assert l0.item() == pytest.approx(0.0) and l1.item() == pytest.approx(0.0)
    l0, l1 = sparsity_terms(torch.ones(1, 1, 4, 4))
    assert l0.item() == pytest.approx(2 / (1 + math.exp(-5)) - 1, abs=1e-6)
    assert l1.item() == pytest.approx(1.0)
    a = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    l0, l1 = sparsity_terms(a)
    (l0 + l1).backward()
    assert (a.grad > 0).all()


def test_bootstrap_loss_and_weight():
    rel = torch.rand(1, 1, 40, 30)
    assert bootstrap_loss(rel.clone(), rel, size=224).item() == pytest.approx(0.0, abs=1e-9)
    a = torch.zeros(1, 1, 20, 20, requires_grad=True)
    loss = bootstrap_loss(a, torch.ones(1, 1, 50, 50), size=32)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert (a.grad < 0).all()
    assert bootstrap_weight(0, 10, 10.0) == pytest.approx(9.0)
    assert bootstrap_weight(9, 10, 10.0) == pytest.approx(0.0)
    assert bootstrap_weight(9, 10, 10.0, anneal=False) == 10.0


def test_composite_and_greenscreen_values():
    rgba = torch.tensor([1.0, 0.0, 0.0, 0.25]).view(1, 4, 1, 1).expand(2, 4, 3, 3).clone().requires_grad_()
    bg = torch.zeros(2, 3, 3, 3)
    c = composite(rgba, bg)
    assert c.shape == (2, 3, 3, 3)
    assert torch.allclose(c[:, 0], torch.full((2, 3, 3), 0.25))
    g = greenscreen(rgba)
    assert torch.allclose(g[0, :, 0, 0], torch.tensor([0.25, 0.75 * GREEN[1], 0.75 * GREEN[2]]))
    (c.sum() + g.sum()).backward()
    assert rgba.grad.abs().sum() > 0


def test_defaults_are_the_papers_and_references_numbers():
    # paper A.2/A.3 and the reference implementation (method-facts.md); any drift here changes the method
    from t2l.augment import CropConfig, ViewConfig
    from t2l.losses import LossWeights
    from t2l.prompts import COMP_TEMPLATES, SCREEN_TEMPLATES
    from t2l.train import TrainConfig

    assert COMP_TEMPLATES == (
        "photo of {}.", "high quality photo of {}.", "a photo of {}.", "the photo of {}.",
        "image of {}.", "an image of {}.", "high quality image of {}.", "a high quality image of {}.",
        "the {}.", "a {}.", "{}.", "{}", "{}!", "{}...",
    )  # fmt: skip
    assert SCREEN_TEMPLATES == ("{} over a green screen.", "{} in front of a green screen.")
    assert GREEN == (0.0, 177 / 255, 64 / 255)
    w = LossWeights()
    assert (w.structure, w.comp, w.screen, w.sparsity, w.l0, w.l1, w.bootstrap) == (
        2,
        1,
        1,
        6,
        0.01,
        0.01,
        10,
    )
    t = TrainConfig()
    assert (t.steps, t.lr, t.momentum, t.weight_decay, t.gamma, t.min_lr) == (
        1000,
        2.5e-3,
        0.9,
        0.01,
        0.99,
        1e-5,
    )
    assert (t.structure_short, t.structure_long_max, t.anneal_bootstrap) == (224, 380, True)
    v = ViewConfig()
    assert (v.n, v.short, v.long_max, v.crop, v.flip_p, v.affine_p, v.degrees, v.translate) == (
        16,
        224,
        320,
        (0.6, 1.0),
        0.5,
        0.8,
        15.0,
        0.1,
    )
    assert (v.perspective_p, v.distortion, v.jitter_p, v.jitter, v.gray_p, v.fill) == (
        0.5,
        0.4,
        0.7,
        0.1,
        0.15,
        1.0,
    )
    c = CropConfig()
    assert (c.jitter_p, c.jitter, c.flip_p, c.scale, c.crop) == (0.1, 0.1, 0.5, (0.8, 1.2), (0.85, 1.0))


@pytest.mark.parametrize(
    "call, shapes",
    [
        (lambda: spherical_distance(torch.rand(4, 8), torch.rand(4, 6)), "(4, 8), (4, 6)"),
        (lambda: text_distance_loss(torch.rand(4, 8), torch.rand(2, 6)), "(4, 8), (2, 6)"),
        (lambda: text_distance_loss(torch.rand(4, 8), torch.rand(0, 8)), "(4, 8), (0, 8)"),
        (lambda: text_distance_loss(torch.rand(8), torch.rand(2, 8)), "(8,), (2, 8)"),
        (lambda: directional_loss(torch.rand(4, 8), torch.rand(3, 8), torch.rand(2, 8)), "(4, 8), (3, 8)"),
        (lambda: directional_loss(torch.rand(4, 8), torch.rand(4, 8), torch.rand(2, 5)), "(2, 5)"),
        (lambda: structure_loss(torch.rand(1, 5, 5), torch.rand(1, 6, 6)), "(1, 5, 5), (1, 6, 6)"),
        (lambda: structure_loss(torch.rand(1, 5, 4), torch.rand(1, 5, 4)), "(1, 5, 4)"),
        (lambda: sparsity_terms(torch.rand(1, 4, 8, 8)), "(1, 4, 8, 8)"),
        (lambda: sparsity_terms(torch.rand(8, 8)), "(8, 8)"),
        (lambda: bootstrap_loss(torch.rand(1, 1, 8, 8), torch.rand(1, 8, 8)), "(1, 1, 8, 8), (1, 8, 8)"),
        (
            lambda: bootstrap_loss(torch.rand(2, 1, 8, 8), torch.rand(1, 1, 8, 8)),
            "(2, 1, 8, 8), (1, 1, 8, 8)",
        ),
        (lambda: composite(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)), "(1, 3, 8, 8), (1, 3, 8, 8)"),
        (lambda: composite(torch.rand(1, 4, 8, 8), torch.rand(1, 3, 8, 9)), "(1, 4, 8, 8), (1, 3, 8, 9)"),
        (lambda: composite(torch.rand(2, 4, 8, 8), torch.rand(3, 3, 8, 8)), "(2, 4, 8, 8), (3, 3, 8, 8)"),
        (lambda: greenscreen(torch.rand(1, 3, 8, 8)), "(1, 3, 8, 8)"),
    ],
)
def test_bad_input_shapes_name_the_expected_and_the_offending_shape(call, shapes):
    """A wrong tensor fails with the expected layout and the shapes it got, not a silent broadcast."""
    with pytest.raises(ValueError, match=r"expects .*; got ") as e:
        call()
    assert shapes in str(e.value)


def test_shape_checks_accept_what_the_training_loop_passes():
    alpha = torch.rand(2, 1, 8, 8)
    assert composite(torch.rand(2, 4, 8, 8), torch.rand(1, 3, 8, 8)).shape == (
        2,
        3,
        8,
        8,
    )  # shared background
    assert greenscreen(torch.rand(2, 4, 8, 8)).shape == (2, 3, 8, 8)
    assert bootstrap_loss(alpha, torch.rand(2, 1, 5, 7)).ndim == 0  # the map may have another size
    assert spherical_distance(torch.rand(3, 1, 8), torch.rand(1, 4, 8)).shape == (3, 4)  # broadcasting stays
