"""Fitting: a short fit on a tiny synthetic clip must reconstruct it, separate the object and stay consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2l.atlas.fit import AtlasFitter, FitConfig, drift
from t2l.atlas.flow import compute_flows
from t2l.atlas.masks import iou, motion_masks
from t2l.atlas.model import AtlasModel, AtlasModelConfig, frame_grid
from t2l.atlas.synthetic import SyntheticConfig, make_clip


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def clip():
    c = make_clip(SyntheticConfig(frames=8, height=72, width=128, seed=5))
    flows = compute_flows(c.frames)
    masks, _ = motion_masks(flows, frames=c.frames)
    return c, flows, masks


def test_model_shapes_and_identity_mapping():
    T, H, W = 3, 16, 24
    h0 = torch.eye(3).expand(T, 3, 3).clone()
    model = AtlasModel(AtlasModelConfig(T, H, W, bg_size=(H, W), fg_size=(8, 8), grid=(2, 3)), h0, h0)
    out = model(torch.tensor([0, 2]))
    assert out["rgb"].shape == (2, 3, H, W) and out["alpha"].shape == (2, 1, H, W)
    assert out["uv_bg"].shape == (2, H, W, 2)
    # identity homography: uv equals the normalised pixel centres, so the atlas is sampled texel for texel
    torch.testing.assert_close(out["uv_bg"][0], frame_grid(H, W)[..., :2])
    out["rgb"].mean().backward()
    assert model.bg_texture.grad.abs().sum() > 0 and model.fg_texture.grad.abs().sum() > 0
    assert model.bg_map.dh.grad is not None and model.fg_map.disp.grad is not None


def test_short_fit_reconstructs_separates_and_is_consistent(clip):
    c, flows, masks = clip
    fitter = AtlasFitter(c.frames, masks, flows, FitConfig(steps=40, seed=0))
    events = list(fitter.run())
    assert [e.step for e in events] == list(range(1, 41)) and all(np.isfinite(e.psnr) for e in events)
    res = fitter.export()
    mean_frame = np.broadcast_to(c.frames.mean(0), c.frames.shape)
    baseline = _psnr(c.frames, mean_frame)  # what a fit that learned nothing about motion gets (~15 dB)
    psnr = float(np.mean(res.psnr))
    assert psnr >= 32 and psnr > baseline + 12
    per_frame = [_psnr(f, r) for f, r in zip(c.frames, res.reconstruction, strict=True)]
    np.testing.assert_allclose(per_frame, res.psnr, atol=0.01)
    assert iou(res.alpha > 0.5, c.masks) >= 0.8
    assert [lay["name"] for lay in res.layers] == ["bg", "fg"]
    for lay in res.layers:
        assert (
            lay["uv"].shape == (8, 72, 128, 2)
            and lay["texture"].dtype == np.uint8
            and lay["texture"].shape[2] == 4
        )
        assert lay["texture"][..., 3].max() >= 240 and lay["texture"][..., 3].min() <= 3  # coverage
    # Following the TRUE motion, an atlas point stays put to within a pixel per frame.
    truth = {"forward": c.flow, "forward_valid": np.ones(c.flow.shape[:3], bool)}
    for lay in res.layers:
        assert drift(lay["uv"], lay["uv_to_px"], truth, res.alpha, lay["name"]) < 1.0
    assert res.consistency["bg"] < 1.0


def test_a_broken_mapping_cannot_pass(clip):
    """The PSNR threshold above is meaningful: frozen identity mappings (no camera motion) fall far short."""
    c, flows, masks = clip
    fitter = AtlasFitter(c.frames, None, flows, FitConfig(steps=0))
    fitter.model.bg_map.h0.copy_(
        fitter.model.bg_map.h0[:1].expand_as(fitter.model.bg_map.h0)
    )  # no camera motion
    assert float(np.mean(fitter.export().psnr)) < 28


def test_one_layer_fit_and_resume(clip):
    c, flows, _ = clip
    cfg = FitConfig(steps=10, seed=1)
    fitter = AtlasFitter(c.frames, None, flows, cfg)
    for _ in fitter.run():
        pass
    res = fitter.export()
    assert res.alpha is None and [lay["name"] for lay in res.layers] == ["bg"]
    state = fitter.state_dict()
    again = AtlasFitter(c.frames, None, flows, FitConfig(steps=14, seed=1), state=state)
    assert again.step == 10
    # the saved optimiser carries decayed rates; the schedule must restart from the configured base rates
    assert again.base_lr == [cfg.lr_texture, cfg.lr_mapping, cfg.lr_gain]
    assert again.opt.param_groups[0]["lr"] < 0.5 * cfg.lr_texture
    torch.testing.assert_close(again.model.bg_texture, fitter.model.bg_texture)
    assert [e.step for e in again.run()] == [11, 12, 13, 14]
    with pytest.raises(ValueError, match="saved model"):
        AtlasFitter(c.frames[:5], None, {k: v[:4] for k, v in flows.items()}, cfg, state=state)


def test_interrupted_then_resumed_fit_equals_the_uninterrupted_one(clip, tmp_path):
    """Resume restores the frame sampler, the optimiser and the step: the result is bit-equal."""
    c, flows, masks = clip
    whole = AtlasFitter(c.frames, masks, flows, FitConfig(steps=8, seed=3))
    list(whole.run())
    part = AtlasFitter(c.frames, masks, flows, FitConfig(steps=8, seed=3))
    for ev in part.run():
        if ev.step == 3:
            break  # as if Ctrl-C came after step 3
    torch.save(part.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    # another seed in the config: the saved sampler state must win
    resumed = AtlasFitter(c.frames, masks, flows, FitConfig(steps=8, seed=99), state=state)
    assert [e.step for e in resumed.run()] == [4, 5, 6, 7, 8]
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_texture_holes_are_filled_from_neighbours():
    from t2l.atlas.init import fill_holes

    acc = np.zeros((3, 40, 60), np.float32)
    w = np.zeros((40, 60), np.float32)
    w[:, :30], acc[:, :, :30] = 1.0, 0.25  # left half seen (colour 0.25), right half never
    out = fill_holes(acc, w, np.full(3, 0.5))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 0.25, atol=1e-5)


def test_a_fit_resumes_with_its_own_grid_and_mapping_rate(clip):
    """A state saved before registration (6x10 grid, mappings learned at 3e-4, no residual fields)
    resumes as it started, under today's defaults (12x20, mappings held): same grid, mappings still
    learning, zero residuals."""
    c, flows, _ = clip
    old = FitConfig(steps=4, seed=1, grid=(6, 10), lr_mapping=3e-4, register_passes=0, track=False,
                    refine_passes=0)  # fmt: skip
    fitter = AtlasFitter(c.frames, None, flows, old)
    list(fitter.run())
    state = fitter.state_dict()
    del state["fit_config"]["lr_mapping"]  # as written by t2l <= 0.1: the rate is implied
    state["model"].pop("bg_map.res")  # ... and before the residual fields
    again = AtlasFitter(c.frames, None, flows, FitConfig(steps=8, seed=1), state=state)
    assert again.model.cfg.grid == (6, 10) and again.cfg.grid == (6, 10)
    assert again.cfg.lr_mapping == 3e-4 and again.model.bg_map.disp.requires_grad
    before = again.model.bg_map.disp.detach().clone()
    list(again.run())
    assert not torch.equal(before, again.model.bg_map.disp.detach())
    # and a new fit holds its registered mappings: no gradient reaches them
    held = AtlasFitter(c.frames, None, flows, FitConfig(steps=2, seed=1, register_passes=0))
    before = held.model.bg_map.disp.detach().clone()
    list(held.run())
    assert not held.model.bg_map.disp.requires_grad and torch.equal(before, held.model.bg_map.disp)


def test_a_two_layer_fit_from_before_the_opacity_field_resumes_with_its_moments(clip):
    """A state saved before the per-frame opacity correction (no `alpha_field`, one optimiser group
    fewer) resumes without it (zeros, not learned: as it started) and keeps the Adam moments of its
    other groups (a group-count mismatch used to restart them all)."""
    c, flows, _ = clip
    cfg = FitConfig(steps=3, seed=1, register_passes=0, track=False, refine_passes=0)
    fitter = AtlasFitter(c.frames, c.masks, flows, cfg)
    list(fitter.run())
    state = fitter.state_dict()
    state["model"].pop("alpha_field")
    del state["fit_config"]["lr_opacity_field"]
    last = len(state["optimizer"]["param_groups"]) - 1
    field_id = state["optimizer"]["param_groups"].pop()["params"][0]
    state["optimizer"]["state"].pop(field_id, None)
    assert last == 4
    again = AtlasFitter(c.frames, c.masks, flows, FitConfig(steps=6, seed=1), state=state)
    assert again.cfg.lr_opacity_field == 0.0 and not again.model.alpha_field.requires_grad
    saved_m = state["optimizer"]["state"][0]["exp_avg"]  # the background texture's first moment
    assert torch.equal(again.opt.state_dict()["state"][0]["exp_avg"], saved_m)
    list(again.run())
    assert torch.count_nonzero(again.model.alpha_field) == 0


def test_all_empty_masks_give_an_empty_foreground_not_a_crash(clip):
    """Masks with no pixel in any frame (a --masks folder of black images): the fit still runs, the
    foreground atlas is frame-sized and stays transparent, the background reconstructs the clip as a
    one-layer fit does."""
    c, flows, _ = clip
    empty = np.zeros(c.frames.shape[:3], bool)
    fitter = AtlasFitter(c.frames, empty, flows, FitConfig(steps=2, seed=0))  # refinement skips the empty fg
    list(fitter.run())
    res = fitter.export()
    assert fitter.model.layered and res.alpha.max() < 0.05
    one = AtlasFitter(c.frames, None, flows, FitConfig(steps=2, seed=0))
    list(one.run())
    assert abs(np.mean(res.psnr) - np.mean(one.export().psnr)) < 1.0
