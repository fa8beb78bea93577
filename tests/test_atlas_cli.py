"""`t2l atlas` end to end on tiny synthetic clips (folders of PNG frames written here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2l.atlas.synthetic import SyntheticConfig, make_clip
from t2l.cli import app

runner = CliRunner()
FAST = ["--steps", "12", "--size", "96", "--seed", "0"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    clip = make_clip(SyntheticConfig(frames=6, height=54, width=96, seed=2))
    for i, f in enumerate(clip.frames):
        Image.fromarray(f).save(d / f"frame{i}.png")
    masks = d.parent / "clip_masks"
    masks.mkdir()
    for i, m in enumerate(clip.masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(masks / f"{i:03d}.png")
    return d, masks, clip


def _ok(result):
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def fitted(clip_dir, tmp_path_factory):
    """One uninterrupted FAST fit of the clip: (folder, CliRunner result)."""
    out = tmp_path_factory.mktemp("fitted") / "atlas"
    r = runner.invoke(app, ["atlas", str(clip_dir[0]), "-o", str(out), "--json", *FAST])
    _ok(r)
    return out, r


def test_atlas_folder_contents(clip_dir, fitted):
    frames, _, clip = clip_dir
    out, r = fitted
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["layers"] == ["bg", "fg"] and summary["frames"] == 6 and summary["masks"] == "automatic"
    assert summary["psnr_mean"] > 28
    index = json.loads((out / "atlas.json").read_text())
    assert (
        index["format_version"] == 1
        and index["frames"] == 6
        and (index["width"], index["height"]) == (96, 54)
    )
    for rel in ("layers/bg/uv.npy", "layers/fg/atlas.png", "alpha.npy", "flow.npz", "model.pt", "metrics.json",
                "reconstruction.mp4", "checkerboard.mp4", "masks/00005.png", "frames/00000.png"):  # fmt: skip
        assert (out / rel).exists(), rel
    assert index["meta"]["run"]["preset"] == "draft" and "draft" in r.stderr
    from t2l.atlas.folder import load_atlas

    data = load_atlas(out)
    assert data.alpha.shape == (6, 54, 96) and data.masks.any()
    # Without --overwrite an existing atlas is kept.
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(out), *FAST])
    assert r.exit_code == 2 and "--overwrite" in r.stderr


def test_given_masks_and_one_layer(clip_dir, tmp_path):
    frames, masks, clip = clip_dir
    r = runner.invoke(
        app, ["atlas", str(frames), "-o", str(tmp_path / "m"), "--masks", str(masks), "--json", *FAST]
    )
    _ok(r)
    assert json.loads(r.stdout.strip().splitlines()[-1])["masks"] == "given"
    saved = np.stack(
        [np.asarray(Image.open(tmp_path / "m" / "masks" / f"{i:05d}.png")) > 127 for i in range(6)]
    )
    assert (saved == clip.masks).all()

    r = runner.invoke(app, ["atlas", str(frames), "-o", str(tmp_path / "one"), "--layers", "1", *FAST])
    _ok(r)
    index = json.loads((tmp_path / "one" / "atlas.json").read_text())
    assert [lay["name"] for lay in index["layers"]] == ["bg"]
    assert not (tmp_path / "one" / "alpha.npy").exists()


def test_black_masks_fit_one_layer_and_say_so(clip_dir, tmp_path):
    """A --masks folder of all-black images (nothing is foreground): one background layer, said."""
    frames, _, _ = clip_dir
    black = tmp_path / "black"
    black.mkdir()
    for i in range(6):
        Image.fromarray(np.zeros((54, 96), np.uint8)).save(black / f"{i:03d}.png")
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(tmp_path / "b"), "--masks", str(black), *FAST])
    _ok(r)
    assert "are all empty: fitting one background layer" in r.stderr
    index = json.loads((tmp_path / "b" / "atlas.json").read_text())
    assert [lay["name"] for lay in index["layers"]] == ["bg"]


def test_errors(clip_dir, tmp_path):
    frames, masks, _ = clip_dir
    r = runner.invoke(app, ["atlas", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not found" in r.stderr and "Traceback" not in r.stderr

    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    r = runner.invoke(app, ["atlas", str(fake), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Traceback" not in r.stderr and "fake.mp4" in r.stderr

    short = tmp_path / "short"
    short.mkdir()
    for i in range(2):
        Image.open(frames / f"frame{i}.png").save(short / f"{i}.png")
    r = runner.invoke(app, ["atlas", str(short), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "at least 3 frames" in r.stderr

    r = runner.invoke(app, ["atlas", str(frames), "-o", str(tmp_path / "o"), "--layers", "3"])
    assert r.exit_code == 2 and "--layers" in r.stderr
    r = runner.invoke(
        app, ["atlas", str(frames), "-o", str(tmp_path / "o"), "--masks", str(masks), "--layers", "1"]
    )
    assert r.exit_code == 2
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(tmp_path / "o"), "--masks", str(tmp_path), *FAST])
    assert r.exit_code == 1 and "images" in r.stderr
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 2 and "nothing to resume" in r.stderr


def test_interrupt_then_resume(clip_dir, fitted, tmp_path, monkeypatch):
    frames, _, _ = clip_dir
    out = tmp_path / "a"
    from t2l.atlas import fit

    original = fit.AtlasFitter.run

    def interrupted(self):
        for ev in original(self):
            yield ev
            if ev.step == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(fit.AtlasFitter, "run", interrupted)
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(out), *FAST])
    assert r.exit_code == 130 and "--resume" in r.stderr and "Traceback" not in r.stderr
    assert (out / "model.pt").is_file() and not (out / "atlas.json").exists()
    monkeypatch.setattr(fit.AtlasFitter, "run", original)

    r = runner.invoke(app, ["atlas", str(frames), "-o", str(out), "--resume", "--json"])
    _ok(r)
    assert "resuming at step 5/12" in r.stderr
    index = json.loads((out / "atlas.json").read_text())
    assert index["meta"]["run"]["steps"] == 12 and index["meta"]["run"]["size"] == 96
    # interrupt + resume == the uninterrupted fit, bit for bit
    whole = fitted[0]
    for rel in ("layers/bg/uv.npy", "layers/fg/uv.npy", "alpha.npy"):
        np.testing.assert_array_equal(np.load(out / rel), np.load(whole / rel), err_msg=rel)
    for rel in ("layers/bg/atlas.png", "layers/fg/atlas.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(out / rel)), np.asarray(Image.open(whole / rel)))
    # --steps is the total: below the steps done is a one-line usage error, nothing touched
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(out), "--resume", "--steps", "4"])
    assert r.exit_code == 2 and "--steps 4 is below the 12 steps already done" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # the total, not more on top: --steps 14 on a 12-step atlas fits 2 more
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(out), "--resume", "--steps", "14"])
    _ok(r)
    assert "resuming at step 12/14" in r.stderr
    assert json.loads((out / "atlas.json").read_text())["meta"]["run"]["steps"] == 14
    # Resuming on another clip is refused with the reason.
    other = tmp_path / "other"
    other.mkdir()
    for i in range(4):
        Image.open(frames / f"frame{i}.png").save(other / f"{i}.png")
    r = runner.invoke(app, ["atlas", str(other), "-o", str(out), "--resume", "--steps", "20"])
    assert r.exit_code == 1 and "fitted on 6 frames" in r.stderr


def test_from_nla(tmp_path, nla_checkpoint):
    from t2l.video_write import write_png_sequence

    frames = tmp_path / "frames"
    write_png_sequence(frames, np.random.default_rng(0).integers(0, 255, (3, 12, 16, 3), dtype=np.uint8))
    ckpt = tmp_path / "nla.pth"
    nla_checkpoint(ckpt)
    out = tmp_path / "imported"
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(out), "--from-nla", str(ckpt), "--json"])
    _ok(r)
    assert json.loads(r.stdout.strip().splitlines()[-1])["layers"] == ["bg", "fg"]
    index = json.loads((out / "atlas.json").read_text())
    assert index["frames"] == 3 and (index["width"], index["height"]) == (16, 12)
    r = runner.invoke(
        app, ["atlas", str(frames), "-o", str(tmp_path / "x"), "--from-nla", str(tmp_path / "no.pth")]
    )
    assert r.exit_code == 1 and "no.pth" in r.stderr


def test_nothing_moves_falls_back_to_one_layer(clip_dir, tmp_path):
    frames, _, _ = clip_dir
    still = tmp_path / "still"
    still.mkdir()
    for i in range(4):
        Image.open(frames / "frame0.png").save(still / f"{i}.png")
    r = runner.invoke(app, ["atlas", str(still), "-o", str(tmp_path / "s"), "--json", *FAST])
    _ok(r)
    assert "no moving object found" in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["layers"] == ["bg"] and summary["psnr_mean"] > 40  # a still clip is its own atlas


def test_a_clip_cut_short_by_max_frames_says_so(clip_dir, tmp_path):
    frames, _, _ = clip_dir  # 6 frames
    r = runner.invoke(
        app, ["atlas", str(frames), "-o", str(tmp_path / "cut"), "--max-frames", "4", "--json", *FAST]
    )
    _ok(r)
    assert json.loads(r.stdout.strip().splitlines()[-1])["frames"] == 4
    assert "has more frames: fitting 4" in r.stderr
    index = json.loads((tmp_path / "cut" / "atlas.json").read_text())
    assert index["frames"] == 4
    r = runner.invoke(app, ["atlas", str(frames), "-o", str(tmp_path / "all"), "--max-frames", "6", *FAST])
    _ok(r)
    assert "has more frames" not in r.stderr
