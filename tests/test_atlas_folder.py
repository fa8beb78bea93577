"""The atlas folder: save/load round trip, atlas.json index, and one-line errors for broken folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from t2l.atlas.folder import FORMAT_VERSION, load_atlas, save_atlas
from t2l.atlas.previews import write_previews
from t2l.errors import InputError
from t2l.video_read import read_video


@pytest.fixture
def saved(tmp_path, square_atlas):
    sq = square_atlas
    data = sq.build()
    rng = np.random.default_rng(0)
    data.flow = {
        "forward": rng.normal(size=(sq.T - 1, sq.H, sq.W, 2)).astype(np.float16),
        "backward": rng.normal(size=(sq.T - 1, sq.H, sq.W, 2)).astype(np.float16),
        "forward_valid": rng.random((sq.T - 1, sq.H, sq.W)) > 0.5,
        "backward_valid": rng.random((sq.T - 1, sq.H, sq.W)) > 0.5,
    }
    import torch

    data.model_state = {"state": {"w": torch.arange(6.0)}, "config": {"steps": 10}}
    folder = tmp_path / "clip.atlas"
    save_atlas(folder, data)
    assert write_previews(folder, data) == []
    return folder, data


def test_round_trip(saved, square_atlas):
    sq = square_atlas
    folder, data = saved
    back = load_atlas(folder)
    np.testing.assert_array_equal(back.frames, data.frames)
    assert [lay.name for lay in back.layers] == ["bg", "fg"]
    for a, b in zip(back.layers, data.layers, strict=True):
        np.testing.assert_array_equal(a.uv, b.uv)
        np.testing.assert_array_equal(a.texture, b.texture)
        assert a.uv_to_px == tuple(float(v) for v in b.uv_to_px)
    np.testing.assert_array_equal(back.alpha, data.alpha)
    np.testing.assert_array_equal(back.masks, data.masks)
    for k, v in data.flow.items():
        np.testing.assert_array_equal(back.flow[k], v)
        assert back.flow[k].dtype == v.dtype
    assert back.model_state["config"] == {"steps": 10} and back.model_state["state"]["w"].tolist() == list(
        range(6)
    )
    assert back.psnr == data.psnr and back.meta == data.meta
    assert back.info == data.info
    np.testing.assert_array_equal(back.reconstruction, data.reconstruction)
    light = load_atlas(folder, with_frames=False)
    assert light.frames.shape == (0, sq.H, sq.W, 3) and light.layers[1].uv.shape == (sq.T, sq.H, sq.W, 2)


def test_folder_layout_and_index(saved, square_atlas):
    sq = square_atlas
    folder, _ = saved
    index = json.loads((folder / "atlas.json").read_text())
    assert index["format_version"] == FORMAT_VERSION
    assert (index["frames"], index["width"], index["height"], index["fps"]) == (sq.T, sq.W, sq.H, "10/1")
    assert [lay["texture"] for lay in index["layers"]] == ["layers/bg/atlas.png", "layers/fg/atlas.png"]
    assert index["layers"][1]["texture_width"] == 16
    for rel in (
        "frames/00003.png",
        "alpha/00003.png",
        "masks/00000.png",
        "reconstruction/00003.png",
        "alpha.npy",
        "flow.npz",
        "model.pt",
        "metrics.json",
    ):
        assert (folder / rel).is_file(), rel
    assert json.loads((folder / "metrics.json").read_text())["psnr_mean"] == pytest.approx(41.5)
    for name in ("reconstruction.mp4", "checkerboard.mp4"):
        frames, info = read_video(folder / name)
        assert frames.shape == (sq.T, sq.H, sq.W, 3) and info.fps == 10
    assert not list(folder.rglob(".*tmp*"))


def test_single_layer_rewrite_removes_stale_files(saved):
    folder, data = saved
    data.layers, data.alpha, data.masks, data.flow, data.model_state = data.layers[:1], None, None, None, None
    data.frames, data.reconstruction = data.frames[:2], data.reconstruction[:2]
    data.layers[0].uv = data.layers[0].uv[:2]
    data.psnr = data.psnr[:2]
    save_atlas(folder, data)
    back = load_atlas(folder)
    assert [lay.name for lay in back.layers] == ["bg"] and back.alpha is None and back.flow is None
    assert not (folder / "layers" / "fg").exists() and not (folder / "alpha.npy").exists()
    assert sorted(p.name for p in (folder / "frames").iterdir()) == ["00000.png", "00001.png"]


def test_errors_name_the_file_and_the_fix(saved, tmp_path, square_atlas):
    sq = square_atlas
    folder, _ = saved
    with pytest.raises(InputError, match=r"not an atlas folder.*t2l atlas"):
        load_atlas(tmp_path)
    (folder / "layers" / "fg" / "uv.npy").rename(folder / "uv.bak")
    with pytest.raises(InputError, match=r"missing: .*layers/fg/uv.npy; re-run: t2l atlas"):
        load_atlas(folder)
    np.save(folder / "layers" / "fg" / "uv.npy", np.zeros((sq.T, sq.H, sq.W - 1, 2), np.float32))
    with pytest.raises(InputError, match=r"uv.npy has shape \[4, 48, 63, 2\], expected \[4, 48, 64, 2\]"):
        load_atlas(folder)
    (folder / "uv.bak").rename(folder / "layers" / "fg" / "uv.npy")
    (folder / "frames" / "00002.png").unlink()
    with pytest.raises(InputError, match="00002.png"):
        load_atlas(folder)
    load_atlas(folder, with_frames=False)
    index = json.loads((folder / "atlas.json").read_text())
    index["format_version"] = 99
    (folder / "atlas.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="format_version 99"):
        load_atlas(folder)


def test_save_rejects_inconsistent_data(tmp_path, square_atlas):
    sq = square_atlas
    data = sq.build()
    data.alpha = data.alpha[:, :10]
    with pytest.raises(InputError, match="alpha is"):
        save_atlas(tmp_path / "x", data)


def test_model_state_loads_arrays_but_never_arbitrary_pickles(saved, tmp_path, square_atlas):
    """model.pt of a fit (tensors, plain values, numpy packed masks) loads; a foreign pickle is refused."""
    sq = square_atlas
    import torch

    folder, _ = saved
    state = {
        "model": {"w": torch.ones(2)},
        "run": {"size": 64},
        "masks": np.packbits(np.ones((sq.T, sq.H, sq.W), bool)),
    }
    torch.save(state, folder / "model.pt")
    back = load_atlas(folder, with_frames=False)
    np.testing.assert_array_equal(back.model_state["masks"], state["masks"])

    marker = tmp_path / "executed"

    class Payload:  # unpickling it would create `marker`
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"x": Payload()}, folder / "model.pt")
    with pytest.raises(InputError, match=r"model\.pt holds objects other than"):
        load_atlas(folder, with_frames=False)
    assert not marker.exists()


def test_stride_divides_the_rate_of_every_written_video(tmp_path, square_atlas):
    """Frames taken every 3rd source frame of a 30 fps clip play at 10 fps (same duration as the source)."""
    sq = square_atlas
    from dataclasses import replace
    from fractions import Fraction

    data = sq.build()
    data.info = replace(data.info, fps=Fraction(30), frame_indices=tuple(range(1, 1 + 3 * sq.T, 3)))
    save_atlas(tmp_path / "a", data)
    write_previews(tmp_path / "a", data)
    assert json.loads((tmp_path / "a" / "atlas.json").read_text())["fps"] == "10/1"
    for name in ("reconstruction.mp4", "checkerboard.mp4"):
        assert read_video(tmp_path / "a" / name)[1].fps == 10


def test_a_failing_encoder_costs_the_previews_not_the_atlas(tmp_path, monkeypatch, square_atlas):
    """save_atlas writes data only; previews come after, and their failure is a note, not a lost folder."""
    sq = square_atlas
    from t2l.atlas import previews
    from t2l.errors import InputError

    data = sq.build()
    folder = tmp_path / "a"
    (folder).mkdir()
    (folder / "checkerboard.mp4").write_bytes(b"stale preview of an earlier fit")
    save_atlas(folder, data)
    assert not (folder / "reconstruction.mp4").exists() and not (folder / "checkerboard.mp4").exists()
    index = json.loads((folder / "atlas.json").read_text())
    assert "checkerboard" not in index["files"] and "reconstruction_mp4" not in index["files"]

    def broken(path, frames, fps, *a, **k):
        raise InputError("no H.264 encoder in this PyAV build")

    monkeypatch.setattr(previews, "write_mp4", broken)
    notes = write_previews(folder, data)
    assert len(notes) == 2 and all("H.264" in n and "atlas itself is complete" in n for n in notes)
    back = load_atlas(folder)  # still a complete, loadable atlas
    np.testing.assert_array_equal(back.layers[1].uv, data.layers[1].uv)
    monkeypatch.undo()
    assert write_previews(folder, data) == []
    files = json.loads((folder / "atlas.json").read_text())["files"]
    assert files["checkerboard"] == "checkerboard.mp4" and files["reconstruction_mp4"] == "reconstruction.mp4"


def test_the_folder_module_imports_neither_the_renderer_nor_an_encoder():
    """folder.py is the format; rendering and previews build on it (no cycle, even inside functions)."""
    import ast

    import t2l.atlas.folder as folder

    with open(folder.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"t2l.atlas.render", "t2l.atlas.previews", "t2l.video_write"}
