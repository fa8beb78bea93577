"""`t2l video` end to end on a tiny random CLIP and an exact synthetic atlas: outputs decoded back,
render equivalence, both layers, a video file input, and every bad input of issue 7."""

from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2l.cli import app

runner = CliRunner()
FAST = ["--steps", "2", "--views", "2", "--gen-depth", "4", "--gen-width", "8", "--seed", "1"]


def _run(args, tiny_clip_args, fast=FAST):
    r = runner.invoke(app, ["video", *args, *fast, *tiny_clip_args])
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _mp4(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        return frames, s.average_rate


def _pngs(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_fg_edit_end_to_end_outputs_decode_back(video_atlas_dir, tiny_clip_args, tmp_path):
    # catches: missing/misnamed outputs, wrong frame count/rate/size, an edit layer without alpha, no copy
    # into ATLAS/edits, no consistency report, a JSON line that is not one object
    r = _run(
        [
            str(video_atlas_dir),
            "fire",
            "--roi",
            "square",
            "--json",
            "-f",
            "png",
            "-f",
            "webm",
            "--save-every",
            "2",
        ],
        tiny_clip_args,
    )
    assert r.exit_code == 0, r.stderr
    line = json.loads(r.stdout.strip())
    out = video_atlas_dir / "runs" / "fg-fire"
    assert line["status"] == "done" and line["layer"] == "fg" and line["output"] == str(out)
    assert "warp error" in r.stderr and "leakage" in r.stderr and "preservation" in r.stderr
    frames, rate = _mp4(out / "video.mp4")
    assert frames.shape == (8, 72, 96, 3) and rate == 10
    layer = _pngs(out / "layer")
    assert layer.shape == (8, 72, 96, 4)
    green, _ = _mp4(out / "greenscreen.mp4")
    assert green.shape == (8, 72, 96, 3)
    from t2l.video_read import read_rgba_video

    webm, fps = read_rgba_video(out / "layer.webm")
    assert webm.shape == layer.shape and fps == 10
    assert np.abs(webm[..., 3].astype(int) - layer[..., 3]).max() <= 4
    edit = Image.open(out / "edit.png")
    assert edit.mode == "RGBA" and edit.size == (32, 32)  # the fg atlas.png's size
    assert (video_atlas_dir / "edits" / "fg.png").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "video" and run["status"] == "done" and run["layer"] == "fg"
    assert run["config"]["train"]["weights"]["structure"] == 3.0 and run["prompts"]["roi"] == "square"
    assert set(run["consistency"]["warp"]) == {"stride_1", "stride_8"}
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [
        "step00002_edit.png",
        "step00002_frame00004.png",
    ]
    assert not (out / "checkpoint.pt").exists()

    # t2l render RUN and t2l render ATLAS --fg RUN/edit.png give the run's own layer frames
    r = runner.invoke(app, ["render", str(out), "-o", str(tmp_path / "a"), "--format", "png"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(
        app,
        [
            "render",
            str(video_atlas_dir),
            "--fg",
            str(out / "edit.png"),
            "-o",
            str(tmp_path / "b"),
            "--format",
            "png",
        ],
    )
    assert r.exit_code == 0, r.stderr
    np.testing.assert_array_equal(_pngs(tmp_path / "a"), layer)
    np.testing.assert_array_equal(_pngs(tmp_path / "b"), layer)
    r = runner.invoke(app, ["render", str(out), "-o", str(tmp_path / "c.mp4")])
    assert r.exit_code == 0, r.stderr
    again, _ = _mp4(tmp_path / "c.mp4")
    assert again.shape == frames.shape and np.abs(again.astype(int) - frames).mean() < 1.0


def test_both_layers_edited_by_two_runs_render_together(video_atlas_dir, tiny_clip_args, tmp_path):
    # catches: a bg run that edits the wrong layer or an edit.png another layer's renderer refuses
    for layer in ("fg", "bg"):
        r = _run(
            [str(video_atlas_dir), "ice", "--layer", layer, "-o", str(tmp_path / layer), "--no-copy"],
            tiny_clip_args,
        )
        assert r.exit_code == 0, r.stderr
    assert not (video_atlas_dir / "edits").exists()  # --no-copy
    r = runner.invoke(
        app,
        ["render", str(video_atlas_dir), "--fg", str(tmp_path / "fg" / "edit.png"), "--bg", str(tmp_path / "bg" / "edit.png"),
         "-o", str(tmp_path / "both"), "--format", "png"],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    both = _pngs(tmp_path / "both").astype(int)
    fg, bg = _pngs(tmp_path / "fg" / "layer").astype(int), _pngs(tmp_path / "bg" / "layer").astype(int)
    square = fg[..., 3] > 0
    assert square.any() and (bg[..., 3] > 0).any()
    # on the square the fg edit shows, off it the bg edit: together they cover both regions
    assert (both[..., 3] >= np.maximum(fg[..., 3], bg[..., 3]) - 1).all()


def test_resume_continues_an_interrupted_run(video_atlas_dir, tiny_clip_args, tmp_path, monkeypatch):
    # catches: Ctrl-C not checkpointing, exit code, a resume that starts again at 0 or ignores --steps total
    from t2l.run import TrainingRun

    out = tmp_path / "run"
    real = TrainingRun.write_snapshot
    calls = {"n": 0}

    def interrupt(self, step):  # Ctrl-C right after the first snapshot
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr("t2l.video.VideoRun.write_snapshot", interrupt)
    r = _run([str(video_atlas_dir), "fire", "-o", str(out), "--save-every", "1"], tiny_clip_args)
    assert r.exit_code == 130 and "--resume" in r.stderr and (out / "checkpoint.pt").exists()
    monkeypatch.setattr("t2l.video.VideoRun.write_snapshot", real)
    r = _run([str(video_atlas_dir), "fire", "-o", str(out)], tiny_clip_args)
    assert r.exit_code == 2 and "unfinished run" in r.stderr
    r = _run(
        [str(video_atlas_dir), "fire", "-o", str(out), "--resume", "--json"],
        tiny_clip_args,
        fast=["--steps", "3", *FAST[2:]],
    )
    assert r.exit_code == 0, r.stderr
    assert "resuming" in r.stderr and "preset auto" not in r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["steps_done"] == 3 and run["timings"]["steps_this_session"] == 2


def _corrupt_video(tmp_path):
    p = tmp_path / "broken.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    return p


@pytest.mark.parametrize(
    "case,code,words",
    [
        ("not_atlas", 1, "not an atlas folder (no atlas.json)"),
        ("incomplete", 1, "not an atlas folder"),
        ("unfinished_fit", 1, "holds an unfinished atlas fit"),
        ("fg_on_one_layer", 2, "one layer (bg), no foreground"),
        ("empty_prompt", 2, "the prompt is empty"),
        ("too_small", 2, "below the generator's minimum side 129"),
        ("existing_run", 2, "already holds a finished edit"),
        ("bad_video", 1, "broken.mp4"),
        ("missing", 1, "input not found"),
        ("bad_layer", 2, "unknown layer 'xy'"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    case, code, words, video_atlas_dir, make_video_atlas, tiny_clip_args, tmp_path
):
    from t2l.atlas.folder import save_atlas

    args, fast = [str(video_atlas_dir), "fire"], FAST
    if case == "not_atlas":
        args[0] = str(tmp_path)
    elif case == "incomplete":
        (video_atlas_dir / "atlas.json").unlink()
    elif case == "unfinished_fit":
        (video_atlas_dir / "atlas.json").unlink()
        (video_atlas_dir / "model.pt").write_bytes(b"")
    elif case == "fg_on_one_layer":
        save_atlas(tmp_path / "one", make_video_atlas(layers=1))
        args = [str(tmp_path / "one"), "fire", "--layer", "fg"]
    elif case == "empty_prompt":
        args[1] = "  "
    elif case == "too_small":
        fast = ["--steps", "1"]  # the default generator needs 129 px; the frames are 96x72
    elif case == "existing_run":
        assert _run(args, tiny_clip_args).exit_code == 0
    elif case == "bad_video":
        args[0] = str(_corrupt_video(tmp_path))
    elif case == "missing":
        args[0] = str(tmp_path / "nothere.mp4")
    elif case == "bad_layer":
        args += ["--layer", "xy"]
    before = sorted(p.name for p in video_atlas_dir.rglob("*"))
    r = _run(args, tiny_clip_args, fast)
    assert r.exit_code == code, (r.exit_code, r.stderr)
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and words in err[-1], err
    assert len([ln for ln in err if ln.startswith("error:")]) == 1
    if case not in ("existing_run",):
        assert sorted(p.name for p in video_atlas_dir.rglob("*")) == before  # nothing written


def test_no_weights_gives_the_image_message(video_atlas_dir, monkeypatch, tmp_path):
    # the same WeightsUnavailable (exit 3) as t2l image: offline with an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("T2L_CACHE_DIR", str(tmp_path / "empty-t2l"))
    monkeypatch.setenv("HOME", str(tmp_path))
    r = runner.invoke(app, ["video", str(video_atlas_dir), "fire", "--offline", *FAST])
    assert r.exit_code == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (video_atlas_dir / "runs").exists()


def test_a_video_file_is_fitted_once_then_edited(make_video_atlas, tiny_clip_args, tmp_path, monkeypatch):
    # catches: a video INPUT that is not fitted, or refitted on every run
    from dataclasses import replace
    from fractions import Fraction

    from t2l.atlas import run as atlas_run
    from t2l.video_write import VideoWriter

    # the atlas defaults, with a short step budget (fitting quality is tested in test_atlas_*)
    draft = atlas_run.PRESETS["draft"]
    monkeypatch.setitem(atlas_run.PRESETS, "draft", replace(draft, min_steps=20, steps_per_frame=1))

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, Fraction(10), "mp4", 10) as w:
        for f in make_video_atlas(frames=6).frames:
            w.write(f)
    r = _run([str(clip), "fire", "--layer", "bg"], tiny_clip_args)
    assert r.exit_code == 0, r.stderr
    assert "fitting the atlas" in r.stderr and (tmp_path / "clip.atlas" / "atlas.json").exists()
    assert (tmp_path / "clip.atlas" / "runs" / "bg-fire" / "video.mp4").exists()
    r = _run([str(clip), "ice", "--layer", "bg"], tiny_clip_args)
    assert r.exit_code == 0, r.stderr
    assert "using the atlas fitted before" in r.stderr and "fitting the atlas" not in r.stderr
    shutil.rmtree(tmp_path / "clip.atlas")


def test_ctrl_c_while_writing_outputs_resumes_into_them(video_atlas_dir, tiny_clip_args, monkeypatch):
    # catches: a trained generator lost when the render/encoding after training is interrupted
    import t2l.atlas.render as atlas_render

    out = video_atlas_dir / "runs" / "fg-fire"
    real = atlas_render.render_to_files

    def interrupted(*a, **k):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(atlas_render, "render_to_files", interrupted)
    r = _run([str(video_atlas_dir), "fire"], tiny_clip_args)
    assert r.exit_code == 130 and (out / "checkpoint.pt").exists()
    assert not (video_atlas_dir / "edits").exists()  # the atlas folder is untouched by a failed command
    monkeypatch.setattr(atlas_render, "render_to_files", real)
    r = _run([str(video_atlas_dir), "fire", "--resume"], tiny_clip_args)
    assert r.exit_code == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["steps_done"] == 2 and run["timings"]["steps_this_session"] == 0
    assert (out / "video.mp4").exists() and not (out / "checkpoint.pt").exists()


def test_overwrite_keeps_the_old_run_until_training_starts_and_edits_are_not_clobbered(
    video_atlas_dir, tiny_clip_args, monkeypatch, tmp_path
):
    # catches: --overwrite deleting a finished run before a start that fails; a hand-painted
    # ATLAS/edits/fg.png silently replaced by a later run
    assert _run([str(video_atlas_dir), "fire"], tiny_clip_args).exit_code == 0
    out = video_atlas_dir / "runs" / "fg-fire"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    r = runner.invoke(app, ["video", str(video_atlas_dir), "fire", "--overwrite", "--offline", *FAST])
    assert r.exit_code == 3 and (out / "run.json").exists() and (out / "video.mp4").exists()
    painted = video_atlas_dir / "edits" / "fg.png"
    Image.fromarray(np.full((32, 32, 4), 7, np.uint8)).save(painted)
    before = painted.read_bytes()
    r = _run([str(video_atlas_dir), "ice"], tiny_clip_args)
    assert r.exit_code == 0 and painted.read_bytes() == before and "was kept" in r.stderr
    r = _run([str(video_atlas_dir), "ice", "--overwrite"], tiny_clip_args)
    assert r.exit_code == 0 and painted.read_bytes() != before


def test_render_of_a_video_run_refuses_a_replaced_layer_or_a_refitted_atlas(
    video_atlas_dir, tiny_clip_args, tmp_path
):
    assert _run([str(video_atlas_dir), "fire"], tiny_clip_args).exit_code == 0
    out = video_atlas_dir / "runs" / "fg-fire"
    r = runner.invoke(app, ["render", str(out), "--fg", str(out / "edit.png"), "-o", str(tmp_path / "x.mp4")])
    assert r.exit_code == 2 and "would replace it" in r.stderr
    index = video_atlas_dir / "atlas.json"
    index.write_text(index.read_text().replace('"format_version"', '"refit": 1, "format_version"'))
    r = runner.invoke(app, ["render", str(out), "-o", str(tmp_path / "y.mp4")])
    assert r.exit_code == 1 and "has changed since" in r.stderr
