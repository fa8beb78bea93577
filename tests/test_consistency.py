"""The consistency report: warp error along known flows, leakage, preservation, atlas spread."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from t2l.atlas.synthetic import noise_texture
from t2l.consistency import atlas_spread, consistency_report, flow_chain, format_report, warp_error

H, W = 48, 64


def _shift_flow(shifts, h=H, w=W) -> dict:
    """Exact flow dict of a clip whose content moves by shifts[t] = (dx, dy) px from frame t to t+1."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fwd, bwd, fv, bv = [], [], [], []
    for dx, dy in shifts:
        fwd.append(np.broadcast_to(np.float32([dx, dy]), (h, w, 2)))
        bwd.append(np.broadcast_to(np.float32([-dx, -dy]), (h, w, 2)))
        fv.append((xs + dx >= 0) & (xs + dx <= w - 1) & (ys + dy >= 0) & (ys + dy <= h - 1))
        bv.append((xs - dx >= 0) & (xs - dx <= w - 1) & (ys - dy >= 0) & (ys - dy <= h - 1))
    return {
        "forward": np.stack(fwd).astype(np.float16),
        "backward": np.stack(bwd).astype(np.float16),
        "forward_valid": np.stack(fv),
        "backward_valid": np.stack(bv),
    }


def _integer_clip(shifts, seed=0, h=H, w=W) -> np.ndarray:
    """uint8 [T, H, W, 3]: crops of a noise texture; frame t+1 = frame t moved by shifts[t] (integers)."""
    pad = 80
    big = (
        (noise_texture(h + 2 * pad, w + 2 * pad, np.random.default_rng(seed)) * 255).round().astype(np.uint8)
    )
    offs = np.concatenate([[[0, 0]], np.cumsum(np.asarray(shifts, int), 0)])  # content offset of frame t
    # content moves by +d: frame_t(p) = big(p - off_t)
    return np.stack([big[pad - oy : pad - oy + h, pad - ox : pad - ox + w] for ox, oy in offs])


def _smooth_clip(shift, t_count, h=H, w=W) -> np.ndarray:
    """float [T, H, W, 3] in [0, 1]: a smooth analytic texture moving by `shift` px per frame."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = []
    for t in range(t_count):
        x, y = xs - t * shift[0], ys - t * shift[1]
        c = [np.sin(x / 5.0 + k) * np.cos(y / 7.0 - k) for k in range(3)]
        frames.append(0.5 + 0.4 * np.stack(c, -1))
    return np.stack(frames).astype(np.float32)


# ---- warp error ----------------------------------------------------------------------------------------


def test_integer_shift_with_exact_flow_has_zero_warp_error():
    shifts = [(2, 1)] * 11
    frames, flow = _integer_clip(shifts), _shift_flow(shifts)
    assert warp_error(frames, flow) < 1e-10
    assert warp_error(frames, flow, stride=8) < 1e-10
    # Catches a sign error (warping along -flow) or comparing t+1 unwarped: both see the texture move.
    wrong = {**flow, "forward": -flow["forward"]}
    assert warp_error(frames, wrong) > 1e-3


def test_subpixel_shift_is_near_zero_and_jitter_is_far_larger():
    frames, flow = _smooth_clip((0.5, 0.25), 12), _shift_flow([(0.5, 0.25)] * 11)
    glued = warp_error(frames, flow)
    assert glued < 1e-4  # bilinear reading of a smooth texture: tiny, not 0
    rng = np.random.default_rng(3)
    jittered = np.clip(frames + rng.normal(0, 0.03, frames.shape).astype(np.float32), 0, 1)
    assert warp_error(jittered, flow) > 10 * glued
    # A per-frame shifted edit (content moves 1 px off the flow every other frame) too.
    wobble = np.stack([np.roll(f, t % 2, axis=1) for t, f in enumerate(frames)])
    assert warp_error(wobble, flow) > 10 * glued


def test_stride_8_composes_time_varying_flow():
    shifts = [(t % 3, 1 - t % 2) for t in range(10)]  # different every frame: all 8 steps must be used
    frames, flow = _integer_clip(shifts), _shift_flow(shifts)
    assert warp_error(frames, flow, stride=8) < 1e-10
    # Catches re-using flow t for every step (a stride-8 chain of shifts[t] * 8).
    reused = {**flow, "forward": np.repeat(flow["forward"][:1], 10, 0)}
    assert warp_error(frames, reused, stride=8) > 1e-3


def test_stride_8_equals_the_direct_8_pixel_flow():
    shifts = [(1, 0)] * 10
    rng = np.random.default_rng(5)
    frames = _integer_clip(shifts).astype(np.float32) / 255 + rng.normal(0, 0.02, (11, H, W, 3)).astype(
        np.float32
    )
    composed = warp_error(frames, _shift_flow(shifts), stride=8)  # pairs (0, 8), (1, 9), (2, 10)
    direct_flow = _shift_flow([(8, 0)])
    direct = np.mean([warp_error(frames[[t, t + 8]], direct_flow) for t in range(3)])
    assert composed > 1e-4 and composed == pytest.approx(direct, rel=1e-5)
    pos, valid = flow_chain(_shift_flow(shifts), range(3), 8)
    xs = np.arange(W)[None, None, :]
    assert (valid.numpy() == (xs < W - 8)).all()
    assert np.allclose(pos[..., 0].numpy()[valid], np.broadcast_to(xs + 8, valid.shape)[valid])


def test_flow_chain_reads_the_flow_where_the_pixel_is_now():
    # Spatially varying integer flow: rows move right by (row % 3) and down by 1 px per frame.
    t_count, h, w = 6, 20, 30
    ys, xs = np.mgrid[0:h, 0:w]
    f = np.stack([ys % 3, np.ones_like(ys)], -1).astype(np.float16)
    flow = {
        "forward": np.repeat(f[None], t_count - 1, 0),
        "forward_valid": np.ones((t_count - 1, h, w), bool),
    }
    pos, valid = flow_chain(flow, range(1), 4)
    px, py = xs.copy(), ys.copy()
    inside = np.ones((h, w), bool)
    for _ in range(4):  # reference: integer positions, read the flow at the current position
        inside &= (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
        cy = np.clip(py, 0, h - 1)  # the flow depends on the row only
        px, py = px + (cy % 3), py + 1
    inside &= (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    ok = inside
    assert (valid[0].numpy() == ok).all()
    assert np.allclose(pos[0, ..., 0].numpy()[ok], px[ok]) and np.allclose(pos[0, ..., 1].numpy()[ok], py[ok])


def test_untrusted_pixels_and_their_garbage_do_not_count():
    shifts = [(2, 0)] * 10
    frames, flow = _integer_clip(shifts), _shift_flow(shifts)
    clean1, clean8 = warp_error(frames, flow), warp_error(frames, flow, stride=8)
    dirty, dflow = frames.copy(), {k: v.copy() for k, v in flow.items()}
    rng = np.random.default_rng(1)
    # Frames 1.. get noise in rows 10-19, cols 20-39. Untrusted: those pixels and the ones landing
    # there from the frame before (cols 18-37), and their flow is garbage (NaN and huge vectors).
    dirty[1:, 10:20, 20:40] = rng.integers(0, 256, (10, 10, 20, 3), dtype=np.uint8)
    dflow["forward_valid"][:, 10:20, 18:40] = False
    dflow["forward"][:, 10:15, 18:40] = np.nan
    dflow["forward"][:, 15:20, 18:40] = 3000.0
    assert warp_error(dirty, dflow) == pytest.approx(clean1, abs=1e-12)
    assert warp_error(dirty, dflow, stride=8) == pytest.approx(clean8, abs=1e-12)
    # Catches ignoring forward_valid: the same frames with the clean check count the noise.
    assert warp_error(dirty, flow) > 1e-3


def test_rgba_is_compared_premultiplied():
    shifts = [(1, 1)] * 9
    rgb, flow = _integer_clip(shifts), _shift_flow(shifts)
    alpha = np.zeros((10, H, W), np.uint8)
    alpha[:, :, : W // 2] = 200  # the edit covers the left half (in frame coordinates: not glued)
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    hidden = rgba.copy()
    hidden[..., :3][alpha == 0] = np.random.default_rng(2).integers(0, 256, (int((alpha == 0).sum()), 3))
    e = warp_error(rgba, flow)
    assert e > 0 and warp_error(hidden, flow) == pytest.approx(e, rel=1e-6)  # colour under alpha 0: ignored
    assert warp_error(rgb, flow, premultiplied_alpha=alpha) == pytest.approx(e, rel=1e-6)
    # Catches comparing straight colour: the hidden noise would count.
    assert warp_error(hidden[..., :3], flow) > 2 * warp_error(rgb, flow)


@pytest.mark.parametrize(
    "frames, flow, match",
    [
        (np.zeros((5, H, W), np.uint8), _shift_flow([(1, 0)] * 4), r"frames has shape \[5, 48, 64\]"),
        (
            np.zeros((5, H, W, 2), np.uint8),
            _shift_flow([(1, 0)] * 4),
            r"\[5, 48, 64, 2\], expected \[T, H, W, 3\|4\]",
        ),
        (
            np.zeros((5, H, W, 3), np.uint8),
            _shift_flow([(1, 0)] * 3),
            r"flow\['forward'\] has shape \[3, 48, 64, 2\]",
        ),
        (np.zeros((5, H, W, 3), np.uint8), {"forward": 0}, r"flow needs keys"),
    ],
)
def test_bad_shapes_name_the_shape(frames, flow, match):
    with pytest.raises(ValueError, match=match):
        warp_error(frames, flow)


def test_known_value_every_pair_counts_equally():
    frames = np.zeros((3, H, W, 3), np.float32)
    frames[1], frames[2] = 0.1, 0.4  # pair (0, 1) differs by 0.1, pair (1, 2) by 0.3
    flow = _shift_flow([(0, 0)] * 2)
    flow["forward_valid"][1] = False
    flow["forward_valid"][1, :2, :5] = True  # pair (1, 2): only 10 trusted pixels
    # Lai: the mean of the per-pair MSEs, (0.01 + 0.09) / 2; pooling all pixels would give ~0.01.
    assert warp_error(frames, flow) == pytest.approx(0.05, rel=1e-5)


def test_too_short_clip_and_bad_stride():
    frames, flow = _integer_clip([(1, 0)] * 3), _shift_flow([(1, 0)] * 3)
    assert math.isnan(warp_error(frames, flow, stride=8))
    with pytest.raises(ValueError, match="stride"):
        warp_error(frames, flow, stride=0)


# ---- the report ----------------------------------------------------------------------------------------


def _glued_edit(offs, h=H, w=W):
    """Edit layer RGBA [T, H, W, 4] of a square painted on the moving content (glued), and its alpha."""
    layer = np.zeros((len(offs), h, w, 4), np.uint8)
    for t, (ox, oy) in enumerate(offs):
        layer[t, 10 + oy : 26 + oy, 10 + ox : 30 + ox] = (250, 40, 30, 255)
    return layer


def _report_clip(t_count=12, jitter=False):
    shifts = [(1, 1)] * (t_count - 1)
    source, flow = _integer_clip(shifts), _shift_flow(shifts)
    offs = [(t, t) for t in range(t_count)]
    if jitter:
        offs = [(t + (t % 2) * 2, t) for t in range(t_count)]  # the edit slips 2 px every other frame
    layer = _glued_edit(offs)
    a = layer[..., 3:] / 255.0
    video = (a * layer[..., :3] + (1 - a) * source).round().astype(np.uint8)
    return source, video, layer, flow


def test_report_glued_edit_adds_nothing_and_jitter_shows():
    source, video, layer, flow = _report_clip()
    r = consistency_report(source, video, layer, flow, None, None, "bg")
    json.dumps(r, allow_nan=False)  # JSON-ready
    s1, s8 = r["warp"]["stride_1"], r["warp"]["stride_8"]
    for s in (s1, s8):
        assert s["layer"] < 1e-3 and s["layer_in_edit"] < 1e-3 and s["video"] < 1e-3 and s["source"] < 1e-3
    assert s1["pairs"] == 11 and s8["pairs"] == 4 and 0 < s8["valid_share"] < s1["valid_share"] < 1
    assert r["preservation"]["exact"] and r["preservation"]["psnr_db"] is None
    assert r["leakage"]["share"] is None

    js, jv, jl, jf = _report_clip(jitter=True)
    jr = consistency_report(js, jv, jl, jf, None, None, "bg")["warp"]["stride_1"]
    assert jr["layer"] > 1.0 and jr["video"] > 1.0 and jr["source"] < 1e-3
    assert jr["layer_in_edit"] > 2 * jr["layer"]  # restricted to the edit, the same slip reads larger
    lines = format_report(consistency_report(js, jv, jl, jf, None, None, "bg"))
    assert any("stride 1" in line for line in lines) and all(isinstance(x, str) for x in lines)


def test_layer_in_edit_counts_where_the_edit_is_in_either_frame():
    source, flow = _integer_clip([(0, 0)]), _shift_flow([(0, 0)])
    layer = np.zeros((2, H, W, 4), np.uint8)
    layer[1, 10:20, 10:30] = 255  # the edit pops in on frame 1
    r = consistency_report(source, source, layer, flow, None, None, "bg")["warp"]["stride_1"]
    assert r["edit_pixels"] == 200 and r["layer_in_edit"] == pytest.approx(255 * math.sqrt(4 / 4), rel=1e-3)


def test_report_short_clip_skips_stride_8():
    source, video, layer, flow = _report_clip(t_count=8)
    r = consistency_report(source, video, layer, flow, None, None, "bg")
    assert r["warp"]["stride_8"] is None and r["warp"]["stride_1"] is not None
    assert any("stride 8: n/a" in line for line in format_report(r))


def test_leakage_known_values():
    source, video, layer, flow = _report_clip(t_count=3)
    fg = np.zeros((3, H, W), np.float32)
    fg[:, :, : W // 2] = 1.0  # left half is foreground
    edit = np.zeros((3, H, W), np.float32)
    edit[:, 0:8, 24:40] = 1.0  # 8 of its 16 columns are outside the fg
    edit[:, 20:24, 0:4] = 0.5  # fully inside, half alpha
    # per frame, alpha inside: 8*8 + 4*4*0.5 = 72, outside: 8*8 = 64 -> fg leakage 64/136, bg 72/136
    r_fg = consistency_report(source, video, layer, flow, fg, edit, "fg")
    r_bg = consistency_report(source, video, layer, flow, fg, edit, "bg")
    assert r_fg["leakage"]["share"] == pytest.approx(64 / 136, abs=1e-6)
    assert r_bg["leakage"]["share"] == pytest.approx(72 / 136, abs=1e-6)
    assert r_fg["leakage"]["edit_alpha_sum"] == pytest.approx(3 * 136)
    assert (
        consistency_report(source, video, layer, flow, fg, np.zeros_like(edit), "fg")["leakage"]["share"]
        is None
    )


def test_preservation_psnr_known_value():
    source, video, layer, flow = _report_clip(t_count=3)
    source = np.clip(source, 0, 251)  # so that +4 never clips: the error is exactly 4 levels
    untouched = layer[..., 3] == 0
    video = np.where(untouched[..., None], source + 4, 0)  # under the edit: anything, not counted
    p = consistency_report(source, video.astype(np.uint8), layer, flow, None, None, "bg")["preservation"]
    assert p["psnr_db"] == pytest.approx(10 * math.log10(255**2 / 16), abs=1e-3) and not p["exact"]
    assert p["max_abs_diff"] == 4 and p["pixels"] == int(untouched.sum())
    full = layer.copy()
    full[..., 3] = 1  # alpha 1/255 everywhere: no pixel is "outside the edit"
    p = consistency_report(source, video.astype(np.uint8), full, flow, None, None, "bg")["preservation"]
    assert p["pixels"] == 0 and p["psnr_db"] is None


def test_report_bad_shapes():
    source, video, layer, flow = _report_clip(t_count=3)
    with pytest.raises(ValueError, match=r"layer has shape \[3, 48, 64, 3\]"):
        consistency_report(source, video, layer[..., :3], flow, None, None, "bg")
    with pytest.raises(ValueError, match=r"video has shape \[2, 48, 64, 3\]"):
        consistency_report(source, video[:2], layer, flow, None, None, "bg")
    with pytest.raises(ValueError, match=r"fg_alpha has shape \[3, 48\]"):
        consistency_report(source, video, layer, flow, np.zeros((3, H)), None, "fg")
    with pytest.raises(ValueError, match="layer_name"):
        consistency_report(source, video, layer, flow, None, None, "mid")


def test_report_on_an_atlas_render_with_real_flow():
    """End to end: an edit rendered through a (panning, one-layer) atlas, flow from DIS as t2l atlas has it."""
    from fractions import Fraction

    from t2l.atlas.flow import compute_flows
    from t2l.atlas.folder import AtlasData, AtlasLayer
    from t2l.atlas.render import render_edit
    from t2l.video_read import VideoInfo

    t_count, h, w, pan = 12, 64, 96, (2, 1)
    rng = np.random.default_rng(7)
    tex = (noise_texture(h + 40, w + 40, rng) * 255).round().astype(np.uint8)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    # The camera pans: frame t shows texture pixels [t*pan ...], so the content moves by -pan.
    uv = np.stack([np.stack([xs + pan[0] * t, ys + pan[1] * t], -1) for t in range(t_count)])
    frames = np.stack([tex[pan[1] * t : pan[1] * t + h, pan[0] * t : pan[0] * t + w] for t in range(t_count)])
    edit = np.zeros((h + 40, w + 40, 4), np.uint8)
    edit[20:50, 30:80] = np.concatenate([rng.integers(0, 256, (30, 50, 3)), np.full((30, 50, 1), 255)], -1)
    info = VideoInfo("synthetic", w, h, Fraction(10), 0, tuple(range(t_count)), True, tuple(range(t_count)))

    def render(layer_uv):
        atlas = np.concatenate([tex, np.full((h + 40, w + 40, 1), 255, np.uint8)], -1)
        lay = AtlasLayer("bg", layer_uv.astype(np.float32), atlas, (1, 0, 1, 0))
        data = AtlasData(frames, info, [lay], None, frames, [40.0] * t_count)
        return render_edit(data, {"bg": edit})

    flow = compute_flows(frames)
    video, layer = render(uv)
    size = (h + 40, w + 40)
    glued = consistency_report(
        frames, video, layer, flow, None, layer[..., 3] / 255, "bg", uv_px=uv, atlas_size=size
    )
    jitter = rng.integers(-2, 3, (t_count, 1, 1, 2)).astype(np.float32)  # the edit slides per frame
    jv, jl = render(uv + jitter)
    slid = consistency_report(frames, jv, jl, flow, None, jl[..., 3] / 255, "bg", uv_px=uv, atlas_size=size)
    assert glued["atlas_spread"]["rms"] < 0.01 * slid["atlas_spread"]["rms"]
    for k in ("stride_1", "stride_8"):
        g, s_ = glued["warp"][k], slid["warp"][k]
        assert g["layer_in_edit"] < 0.1 * s_["layer_in_edit"], k
        assert g["video"] - g["source"] < 0.1 * (s_["video"] - s_["source"]), k
    assert glued["preservation"]["exact"] and slid["preservation"]["exact"]


# ---- atlas spread --------------------------------------------------------------------------------------


def test_atlas_spread_glued_is_zero_and_jitter_is_not():
    rng = np.random.default_rng(4)
    atlas = rng.random((40, 60, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:16, 0:20].astype(np.float32)
    uv = np.stack([np.stack([xs + 0.5 + 2 * t, ys + 0.5 + t], -1) for t in range(6)])  # texel centres
    vals = atlas[uv[..., 1].astype(int), uv[..., 0].astype(int)]
    s = atlas_spread(uv, vals, (40, 60))
    assert s["spread"] < 1e-12 and s["texels"] > 0
    noisy = vals + rng.normal(0, 0.1, vals.shape).astype(np.float32)
    assert atlas_spread(uv, noisy, (40, 60))["spread"] > 1e-3


def test_atlas_spread_known_value_and_weights():
    uv = np.full((2, 1, 1, 2), 3.5, np.float32)  # two frames, one pixel each, same texel
    vals = np.array([0.0, 1.0], np.float32).reshape(2, 1, 1, 1)
    assert atlas_spread(uv, vals, (8, 8))["spread"] == pytest.approx(0.25)
    w = np.array([3.0, 1.0]).reshape(2, 1, 1)  # weighted mean 0.25: (3*0.0625 + 0.5625)/4
    assert atlas_spread(uv, vals, (8, 8), w)["spread"] == pytest.approx(0.1875)
    assert math.isnan(atlas_spread(uv, vals, (8, 8), np.array([1.0, 0.0]).reshape(2, 1, 1))["spread"])


def test_report_atlas_spread():
    source, video, layer, flow = _report_clip(t_count=6)
    edit = layer[..., 3] / 255.0
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    uv = np.stack([np.stack([xs + 0.5 - t, ys + 0.5 - t], -1) for t in range(6)])  # content moves +1, +1
    r = consistency_report(source, video, layer, flow, None, edit, "bg", uv_px=uv, atlas_size=(H, W))
    assert r["atlas_spread"]["rms"] < 1e-3 and r["atlas_spread"]["texels"] > 0
    _, jv, jl, _ = _report_clip(t_count=6, jitter=True)
    jr = consistency_report(source, jv, jl, flow, None, jl[..., 3] / 255.0, "bg", uv_px=uv, atlas_size=(H, W))
    assert jr["atlas_spread"]["rms"] > 10
