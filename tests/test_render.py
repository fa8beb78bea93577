"""Rendering atlas edits (NLA Eq. 15/16) on a hand-built atlas of a square moving over a static background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2l.atlas.render import checkerboard_edit, render_edit, source_frames
from t2l.errors import InputError


def test_blank_edit_reproduces_frames_exactly(square_atlas):
    sq = square_atlas
    data = sq.build()
    blank = {lay.name: np.zeros((*lay.texture.shape[:2], 4), np.uint8) for lay in data.layers}
    blank["fg"][..., :3] = 255  # colour under zero alpha
    out, layer = render_edit(data, blank)
    np.testing.assert_array_equal(out, data.frames)
    assert layer.shape == (sq.T, sq.H, sq.W, 4) and not layer[..., 3].any()
    out, _ = render_edit(data, {})
    np.testing.assert_array_equal(out, data.frames)


def test_painted_edit_moves_with_the_object(square_atlas):
    sq = square_atlas
    data = sq.build()
    out, layer = render_edit(data, {"fg": sq.fg_patch_edit()})
    for t in range(sq.T):
        x, y = sq.position(t)
        ys, xs = slice(y + 4 - sq.PAD, y + 8 - sq.PAD), slice(x + 4 - sq.PAD, x + 8 - sq.PAD)
        assert (out[t, ys, xs] == sq.RED).all(), t
        assert (layer[t, ys, xs] == (*sq.RED, 255)).all()
        # everything else is the original frame, bit for bit (edge pixels of the patch blend)
        keep = np.ones((sq.H, sq.W), bool)
        keep[ys.start - 1 : ys.stop + 1, xs.start - 1 : xs.stop + 1] = False
        np.testing.assert_array_equal(out[t][keep], data.frames[t][keep])
        assert not layer[t][keep][:, 3].any()


def test_bg_edit_is_hidden_behind_the_foreground(square_atlas):
    sq = square_atlas
    data = sq.build()
    edit = np.zeros((sq.H, sq.W, 4), np.uint8)
    edit[..., :3], edit[..., 3] = (0, 0, 255), 128  # half-transparent blue over the whole bg atlas
    out, layer = render_edit(data, {"bg": edit})
    x, y = sq.position(2)
    np.testing.assert_array_equal(
        out[2, y : y + sq.SQ, x : x + sq.SQ], data.frames[2, y : y + sq.SQ, x : x + sq.SQ]
    )
    expect = np.round(
        0.5019608 * np.array([0, 0, 255]) + (1 - 0.5019608) * data.frames[2, 0, 0].astype(float)
    )
    np.testing.assert_allclose(out[2, 0, 0], expect, atol=1)
    assert layer[2, 0, 0, 3] == 128 and layer[2, y + 1, x + 1, 3] == 0


def test_source_resolution_from_frame_folder(tmp_path, square_atlas):
    sq = square_atlas
    src = tmp_path / "src"
    src.mkdir()
    data = sq.build(scale=2, source_path=str(src))
    for t, f in enumerate(data.frames):
        Image.fromarray(f).resize((sq.W * 2, sq.H * 2), Image.NEAREST).save(src / f"{t:03d}.png")
    big = np.stack(list(source_frames(data)))
    assert big.shape == (sq.T, sq.H * 2, sq.W * 2, 3)
    out, _ = render_edit(data, {"fg": sq.fg_patch_edit()}, frames=big)
    x, y = sq.position(3)
    ys, xs = slice(2 * (y + 3), 2 * (y + 5)), slice(2 * (x + 3), 2 * (x + 5))
    assert (out[3, ys, xs] == sq.RED).all()
    np.testing.assert_array_equal(out[3, :, : 2 * (x - 1)], big[3, :, : 2 * (x - 1)])


def test_source_gone_says_use_working(tmp_path, square_atlas):
    sq = square_atlas
    data = sq.build(scale=2, source_path=str(tmp_path / "gone.mp4"))
    with pytest.raises(InputError, match="resolution working"):
        next(source_frames(data))


def test_edit_errors_name_expected_size(square_atlas):
    sq = square_atlas
    data = sq.build()
    with pytest.raises(InputError, match="expected 16x16"):
        render_edit(data, {"fg": np.zeros((10, 16, 4), np.uint8)})
    with pytest.raises(InputError, match="alpha"):
        render_edit(data, {"fg": np.zeros((16, 16, 3), np.uint8)})


def test_checkerboard_covers_the_atlas(square_atlas):
    sq = square_atlas
    lay = sq.build().layers[0]
    cb = checkerboard_edit(lay, cells=8)
    assert cb.shape == (sq.H, sq.W, 4) and (cb[..., 3] == 255).all()
    assert (cb[0, 0, :3] != cb[0, 8, :3]).any() and (cb[0, 0] == cb[0, 7]).all()  # 8 px cells on a 64 px side


# ---- the CLI: t2l render DIR -o OUT ----------------------------------------------------------------


@pytest.fixture
def atlas_dir(tmp_path, square_atlas):
    sq = square_atlas
    from t2l.atlas.folder import save_atlas

    folder = tmp_path / "clip.atlas"
    save_atlas(folder, sq.build())
    return folder


def _run(args):
    from typer.testing import CliRunner

    from t2l.cli import app

    r = CliRunner().invoke(app, args)
    assert "Traceback" not in r.stderr
    return r


def test_cli_renders_every_format(atlas_dir, tmp_path, square_atlas):
    sq = square_atlas
    import json

    from t2l.video_read import read_rgba_video, read_video

    (atlas_dir / "edits").mkdir()
    Image.fromarray(sq.fg_patch_edit()).save(atlas_dir / "edits" / "fg.png")
    out = tmp_path / "out" / "edit.mp4"
    args = ["render", str(atlas_dir), "-o", str(out), "--frames", "--json"]
    r = _run([*args, *[a for f in ("mp4", "prores", "webm", "png") for a in ("--format", f)]])
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["edits"] == {"fg": str(atlas_dir / "edits" / "fg.png")} and result["frames"] == sq.T
    assert set(result["outputs"]) == {"mp4", "prores", "webm", "png"}
    data = sq.build()
    expected, layer = render_edit(data, {"fg": sq.fg_patch_edit()})
    video, info = read_video(out)
    assert video.shape == (sq.T, sq.H, sq.W, 3) and info.fps == 10
    rgba, _ = read_rgba_video(out.with_suffix(".mov"))
    assert np.abs(rgba[..., 3].astype(int) - layer[..., 3]).max() <= 2
    rgba, _ = read_rgba_video(out.with_suffix(".webm"))
    assert np.abs(rgba[..., 3].astype(int) - layer[..., 3]).max() <= 8
    pngs = sorted((tmp_path / "out" / "edit").iterdir())
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]), layer)
    composited = sorted((tmp_path / "out" / "edit-frames").iterdir())
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in composited]), expected)
    # an existing output is kept unless --overwrite
    r = _run(["render", str(atlas_dir), "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (
        _run(
            [
                "render",
                str(atlas_dir),
                "-o",
                str(out),
                "--overwrite",
                "--bg",
                str(_blank_png(tmp_path, square_atlas)),
            ]
        ).exit_code
        == 0
    )


def _blank_png(tmp_path, square_atlas):
    sq = square_atlas
    p = tmp_path / "blank_bg.png"
    Image.fromarray(np.zeros((sq.H, sq.W, 4), np.uint8)).save(p)
    return p


def test_cli_errors(atlas_dir, tmp_path, square_atlas):
    sq = square_atlas
    out = str(tmp_path / "o.mp4")
    r = _run(["render", str(atlas_dir), "-o", out])
    assert r.exit_code == 1 and "no edit to render" in r.stderr
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((20, 16, 4), np.uint8)).save(wrong)
    r = _run(["render", str(atlas_dir), "-o", out, "--fg", str(wrong)])
    assert r.exit_code == 1 and "expected 16x16" in r.stderr
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(wrong)
    r = _run(["render", str(atlas_dir), "-o", out, "--fg", str(wrong)])
    assert r.exit_code == 1 and "alpha" in r.stderr
    Image.fromarray(sq.fg_patch_edit()).save(wrong)
    r = _run(["render", str(atlas_dir), "-o", str(tmp_path / "o.gif"), "--fg", str(wrong)])
    assert r.exit_code == 2 and "cannot tell the format" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run(["render", str(atlas_dir), "-o", str(blocker / "o.mp4"), "--fg", str(wrong)])
    assert r.exit_code == 1 and "cannot write" in r.stderr
    r = _run(["render", str(atlas_dir), "-o", out, "--fg", str(wrong), "--resolution", "source"])
    assert r.exit_code == 1 and "--resolution working" in r.stderr  # the source 'synthetic' does not exist
    r = _run(["render", str(tmp_path), "-o", out])
    assert r.exit_code == 1 and "neither an atlas folder" in r.stderr
    (atlas_dir / "alpha.npy").unlink()
    r = _run(["render", str(atlas_dir), "-o", out, "--fg", str(wrong)])
    assert r.exit_code == 1 and "alpha.npy" in r.stderr and "t2l atlas" in r.stderr


def _fake_image_render(monkeypatch):
    """Replace t2l.image_render.render_image_run by a recorder (keeps the module's naming constants)."""
    import t2l.image_render

    calls = []
    monkeypatch.setattr(
        t2l.image_render,
        "render_image_run",
        lambda run_dir, out, **kw: calls.append((run_dir, out, kw)) or {"written": str(out)},
    )
    return calls


def _image_run(tmp_path) -> Path:
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "image"}))
    return run


def test_cli_dispatches_image_runs(tmp_path, monkeypatch):
    """The image branch hands over to t2l.image_render (replaced here by a recorder)."""
    import json

    calls = _fake_image_render(monkeypatch)
    run = _image_run(tmp_path)
    r = _run(
        ["render", str(run), "-o", str(tmp_path / "x.png"), "--size", "96", "--input", "a.jpg", "--json"]
    )
    assert r.exit_code == 0, r.stderr
    assert calls == [(run, tmp_path / "x.png", {"input": Path("a.jpg"), "size": 96, "device": "auto"})]
    assert json.loads(r.stdout)["kind"] == "image" and "wrote" in r.stderr


@pytest.mark.parametrize(
    "out, existing",
    [("again", "again/composite.png"), ("again/", "again/alpha.png"), ("x.png", "x.png"), ("x.png", "x_edit.png")],
)  # fmt: skip
def test_image_run_outputs_are_kept_without_overwrite(tmp_path, monkeypatch, out, existing):
    calls = _fake_image_render(monkeypatch)
    run = _image_run(tmp_path)
    (tmp_path / existing).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / existing).write_bytes(b"mine")
    r = _run(["render", str(run), "-o", str(tmp_path / out)])
    assert r.exit_code == 2, r.stderr
    assert "already" in r.stderr and Path(existing).name in r.stderr and "--overwrite" in r.stderr
    assert calls == [] and (tmp_path / existing).read_bytes() == b"mine"
    r = _run(["render", str(run), "-o", str(tmp_path / out), "--overwrite"])
    assert r.exit_code == 0, r.stderr
    assert len(calls) == 1


def test_image_run_into_a_folder_of_other_files_is_fine(tmp_path, monkeypatch):
    calls = _fake_image_render(monkeypatch)
    run = _image_run(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    r = _run(["render", str(run), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.stderr
    assert len(calls) == 1
    (tmp_path / "y.png").mkdir()  # a folder where an image file is asked for
    r = _run(["render", str(run), "-o", str(tmp_path / "y.png")])
    assert r.exit_code == 2 and "is a folder" in r.stderr


def test_image_run_import_failure_is_not_hidden(tmp_path, monkeypatch):
    """A broken t2l.image_render (or a dependency of it) is a real error, never 'not available'."""
    import sys

    monkeypatch.setitem(sys.modules, "t2l.image_render", None)  # importing it raises ImportError
    run = _image_run(tmp_path)
    r = _run(["render", str(run), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 1
    assert "not available" not in r.stderr and "internal error" in r.stderr and "t2l.image_render" in r.stderr


def test_output_planning():
    from t2l.cli.render import plan_outputs
    from t2l.errors import UsageError

    assert plan_outputs(Path("a/e.mov"), None) == {"prores": Path("a/e.mov")}
    assert plan_outputs(Path("a/e"), None) == {"mp4": Path("a/e.mp4")}  # default mp4
    assert plan_outputs(Path("a/e"), ["png"]) == {"png": Path("a/e")}
    assert plan_outputs(Path("a/e"), ["webm"]) == {"webm": Path("a/e.webm")}
    assert plan_outputs(Path("a/e.mp4"), ["mp4", "PNG", "prores"]) == {
        "mp4": Path("a/e.mp4"),
        "png": Path("a/e"),
        "prores": Path("a/e.mov"),
    }
    with pytest.raises(UsageError, match="unknown --format 'gif'"):
        plan_outputs(Path("e.mp4"), ["gif"])


@pytest.mark.slow
def test_cli_renders_a_real_image_run(tmp_path, tiny_clip_args):
    """End to end with the real t2l.image_render: a 2-step tiny-CLIP run, rendered again on another image."""
    import json

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    train = ["image", str(tmp_path / "a.png"), "fire", "--steps", "2", "--size", "129", "--views", "1"]
    r = _run([*train, "-o", str(tmp_path / "run"), *tiny_clip_args])
    assert r.exit_code == 0, r.stderr
    r = _run(
        [
            "render",
            str(tmp_path / "run"),
            "-o",
            str(tmp_path / "again"),
            "--input",
            str(tmp_path / "b.png"),
            "--json",
        ]
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["kind"] == "image" and result["outputs"]
    for p in result["outputs"].values():
        assert Image.open(p).size == (90, 70)  # rendered at the new input's resolution


def test_edit_is_dimmed_with_the_frame_gain(square_atlas, tmp_path):
    """A fade (the fit's per-frame gain) dims the edit like the footage: a black frame stays black."""
    from dataclasses import replace

    from t2l.atlas.folder import load_atlas, save_atlas

    sq = square_atlas
    data = sq.build()
    gain = np.ones((sq.T, 3), np.float32)
    gain[0] = 0.0
    gain[1] = (0.5, 0.25, 1.0)
    dim = replace(data, gain=gain)
    ref, _ = render_edit(data, {"fg": sq.fg_patch_edit()})
    out, layer = render_edit(dim, {"fg": sq.fg_patch_edit()})
    x, y = sq.position(1)
    ys, xs = slice(y + 4 - sq.PAD, y + 8 - sq.PAD), slice(x + 4 - sq.PAD, x + 8 - sq.PAD)
    assert (np.abs(out[1, ys, xs] - np.array(sq.RED) * (0.5, 0.25, 1.0)) <= 1).all()
    assert (out[0][layer[0, ..., 3] == 255] == 0).all()  # full cover on a black-gain frame: black
    np.testing.assert_array_equal(out[2:], ref[2:])  # gain 1: unchanged
    # a few frames from the middle use their own mapping and gain (not frame 0's)
    mid, _ = render_edit(dim, {"fg": sq.fg_patch_edit()}, dim.frames[1:3], first=1)
    np.testing.assert_array_equal(mid, out[1:3])
    # the gain travels in the folder (metrics.json) and comes back
    save_atlas(tmp_path / "a", dim)
    np.testing.assert_allclose(load_atlas(tmp_path / "a").gain, gain)
    save_atlas(tmp_path / "b", data)  # no gain (atlases written before it): None, edits undimmed
    assert load_atlas(tmp_path / "b").gain is None
