"""Augmentations: determinism under a seed, crop geometry, view geometry, differentiability."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2l.augment import (
    CropConfig,
    ViewConfig,
    ViewParams,
    apply_crop,
    color_jitter,
    render_views,
    sample_crop,
    sample_views,
    view_size,
)
from t2l.train import structure_resize

NO_AUG = ViewConfig(n=1, flip_p=0, affine_p=0, perspective_p=0, jitter_p=0, gray_p=0, short=32, long_max=48)


def test_crop_draws_are_deterministic_under_seed():
    a = [sample_crop(torch.Generator().manual_seed(5), 100, 120, CropConfig(), 33) for _ in range(2)]
    b = sample_crop(torch.Generator().manual_seed(6), 100, 120, CropConfig(), 33)
    assert a[0] == a[1]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    v1, v2 = sample_views(g1, 100, 120, ViewConfig()), sample_views(g2, 100, 120, ViewConfig())
    assert torch.equal(v1.homography, v2.homography) and torch.equal(v1.jitter, v2.jitter)
    assert a[0] != b  # another seed, another crop
    crops = {sample_crop(torch.Generator().manual_seed(s), 100, 120, CropConfig(), 33) for s in range(20)}
    assert len(crops) >= 18  # the seed drives every draw (a constant or seed-blind crop gives 1)
    v3 = sample_views(torch.Generator().manual_seed(6), 100, 120, ViewConfig())
    assert not torch.equal(v1.homography, v3.homography)


def test_crop_geometry_stays_in_range():
    g = torch.Generator().manual_seed(0)
    H, W = 90, 150
    flips = 0
    for _ in range(200):
        p = sample_crop(g, H, W, CropConfig(), 33)
        scale = p.sh / H
        assert 0.79 <= scale <= 1.21 and abs(p.sw / W - scale) < 0.02  # aspect kept
        assert 0.84 <= p.h / p.sh <= 1.0 and 0.84 <= p.w / p.sw <= 1.0
        assert abs(p.h / p.sh - p.w / p.sw) < 0.02  # same fraction on both sides
        assert 0 <= p.top <= p.sh - p.h and 0 <= p.left <= p.sw - p.w
        assert min(p.h, p.w) >= 33
        flips += p.flip
    assert 70 < flips < 130
    x = torch.rand(1, 3, H, W)
    assert apply_crop(x, p).shape == (1, 3, p.h, p.w)


def test_crop_respects_generator_minimum():
    p = sample_crop(torch.Generator().manual_seed(0), 40, 200, CropConfig(), 40)
    assert p.h >= 40 and p.w >= 40


def test_whole_image_view_without_augmentation_is_a_resize():
    x = F.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bicubic").clamp(0, 1)  # smooth content
    p = sample_views(torch.Generator().manual_seed(0), 64, 64, NO_AUG)
    v = render_views(x, p)
    ref = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert v.shape == (1, 3, 32, 32)
    assert (v - ref).abs().mean() < 0.01


def test_flip_view_and_white_fill():
    x = torch.rand(1, 3, 32, 32)
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))[None]
    ident = ViewParams(
        (32, 32), flip, torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64), torch.tensor([False])
    )
    assert torch.allclose(render_views(x, ident), x.flip(-1), atol=1e-5)
    zoom_out = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))[None]  # view shows 2x the area
    p = ViewParams((32, 32), zoom_out, ident.jitter, ident.gray)
    v = render_views(x, p, fill=1.0)
    assert torch.allclose(v[..., :4, :], torch.ones_like(v[..., :4, :]))  # outside the image: white


def test_views_shape_batch_order_and_gradient():
    cfg = ViewConfig(n=5, short=32, long_max=48)
    p = sample_views(torch.Generator().manual_seed(1), 40, 80, cfg)
    # 1:2 image: the 64-px long side would pass the 48 cap, so the short side shrinks (aspect kept)
    assert view_size(40, 80, cfg) == (24, 48) and p.size == (24, 48)
    x = torch.rand(2, 3, 40, 80, requires_grad=True)
    v = render_views(x, p)
    assert v.shape == (10, 3, 24, 48)
    # image-major order: views 0..4 come from image 0
    v0 = render_views(x[:1], p)
    assert torch.allclose(v[:5], v0, atol=1e-6)
    v.mean().backward()
    assert x.grad.abs().sum() > 0
    assert 0 <= v.min() and v.max() <= 1


def test_color_jitter_identity_and_grad():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    one, zero = torch.ones(2), torch.zeros(2)
    assert torch.allclose(color_jitter(x, one, one, one, zero), x, atol=1e-5)
    y = color_jitter(x, one * 0.9, one * 1.1, one * 0.95, zero + 0.05)
    assert not torch.allclose(y, x)
    y.mean().backward()
    assert x.grad.abs().sum() > 0


def test_view_and_structure_sizes_keep_the_aspect_ratio():
    # paper A.3 "resized down to 224 maintaining aspect ratio"; the reference's Resize(224, max_size=320/380)
    # caps the longer side by shrinking the shorter one instead of squashing the image
    cfg = ViewConfig()
    assert view_size(512, 512, cfg) == (224, 224)
    assert view_size(512, 683, cfg) == (224, 299)  # under the cap: shorter side 224
    assert view_size(512, 910, cfg) == (180, 320)  # 16:9: capped, aspect kept
    assert view_size(910, 512, cfg) == (320, 180)
    for h, w in [(512, 910), (300, 1000), (129, 700)]:
        vh, vw = view_size(h, w, cfg)
        assert abs(vw / vh - w / h) < 0.02 * w / h
    assert structure_resize(torch.zeros(1, 3, 512, 1024), 224, 380).shape[-2:] == (190, 380)
    assert structure_resize(torch.zeros(1, 3, 512, 683), 224, 380).shape[-2:] == (224, 299)
