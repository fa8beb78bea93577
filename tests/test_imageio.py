"""Reading inputs (conversions, EXIF, errors) and writing rounded 8-bit PNGs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from t2l.errors import InputError
from t2l.imageio import composite_uint8, read_image, resize_short, save_png, to_uint8


def _rgb(h=20, w=30, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def test_rgb_png_roundtrip_without_notes(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "x.png")
    im, notes = read_image(tmp_path / "x.png")
    assert im.mode == "RGB" and notes == []
    assert np.array_equal(np.asarray(im), a)


@pytest.mark.parametrize(
    ("mode", "word"), [("L", "greyscale"), ("RGBA", "alpha"), ("CMYK", "CMYK"), ("I;16", "16-bit")]
)
def test_conversions_are_noted(tmp_path, mode, word):
    a = _rgb()
    if mode == "I;16":
        im = Image.fromarray(a[..., 0].astype(np.uint16) * 257)
        path = tmp_path / "x.png"
    elif mode == "CMYK":
        im = Image.fromarray(a).convert("CMYK")
        path = tmp_path / "x.jpg"
    else:
        im = Image.fromarray(a).convert(mode)
        path = tmp_path / "x.png"
    im.save(path)
    before = path.read_bytes()
    out, notes = read_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert len(notes) == 1 and word in notes[0]
    assert path.read_bytes() == before  # inputs are never modified
    if mode == "I;16":  # 16-bit scaled down, not clipped
        assert np.array_equal(np.asarray(out)[..., 0], a[..., 0])


def test_transparent_pixels_flatten_onto_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    out, _ = read_image(tmp_path / "t.png")
    assert (np.asarray(out) == 255).all()


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.fromarray(_rgb(seed=s)).convert("P") for s in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    out, notes = read_image(tmp_path / "a.gif")
    assert "animated" in notes[0] and "3 frames" in notes[0]
    assert out.size == (30, 20)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(_rgb(20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "o.jpg", exif=exif)
    out, _ = read_image(tmp_path / "o.jpg")
    assert out.size == (20, 30)


@pytest.mark.parametrize("case", ["missing", "folder", "text", "truncated"])
def test_bad_inputs_raise_one_line_input_errors(tmp_path, case):
    p = tmp_path / "bad.png"
    if case == "folder":
        p.mkdir()
    elif case == "text":
        p.write_text("not an image")
    elif case == "truncated":
        Image.fromarray(_rgb(64, 64)).save(p)
        p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError) as e:
        read_image(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_to_uint8_rounds_instead_of_truncating():
    x = torch.tensor([0.0, 0.999, 254.6 / 255, 1.0, 1.2]).view(1, 5, 1)  # C=1, H=5, W=1
    assert to_uint8(x)[:, 0, 0].tolist() == [0, 255, 255, 255, 255]
    assert to_uint8(torch.tensor([100.4 / 255]).view(1, 1, 1))[0, 0, 0] == 100


def test_composite_uint8_identity_where_alpha_zero_and_exact_where_one():
    bg = _rgb(5, 5, 1)
    edit = np.concatenate([_rgb(5, 5, 2), np.zeros((5, 5, 1), np.uint8)], -1)
    edit[2:, :, 3] = 255
    edit[0, 0, 3] = 128
    c = composite_uint8(edit, bg)
    assert np.array_equal(c[1], bg[1]) and np.array_equal(c[2:], edit[2:, :, :3])
    want = np.round((128 * edit[0, 0, :3].astype(float) + 127 * bg[0, 0].astype(float)) / 255)
    assert np.abs(c[0, 0].astype(float) - want).max() <= 1


def test_save_png_modes_and_resize_short(tmp_path):
    assert Image.open(save_png(np.zeros((4, 6, 4), np.uint8), tmp_path / "a.png")).mode == "RGBA"
    assert Image.open(save_png(np.zeros((4, 6), np.uint8), tmp_path / "b.png")).mode == "L"
    assert resize_short(Image.new("RGB", (300, 200)), 100).size == (150, 100)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_files_are_closed_after_a_failed_load_and_an_animated_read(tmp_path):
    """`t2l image shots/*` over many broken or animated files closes each file itself, not through the
    garbage collector (Pillow keeps the file of a failed load and of a multi-frame image open: a
    ResourceWarning when collected, and open until then while a traceback holds it)."""

    def open_files() -> set[str]:
        out = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return out

    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    broken = tmp_path / "trunc.png"
    broken.write_bytes(good.read_bytes()[:60])
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    import gc
    import warnings

    gc.collect()  # other tests' leftovers warn now, not in the block below
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(InputError):
            read_image(broken)
        image, _ = read_image(gif)
        assert not {str(broken), str(gif)} & open_files()
        gc.collect()
    assert image.size == (20, 20)
    ours = [w for w in seen if issubclass(w.category, ResourceWarning) and tmp_path.name in str(w.message)]
    assert not ours  # closed by us, not by the garbage collector
