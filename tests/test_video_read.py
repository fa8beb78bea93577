"""Video decoding (rotation, VFR, folders, ranges, errors) and the MP4 round trip, on clips written here."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from t2l import video_read
from t2l.errors import InputError, UsageError
from t2l.video_read import read_video
from t2l.video_write import write_mp4


def _marked_frames(t: int, h: int, w: int) -> np.ndarray:
    """Grey frames with a white block in the top-left corner and a brightness ramp over time."""
    frames = np.full((t, h, w, 3), 60, np.uint8)
    frames[:, : h // 4, : w // 4] = 255
    frames[..., 1] += np.arange(t, dtype=np.uint8)[:, None, None] * 10
    return frames


def _write_raw(path, frames, rate=Fraction(10), rotation=None, pts_ms=None):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        if pts_ms is not None:
            s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_is_applied(tmp_path, rotation):
    frames = _marked_frames(3, 32, 64)
    path = tmp_path / "rot.mp4"
    _write_raw(path, frames, rotation=rotation)
    out, info = read_video(path)
    expected = np.rot90(frames[0], k=rotation // 90)  # counter-clockwise, as FFmpeg reports it
    assert info.rotation == rotation % 360
    assert out.shape[1:3] == expected.shape[:2]
    assert (info.width, info.height) == (expected.shape[1], expected.shape[0])
    bright = out[0, ..., 0] > 200
    assert np.mean(bright == (expected[..., 0] > 200)) > 0.97


def test_variable_frame_rate_timestamps(tmp_path):
    pts = [0, 100, 150, 400, 450, 700]
    path = tmp_path / "vfr.mp4"
    _write_raw(path, _marked_frames(len(pts), 32, 48), pts_ms=pts)
    frames, info = read_video(path)
    assert len(frames) == len(pts)
    np.testing.assert_allclose(info.timestamps, np.array(pts) / 1000, atol=2e-3)


def test_odd_size_mp4_round_trip(tmp_path):
    frames = _marked_frames(5, 33, 47)
    path = tmp_path / "odd.mp4"
    write_mp4(path, iter(frames), Fraction(30000, 1001), crf=12)
    back, info = read_video(path)
    assert back.shape == (5, 34, 48, 3)  # padded by one edge pixel to even sides
    assert info.fps == Fraction(30000, 1001)
    assert np.abs(back[:, :33, :47].astype(int) - frames).mean() < 3
    assert info.frame_indices == (0, 1, 2, 3, 4)
    head = path.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")  # +faststart: playable while downloading
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left behind


def test_range_stride_and_resize(tmp_path):
    frames = _marked_frames(10, 40, 80)
    path = tmp_path / "c.mp4"
    write_mp4(path, frames, Fraction(10))
    out, info = read_video(path, start=2, max_frames=3, stride=3, long_side=40)
    assert out.shape == (3, 20, 40, 3)
    assert info.frame_indices == (2, 5, 8)
    assert (info.width, info.height) == (80, 40)  # the source size, before the resize
    np.testing.assert_allclose(info.timestamps, [0.2, 0.5, 0.8], atol=1e-6)
    assert abs(int(out[1, 15, 30, 1]) - (60 + 50)) <= 4  # frame 5's green ramp
    with pytest.raises(InputError, match="no frames from frame 50"):
        read_video(path, start=50)
    with pytest.raises(UsageError):
        read_video(path, stride=0)


def test_folder_of_frames_natural_order(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for n in (1, 2, 10):
        Image.fromarray(np.full((12, 20, 3), n * 20, np.uint8)).save(d / f"f{n}.png")
    (d / "notes.txt").write_text("ignored")
    frames, info = read_video(d)
    assert info.is_folder and frames.shape == (3, 12, 20, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [20, 40, 200]
    assert info.fps == video_read.FOLDER_FPS
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(d / "f11.png")
    with pytest.raises(InputError, match="f11.png is 20x10"):
        read_video(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        read_video(empty)


def test_bad_inputs(tmp_path):
    import av

    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="junk.mp4"):
        read_video(junk)
    wav = tmp_path / "sound.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate = 8000
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(InputError, match="no video stream"):
        read_video(wav)


def test_resolution_change_mid_stream_is_one_line_error(tmp_path):
    """Two MPEG-TS segments of different sizes, concatenated: a stream whose resolution changes."""
    import av

    parts = []
    for i, (h, w) in enumerate([(16, 16), (24, 32)]):
        seg = tmp_path / f"part{i}.ts"
        with av.open(str(seg), "w", format="mpegts") as c:
            s = c.add_stream("libx264", rate=Fraction(10))
            s.height, s.width, s.pix_fmt = h, w, "yuv420p"
            for f in _marked_frames(3, h, w):
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        parts.append(seg.read_bytes())
    path = tmp_path / "joined.ts"
    path.write_bytes(b"".join(parts))
    with pytest.raises(InputError, match=r"frame 3 is 32x24 but earlier frames are 16x16"):
        read_video(path)
    assert len(read_video(path, max_frames=3)[0]) == 3
