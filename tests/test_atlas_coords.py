"""t2l/atlas/coords.py: atlas coordinates -> pixels -> grids, bilinear sampling, crops, bounding boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2l.atlas.coords import (
    Box,
    grid_uv_to_px,
    pixels_to_uv,
    premultiply,
    sample_atlas,
    texel_centres,
    texel_index,
    unpremultiply,
    uv_bbox,
    uv_to_grid,
    uv_to_pixels,
)

TO_PX = (3.0, 5.0, 2.0, 7.0)  # sx, ox, sy, oy: x and y scales and offsets all differ, so swaps show


def test_pixels_known_values_and_round_trip():
    uv = np.array([[0.0, 0.0], [1.0, -1.0], [-2.0, 0.5]])
    np.testing.assert_allclose(uv_to_pixels(uv, TO_PX), [[5, 7], [8, 5], [-1, 8]])
    np.testing.assert_allclose(pixels_to_uv(uv_to_pixels(uv, TO_PX), TO_PX), uv)
    t = torch.tensor(uv, dtype=torch.float32, requires_grad=True)
    px = uv_to_pixels(t, TO_PX)
    assert isinstance(px, torch.Tensor) and px.requires_grad
    # the fitter's convention: grid_sample's -1 / +1 are the outer edges of an (Ha, Wa) = (4, 8) atlas
    np.testing.assert_allclose(
        uv_to_pixels(np.array([[-1.0, -1.0], [1.0, 1.0]]), grid_uv_to_px((4, 8))), [[0, 0], [8, 4]]
    )
    # texel centres: texel (row 1, col 2) of that atlas has its centre at px (2.5, 1.5)
    c = texel_centres((4, 8), grid_uv_to_px((4, 8)))
    assert c.shape == (4, 8, 2) and c.dtype == np.float32
    np.testing.assert_allclose(uv_to_pixels(c[1, 2], grid_uv_to_px((4, 8))), [2.5, 1.5], atol=1e-6)
    np.testing.assert_array_equal(texel_index(c, grid_uv_to_px((4, 8)))[1, 2], [2, 1])


def test_grid_of_the_whole_atlas_and_of_a_crop():
    uv = pixels_to_uv(np.array([[0.0, 0.0], [10.0, 6.0], [12.0, 9.0]]), TO_PX)
    np.testing.assert_allclose(uv_to_grid(uv, TO_PX, (6, 10)), [[-1, -1], [1, 1], [1.4, 2]], atol=1e-12)
    crop = Box(10, 6, 14, 10)  # atlas px [10, 14) x [6, 10)
    np.testing.assert_allclose(uv_to_grid(uv, TO_PX, crop=crop), [[-6, -4], [-1, -1], [0, 0.5]], atol=1e-12)
    with pytest.raises(ValueError, match="empty"):
        uv_to_grid(uv, TO_PX, crop=Box(3, 3, 3, 5))


def _ramp(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A texture whose value at atlas px (x, y) is linear, so bilinear reads are exact inside it."""
    return np.stack([0.5 * xs - 0.25 * ys, 0.1 * ys + 1.0], 0)  # 2, h, w


def test_sample_atlas_reads_texels_at_their_centres_and_linear_ramps_exactly():
    ha, wa = 9, 13
    rng = np.random.default_rng(0)
    tex = torch.tensor(rng.random((1, 3, ha, wa)), dtype=torch.float32)
    centres = torch.from_numpy(texel_centres((ha, wa), TO_PX))[None]  # 1, Ha, Wa, 2
    out = sample_atlas(tex, centres, TO_PX, premultiplied=False)
    torch.testing.assert_close(out, tex)
    # anywhere between texel centres a linear ramp comes back exactly
    ys, xs = np.mgrid[0:ha, 0:wa] + 0.5
    ramp = torch.tensor(_ramp(xs, ys)[None], dtype=torch.float32)
    px = rng.uniform([0.5, 0.5], [wa - 0.5, ha - 0.5], (1, 5, 7, 2))
    uv = torch.tensor(pixels_to_uv(px, TO_PX), dtype=torch.float32)
    want = torch.tensor(_ramp(px[0, ..., 0], px[0, ..., 1])[None], dtype=torch.float32)
    torch.testing.assert_close(sample_atlas(ramp, uv, TO_PX, premultiplied=False), want, atol=1e-4, rtol=0)


def test_a_crop_at_another_resolution_samples_like_the_whole_atlas():
    crop = Box(4, 2, 10, 7)  # 6 x 5 atlas px, rendered at 3x: an 18 x 15 image
    k = 3
    ys, xs = np.mgrid[0 : crop.height * k, 0 : crop.width * k] + 0.5
    ramp = torch.tensor(_ramp(crop.x0 + xs / k, crop.y0 + ys / k)[None], dtype=torch.float32)
    rng = np.random.default_rng(1)
    lo, hi = np.array([crop.x0, crop.y0]) + 0.5 / k, np.array([crop.x1, crop.y1]) - 0.5 / k
    px = rng.uniform(lo, hi, (2, 4, 6, 2))
    uv = torch.tensor(pixels_to_uv(px, TO_PX), dtype=torch.float32)
    want = torch.tensor(np.stack([_ramp(p[..., 0], p[..., 1]) for p in px]), dtype=torch.float32)
    torch.testing.assert_close(
        sample_atlas(ramp, uv, TO_PX, premultiplied=False, crop=crop), want, atol=1e-4, rtol=0
    )
    # outside the crop: transparent zeros by default
    far = torch.tensor(pixels_to_uv(np.full((1, 1, 1, 2), 50.0), TO_PX), dtype=torch.float32)
    assert sample_atlas(ramp, far, TO_PX, premultiplied=False, crop=crop).abs().max() == 0


def test_premultiplied_sampling_does_not_bleed_hidden_colour_and_has_gradients():
    # texel 0: fully transparent pure red (hidden colour), texel 1: opaque green
    tex = torch.tensor(
        [[[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True
    )  # 1, 4, 1, 2
    half = torch.tensor(pixels_to_uv(np.array([[[[1.0, 0.5]]]]), TO_PX), dtype=torch.float32)  # between them
    pre = sample_atlas(tex, half, TO_PX)[0, :, 0, 0]
    torch.testing.assert_close(pre, torch.tensor([0.0, 0.5, 0.0, 0.5]))  # no red; premultiplied green
    torch.testing.assert_close(unpremultiply(pre[:, None, None])[:, 0, 0], torch.tensor([0.0, 1.0, 0.0, 0.5]))
    straight = sample_atlas(tex, half, TO_PX, premultiplied=False)[0, :, 0, 0]
    assert straight[0] == 0.5  # straight interpolation would bleed the hidden red
    pre.sum().backward()
    assert tex.grad is not None and tex.grad.abs().sum() > 0
    torch.testing.assert_close(premultiply(tex.detach())[0, :3], tex.detach()[0, :3] * tex.detach()[0, 3:])


def test_uv_bbox_is_exactly_the_texels_a_read_touches():
    ha, wa = 40, 50
    rng = np.random.default_rng(2)
    px = rng.uniform([12.0, 8.0], [30.0, 21.0], (2, 6, 9, 2))
    uv = torch.tensor(pixels_to_uv(px, TO_PX), dtype=torch.float32)
    mask = torch.tensor(rng.random((2, 6, 9)) > 0.3)
    tex = torch.zeros(1, 1, ha, wa, requires_grad=True)
    read = sample_atlas(tex, uv, TO_PX, premultiplied=False)[:, 0]  # 2, 6, 9
    (read * mask).sum().backward()
    rows, cols = np.nonzero(tex.grad[0, 0].numpy())
    box = uv_bbox(uv, TO_PX, mask)
    assert box == Box(cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert uv_bbox(uv.numpy(), TO_PX, mask.numpy(), pad=2) == Box(
        box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2
    )
    assert uv_bbox(uv, TO_PX, torch.zeros_like(mask)) is None
    # clipped to the atlas
    edge = torch.tensor(pixels_to_uv(np.array([[[-3.0, 1.0], [4.0, 60.0]]]), TO_PX), dtype=torch.float32)
    assert uv_bbox(edge, TO_PX, limit=(ha, wa)) == Box(0, 0, 5, ha)
    assert uv_bbox(edge[:, :1], TO_PX, limit=(ha, wa)) is None  # entirely left of the atlas
