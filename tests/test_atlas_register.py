"""Frame-to-atlas registration (t2l/atlas/register.py): the grid solve, and what it buys on clips whose
motion one homography per frame cannot follow."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2l.atlas.fit import AtlasFitter, FitConfig
from t2l.atlas.flow import compute_flows
from t2l.atlas.model import AtlasModel, AtlasModelConfig
from t2l.atlas.register import _spread_half, grid_basis, refine_frames, solve_grid
from t2l.atlas.synthetic import noise_texture


def test_grid_basis_is_bilinear_upsampling():
    g = torch.randn(2, 5, 7)
    up = F.interpolate(g[None], size=(23, 41), mode="bilinear", align_corners=True)[0]
    ay, ax = grid_basis(5, 23), grid_basis(7, 41)
    assert torch.allclose(torch.einsum("yi,cij,xj->cyx", ay, g, ax), up, atol=1e-5)


def test_solve_grid_recovers_a_grid_and_fills_cells_without_data():
    torch.manual_seed(0)
    g = torch.randn(2, 4, 6) * 3
    target = F.interpolate(g[None], size=(40, 60), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)
    w = torch.ones(40, 60)
    got = solve_grid(target, w, (4, 6), smooth=1e-6, current=torch.zeros(2, 4, 6))
    assert torch.allclose(got, g, atol=1e-3)
    # no data on the right half: those cells follow the smoothness, not the zero they started at
    w[:, 30:] = 0
    flat = torch.ones(40, 60, 2) * 5.0
    got = solve_grid(flat, w, (4, 6), smooth=0.05, current=torch.zeros(2, 4, 6))
    assert torch.allclose(got, torch.full_like(got, 5.0), atol=0.2)


def _warped_clip(T, H, W, pad, seed, warp):
    """Frames of a padded noise texture seen through warp(t, ys, xs) -> (dx, dy) px, T, H, W, 3 uint8."""
    rng = np.random.default_rng(seed)
    tex = noise_texture(H + 2 * pad, W + 2 * pad, rng)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = []
    for t in range(T):
        dx, dy = warp(2 * math.pi * t / T, ys, xs)
        frames.append(
            (cv2.remap(tex, xs + pad + dx, ys + pad + dy, cv2.INTER_LINEAR) * 255).round().astype(np.uint8)
        )
    return np.stack(frames)


def _wobbly_clip(T=10, H=72, W=128, amp=4.0, seed=0):
    """A static textured scene seen through a smooth, changing, non-rigid warp (a heat-haze / a bending
    surface): no homography per frame explains it, a displacement field does."""

    def warp(ph, ys, xs):
        dx = amp * np.sin(2 * math.pi * ys / H + ph) * np.cos(math.pi * xs / W)
        return dx, amp * np.cos(2 * math.pi * xs / W + ph)

    return _warped_clip(T, H, W, 20, seed, warp)


def test_registration_follows_non_rigid_motion():
    frames = _wobbly_clip()
    flows = compute_flows(frames)
    psnr = {}
    for passes in (0, 2):
        cfg = FitConfig(steps=0, register_passes=passes, refine_passes=0, grid=(6, 10))
        fitter = AtlasFitter(frames, None, flows, cfg)
        psnr[passes] = float(np.mean(fitter.export().psnr))
    # what this guards against: homographies alone leave a ghosted average of the wobbling frames
    assert psnr[2] > psnr[0] + 4, psnr
    assert psnr[2] > 33, psnr


@pytest.mark.parametrize("size", [(24, 40), (25, 41)])
def test_residual_field_is_pixel_centre_aligned(size):
    """The half-resolution residual (cv2 INTER_AREA down, F.interpolate align_corners=False up) gives
    back a smooth displacement where it was measured, also for odd sizes; align_corners=True would
    shift it by ~half a px."""
    T, (H, W) = 1, size
    model = AtlasModel(AtlasModelConfig(T, H, W, bg_size=(H, W)), torch.eye(3)[None])
    before = model(torch.tensor([0]))["uv_bg"][0].detach().numpy()
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    ramp = np.stack([0.01 * xs, 0.02 * ys], -1)  # H, W, 2 uv units: 0.01 and 0.02 per frame px
    half = _spread_half(ramp, np.ones((H, W), np.float32), tuple(model.bg_map.res.shape[2:]), sigma=0.5)
    model.bg_map.res[0] = torch.from_numpy(half).permute(2, 0, 1)
    moved = model(torch.tensor([0]))["uv_bg"][0].detach().numpy() - before
    inner = (slice(4, -4), slice(4, -4))  # away from the blur's reflected borders
    err_px = np.abs(moved[inner] - ramp[inner]) / np.array([0.01, 0.02])  # in frame px
    assert err_px.max() < (0.01 if H % 2 == 0 else 0.05), err_px.max()


def test_a_refinement_pass_that_does_not_help_is_undone():
    frames = _wobbly_clip(T=4)
    flows = compute_flows(frames)
    fitter = AtlasFitter(frames, None, flows, FitConfig(steps=0, refine_passes=0, grid=(2, 3)))
    start = {k: v.clone() for k, v in fitter.model.state_dict().items()}
    scores = iter([1.0, 2.0])  # before, after the first pass: worse
    kept = refine_frames(fitter.model, fitter.frames, None, passes=3, score=lambda: next(scores))
    assert kept == []
    for k, v in fitter.model.state_dict().items():
        assert torch.equal(v, start[k]), k
    # and with no score every pass is kept and moves the fields
    assert len(refine_frames(fitter.model, fitter.frames, None, passes=2)) == 2
    assert fitter.model.bg_map.res.abs().max() > 0


def _fine_wobble_clip(T=8, H=72, W=128, amp=2.0, period=40.0, seed=1):
    """A textured scene under a warp finer than a coarse grid's cells (period 40 px, cells 64 x 36 px):
    what a face changing expression or an edge between near and far things asks of a 12 x 20 grid."""

    def warp(ph, ys, xs):
        return amp * np.sin(2 * math.pi * ys / period + ph), amp * np.sin(2 * math.pi * xs / period - ph)

    return _warped_clip(T, H, W, 10, seed, warp)


def test_dense_refinement_follows_motion_finer_than_the_grid():
    frames = _fine_wobble_clip()
    flows = compute_flows(frames)
    psnr = {}
    for passes in (0, 3):
        cfg = FitConfig(steps=0, refine_passes=passes, grid=(2, 3))
        fitter = AtlasFitter(frames, None, flows, cfg)
        psnr[passes] = float(np.mean(fitter.export().psnr))
        if passes:  # the fields hold it, and a saved state carries them
            assert fitter.model.bg_map.res.abs().max() > 0
            assert "bg_map.res" in fitter.state_dict()["model"]
    # what this guards against: residual fields never set, or set and not used by the mapping
    assert psnr[3] > psnr[0] + 2, psnr
