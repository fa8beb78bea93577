"""Alpha video and PNG-sequence encoders, encoder availability and atomic writes, on clips written here."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from t2l import video_write
from t2l.errors import InputError, UsageError
from t2l.video_read import read_rgba_video, read_video
from t2l.video_write import (
    available_encoders,
    require_encoder,
    write_alpha_video,
    write_mp4,
    write_png_sequence,
)


def _rgba_frames(t=4, h=30, w=42):
    rng = np.random.default_rng(1)
    f = np.zeros((t, h, w, 4), np.uint8)
    f[..., :3] = rng.integers(0, 255, (1, h, w, 3))
    f[..., 3] = np.linspace(0, 255, w).astype(np.uint8)[None, None, :]
    f[:, : h // 2, : w // 2, 3] = 0
    return f


@pytest.mark.parametrize("kind,suffix,tol", [("prores", ".mov", 2), ("webm", ".webm", 4)])
def test_alpha_videos_keep_alpha(tmp_path, kind, suffix, tol):
    frames = _rgba_frames()
    path = tmp_path / f"a{suffix}"
    write_alpha_video(path, frames, Fraction(12), kind)
    back, fps = read_rgba_video(path)
    assert back.shape == frames.shape and fps == 12
    assert np.abs(back[..., 3].astype(int) - frames[..., 3]).max() <= tol
    rgb, info = read_video(path)  # the plain reader opens them too
    assert rgb.shape == (4, 30, 42, 3) and info.fps == 12


def test_png_sequence_straight_alpha(tmp_path):
    frames = _rgba_frames(t=3)
    paths = write_png_sequence(tmp_path / "seq", frames)
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    back = np.stack([np.asarray(Image.open(p)) for p in paths])
    np.testing.assert_array_equal(back, frames)  # colour kept under alpha 0: straight, not premultiplied
    rgb, _ = read_video(tmp_path / "seq")
    assert rgb.shape == (3, 30, 42, 3)


def test_missing_encoder_names_alternative(monkeypatch):
    assert available_encoders() == {"mp4": True, "prores": True, "webm": True, "png": True}
    monkeypatch.setattr(
        video_write, "available_encoders", lambda: {"mp4": True, "prores": False, "webm": True, "png": True}
    )
    with pytest.raises(InputError, match=r"no prores_ks encoder.*--format png"):
        require_encoder("prores")
    with pytest.raises(UsageError, match="unknown video format"):
        require_encoder("gif")


def test_writer_leaves_nothing_on_error(tmp_path):
    from t2l.video_write import VideoWriter

    path = tmp_path / "x.mp4"
    with pytest.raises(UsageError, match="frame 1 is 20x10"):
        with VideoWriter(path, Fraction(24), "mp4") as w:
            w.write(np.zeros((16, 16, 3), np.uint8))
            w.write(np.zeros((10, 20, 3), np.uint8))
    with pytest.raises(UsageError, match="no frames"):
        write_mp4(path, [], Fraction(24))
    with pytest.raises(UsageError, match=r"uint8 \[H, W, 4\]"):
        write_alpha_video(path.with_suffix(".mov"), [np.zeros((8, 8, 3), np.uint8)], Fraction(24), "prores")
    assert list(tmp_path.iterdir()) == []


def test_writer_cleans_up_when_closing_fails(tmp_path):
    """A failure while writing the trailer (e.g. disk full) still removes the temporary file."""
    from t2l.video_write import VideoWriter

    class FailingClose:  # the real container, whose close() then reports a full disk
        def __init__(self, container):
            self._c = container

        def __getattr__(self, name):
            return getattr(self._c, name)

        def close(self):
            self._c.close()
            raise OSError(28, "No space left on device")

    path = tmp_path / "x.mp4"
    with pytest.raises(OSError, match="No space left"):
        with VideoWriter(path, Fraction(24), "mp4") as w:
            w.write(np.zeros((16, 16, 3), np.uint8))
            w._container = FailingClose(w._container)
    assert list(tmp_path.iterdir()) == []
