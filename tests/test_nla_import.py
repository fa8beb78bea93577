"""NLA checkpoint import: a checkpoint of the documented shapes (random weights) and a few frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2l.atlas.folder import load_atlas
from t2l.atlas.nla import NLA_DEFAULTS, import_nla, infer_spec
from t2l.atlas.render import render_edit
from t2l.errors import InputError
from t2l.video_write import write_png_sequence

T, H, W = 3, 12, 16


def _reference(state, x, freqs, skips):
    """Straight numpy forward of one IMLP (frequency-major sin/cos encoding, ReLU, tanh)."""
    if freqs:
        b = np.array([2.0**k * np.pi for k in range(freqs)])
        enc = np.concatenate([np.concatenate([np.sin(x * bk), np.cos(x * bk)], 1) for bk in b], 1)
    else:
        enc = x
    h = enc
    n = len([k for k in state if k.endswith(".weight")])
    for i in range(n):
        if i > 0:
            h = np.maximum(h, 0)
        if i in skips:
            h = np.concatenate([h, enc], 1)
        h = h @ state[f"hidden.{i}.weight"].double().numpy().T + state[f"hidden.{i}.bias"].double().numpy()
    return np.tanh(h)


@pytest.fixture
def frames_dir(tmp_path):
    rng = np.random.default_rng(0)
    write_png_sequence(tmp_path / "frames", rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8))
    return tmp_path / "frames"


def test_import_matches_reference_and_round_trips(tmp_path, frames_dir, nla_checkpoint):
    ckpt = nla_checkpoint(tmp_path / "checkpoint")
    data = import_nla(tmp_path / "checkpoint", frames_dir, tmp_path / "nla.atlas", atlas_size=24)
    assert [lay.name for lay in data.layers] == ["bg", "fg"]
    assert data.meta["iteration"] == 1234 and data.meta["architecture"]["atlas"]["skips"] == [4, 7]
    assert (
        data.meta["architecture"]["alpha"]["freqs"] == 5
        and data.meta["architecture"]["fg_mapping"]["layers"] == 6
    )

    # pixel (x=5, y=7) of frame 2 against an independent forward pass
    t, y, x = 2, 7, 5
    xyt = np.array([[x / (W / 2) - 1, y / (W / 2) - 1, t / (T / 2) - 1]])
    uv_fg = _reference(ckpt["model_F_mapping1_state_dict"], xyt, 0, ())
    uv_bg = _reference(ckpt["model_F_mapping2_state_dict"], xyt, 0, ())
    a = 0.99 * (_reference(ckpt["model_F_alpha_state_dict"], xyt, 5, ()) + 1) / 2 + 0.001
    np.testing.assert_allclose(data.layer("fg").uv[t, y, x], uv_fg[0], atol=1e-5)
    np.testing.assert_allclose(data.layer("bg").uv[t, y, x], uv_bg[0], atol=1e-5)
    np.testing.assert_allclose(data.alpha[t, y, x], a[0, 0], atol=1e-5)
    atlas = ckpt["F_atlas_state_dict"]
    rgb = a * (_reference(atlas, uv_fg * 0.5 + 0.5, 10, (4, 7)) + 1) / 2
    rgb += (1 - a) * (_reference(atlas, uv_bg * 0.5 - 0.5, 10, (4, 7)) + 1) / 2
    assert np.abs(data.reconstruction[t, y, x].astype(float) - rgb[0] * 255).max() <= 0.51
    mse = np.mean((data.reconstruction.astype(float) - data.frames) ** 2, axis=(1, 2, 3)) / 255**2
    np.testing.assert_allclose(data.psnr, 10 * np.log10(1 / mse), atol=0.3)  # psnr uses unrounded colours
    assert "warning" in data.meta  # random weights cannot reconstruct the frames

    # fg texture pixel (i, j) is the atlas MLP at ((j+0.5)/n, (i+0.5)/n); coverage is max alpha landing there
    fg = data.layer("fg")
    np.testing.assert_allclose(
        fg.texture[3, 10, :3],
        (_reference(atlas, np.array([[10.5 / 24, 3.5 / 24]]), 10, (4, 7))[0] + 1) / 2 * 255,
        atol=0.51,
    )
    px = np.floor(fg.uv[..., 0] * fg.uv_to_px[0] + fg.uv_to_px[1]).astype(int)
    py = np.floor(fg.uv[..., 1] * fg.uv_to_px[2] + fg.uv_to_px[3]).astype(int)
    hit = (px == px[t, y, x]) & (py == py[t, y, x])
    assert fg.texture[py[t, y, x], px[t, y, x], 3] == round(data.alpha[hit].max() * 255)
    # bg atlas: every used bg uv lands inside the square atlas image
    bg = data.layer("bg")
    bx = bg.uv[..., 0] * bg.uv_to_px[0] + bg.uv_to_px[1]
    by = bg.uv[..., 1] * bg.uv_to_px[2] + bg.uv_to_px[3]
    assert bx.min() >= -1e-3 and by.min() >= -1e-3 and max(bx.max(), by.max()) <= 24 + 1e-3
    # bg texture pixel (row 5, column 12) is the atlas MLP at the bg sample (uv*0.5 - 0.5) of its centre
    sx, ox, sy, oy = bg.uv_to_px
    centre = np.array([[((12.5 - ox) / sx) * 0.5 - 0.5, ((5.5 - oy) / sy) * 0.5 - 0.5]])
    np.testing.assert_allclose(
        bg.texture[5, 12, :3], (_reference(atlas, centre, 10, (4, 7))[0] + 1) / 2 * 255, atol=0.51
    )

    back = load_atlas(tmp_path / "nla.atlas")
    np.testing.assert_array_equal(back.frames, data.frames)
    np.testing.assert_array_equal(back.layer("fg").uv, fg.uv)
    np.testing.assert_array_equal(back.reconstruction, data.reconstruction)
    assert back.meta["source"] == "nla" and back.model_state is None
    blank = {lay.name: np.zeros_like(lay.texture) for lay in back.layers}
    np.testing.assert_array_equal(render_edit(back, blank)[0], back.frames)


def test_default_width_is_the_documented_one(nla_mlp_state):
    state = nla_mlp_state(*NLA_DEFAULTS["atlas"], width=256)
    spec = infer_spec("atlas", state)
    assert (spec.width, spec.layers, spec.freqs, spec.skips) == (256, 8, 10, (4, 7))
    sizes = {
        name: sum(v.numel() for v in nla_mlp_state(*NLA_DEFAULTS[name], width=256).values())
        for name in NLA_DEFAULTS
    }
    assert sum(sizes.values()) == 1_217_152  # NLA's "1.22 M parameters"


def test_shape_mismatch_and_missing_keys(tmp_path, frames_dir, nla_checkpoint):
    ckpt = nla_checkpoint(tmp_path / "ckpt")
    ckpt["F_atlas_state_dict"]["hidden.7.weight"] = torch.zeros(3, 100)
    torch.save(ckpt, tmp_path / "bad")
    with pytest.raises(
        InputError, match=r"F_atlas_state_dict: hidden.7.weight is \[3, 100\], expected .*NLA layout"
    ):
        import_nla(tmp_path / "bad", frames_dir)
    del ckpt["model_F_alpha_state_dict"]
    torch.save(ckpt, tmp_path / "bad")
    with pytest.raises(InputError, match="lacks model_F_alpha_state_dict"):
        import_nla(tmp_path / "bad", frames_dir)
    with pytest.raises(InputError, match="not found"):
        import_nla(tmp_path / "nope", frames_dir)


def test_decoded_frames_with_their_info(tmp_path, frames_dir, nla_checkpoint):
    """The form `t2l atlas --from-nla` uses: frames already decoded (start/stride/size applied)."""
    from t2l.video_read import read_video

    nla_checkpoint(tmp_path / "checkpoint")
    frames, info = read_video(frames_dir)
    a = import_nla(tmp_path / "checkpoint", frames, info, atlas_size=16)
    b = import_nla(tmp_path / "checkpoint", frames_dir, atlas_size=16)
    np.testing.assert_array_equal(a.layer("fg").uv, b.layer("fg").uv)
    assert a.info == info and a.layer("bg").texture.shape == (16, 16, 4)


def test_size_decodes_frames_already_shrunk(tmp_path, monkeypatch, nla_checkpoint):
    """With `size`, frames are resized as they are decoded: memory follows `size`, not the source."""
    import t2l.video_read as video_read

    rng = np.random.default_rng(1)
    write_png_sequence(tmp_path / "big", rng.integers(0, 255, (T, 4 * H, 4 * W, 3), dtype=np.uint8))
    nla_checkpoint(tmp_path / "checkpoint")
    decoded = []
    real = video_read.read_video

    def spy(*args, **kwargs):
        frames, info = real(*args, **kwargs)
        decoded.append(frames.shape)
        return frames, info

    monkeypatch.setattr(video_read, "read_video", spy)
    data = import_nla(tmp_path / "checkpoint", tmp_path / "big", size=(W, H), atlas_size=16)
    assert decoded == [(T, H, W, 3)]  # never held at the source's 4x size
    assert data.frames.shape == (T, H, W, 3) and (data.info.width, data.info.height) == (4 * W, 4 * H)
