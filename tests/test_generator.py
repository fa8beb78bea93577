"""The skip U-Net: parameter count at the reference width, odd sizes, range, minimum size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2l.errors import UsageError
from t2l.generator import COLOR_DECORRELATION, Generator, GeneratorConfig, count_parameters


def test_parameter_count_matches_reference():
    assert count_parameters(Generator()) == 3_115_548


@pytest.mark.parametrize("hw", [(33, 33), (34, 47), (41, 36), (64, 64)])
def test_odd_and_even_sizes_keep_shape_and_range(hw):
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(depth=5, width=8))
    y = g(torch.rand(1, 3, *hw))
    assert y.shape == (1, 4, *hw)
    assert y.min() >= 0 and y.max() <= 1


def test_too_small_input_fails_clearly():
    g = Generator(GeneratorConfig(depth=5, width=8))
    assert g.cfg.min_size == 33
    with pytest.raises(UsageError, match="minimum side 33"):
        g(torch.rand(1, 3, 32, 64))


def test_gradients_reach_every_parameter_and_seed_fixes_init():
    torch.manual_seed(3)
    g1 = Generator(GeneratorConfig(depth=3, width=8))
    torch.manual_seed(3)
    g2 = Generator(GeneratorConfig(depth=3, width=8))
    x = torch.rand(1, 3, 20, 24)
    assert torch.equal(g1(x), g2(x))
    g1(x).mean().backward()
    assert all(p.grad is not None for p in g1.parameters())


def test_renderer_uses_train_mode_batchnorm_statistics():
    # The generator is trained with BatchNorm in training mode (per-image statistics, batch of one);
    # the final render must use the same statistics, never the running averages of eval mode.
    from t2l.image import render_layer
    from t2l.imageio import to_uint8

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(depth=3, width=8))
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # running stats far from any image's own
            m.running_mean.fill_(3.0)
            m.running_var.fill_(50.0)
    x = torch.rand(1, 3, 24, 30)
    with torch.no_grad():
        train_out = g.train()(x)
        eval_out = g.eval()(x)
        assert (to_uint8(train_out) != to_uint8(eval_out)).any()  # the two modes are told apart
        g.eval()  # as left by whoever used it last
        layer = render_layer(g, x, (24, 30))
    assert np.array_equal(layer, to_uint8(train_out))


def test_head_maps_decorrelated_colour_with_c_not_c_transpose():
    # The reference applies rgb = C y with the rows of C^T given in COLOR_DECORRELATION: decorrelated
    # channel 0 is luminance and feeds R, G and B about equally (0.5628, 0.5845, 0.5845).
    g = Generator(GeneratorConfig(depth=3, width=8))
    for j in range(3):
        y = torch.zeros(1, 4, 1, 1)
        y[0, j] = 1.0
        g.head = torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            g.head.weight.zero_()
            g.head.bias.copy_(y.view(4))
        out = g(torch.rand(1, 3, 20, 20))  # 1, 4, H, W
        expect = torch.sigmoid(torch.tensor(COLOR_DECORRELATION[j]))  # row j of C^T = column j of C
        assert torch.allclose(out[0, :3, 5, 5], expect, atol=1e-6)
        assert torch.allclose(out[0, 3, 5, 5], torch.tensor(0.5))  # alpha: plain sigmoid
