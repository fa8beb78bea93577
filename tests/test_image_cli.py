"""`t2l image` end to end on a tiny random CLIP: outputs, run.json, --json, resume, error paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2l.cli import app

runner = CliRunner()
FAST = ["--steps", "3", "--size", "64", "--views", "2", "--gen-depth", "4", "--gen-width", "8", "--seed", "1"]


@pytest.fixture()
def photo(tmp_path):
    a = (np.random.RandomState(0).rand(10, 12, 3) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(a).resize((100, 80), Image.BICUBIC).save(path)  # W=100, H=80
    return path


def _run(args, tiny_clip_args):
    r = runner.invoke(app, ["image", *FAST, *tiny_clip_args, *args])  # later options win
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _load(path):
    return np.asarray(Image.open(path))


def test_outputs_sizes_modes_composite_and_run_json(photo, tmp_path, tiny_clip_args):
    out = tmp_path / "out"
    r = _run(
        [str(photo), "fire", "--roi", "the photo", "-o", str(out), "--json", "--save-every", "2"],
        tiny_clip_args,
    )
    assert r.exit_code == 0, r.stderr
    line = json.loads(r.stdout.strip())
    assert line["status"] == "done" and line["seed"] == 1 and "total" in line["final_losses"]
    modes = {"edit.png": "RGBA", "composite.png": "RGB", "greenscreen.png": "RGB", "alpha.png": "L"}
    for name, mode in modes.items():
        im = Image.open(out / name)
        assert im.size == (100, 80) and im.mode == mode, name
    assert (out / "roi.png").exists() and (out / "generator.pt").exists()
    assert not (out / "checkpoint.pt").exists()  # a finished run drops its resume checkpoint
    assert [p.name for p in (out / "snapshots").iterdir()] == ["step00002.png"]
    edit, comp, inp = (
        _load(out / "edit.png").astype(float),
        _load(out / "composite.png").astype(float),
        _load(photo),
    )
    a = edit[..., 3:4] / 255
    want = a * edit[..., :3] + (1 - a) * inp
    assert np.abs(comp - want).max() <= 1.0
    assert np.array_equal(_load(out / "alpha.png"), edit[..., 3].astype(np.uint8))
    zero = edit[..., 3] == 0
    assert np.array_equal(comp[zero], inp[zero].astype(float))
    info = json.loads((out / "run.json").read_text())
    for key in (
        "kind",
        "status",
        "seed",
        "device",
        "config",
        "clip",
        "versions",
        "timings",
        "final_losses",
        "outputs",
    ):
        assert key in info, key
    assert info["kind"] == "image" and info["status"] == "done" and info["steps_done"] == 3
    assert info["clip"]["source"] and info["input_size"] == [100, 80] and info["working_size"] == [80, 64]
    assert info["prompts"] == {"comp": ["fire"], "src": ["the photo"], "screen": ["fire"], "roi": "the photo"}
    assert "bootstrap" in info["config"]["train"]["weights"]

    # a second run skips finished outputs; --overwrite redoes them
    r2 = _run([str(photo), "fire", "-o", str(out), "--json"], tiny_clip_args)
    assert r2.exit_code == 0 and json.loads(r2.stdout)["status"] == "skipped"

    # the saved generator renders again without training, at another size and on another image
    from t2l.image_render import render_image_run

    res = render_image_run(out, tmp_path / "again", size=72, device="cpu")
    assert Image.open(res["outputs"]["composite"]).size == (100, 80)
    other = tmp_path / "other.jpg"
    Image.fromarray((np.random.RandomState(1).rand(70, 90, 3) * 255).astype(np.uint8)).save(other)
    res = render_image_run(out, tmp_path / "o.png", input=other, device="cpu")
    assert (
        Image.open(tmp_path / "o.png").size == (90, 70) and Image.open(tmp_path / "o_edit.png").mode == "RGBA"
    )


def test_interrupt_then_resume_equals_uninterrupted(photo, tmp_path, tiny_clip_args, monkeypatch):
    from t2l.train import Trainer

    steps = ["--steps", "4"]
    full = tmp_path / "full"
    assert _run([str(photo), "fire", "-o", str(full), *steps], tiny_clip_args).exit_code == 0

    original = Trainer.train_step

    def interrupted_at_2(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    part = tmp_path / "part"
    monkeypatch.setattr(Trainer, "train_step", interrupted_at_2)
    r = _run([str(photo), "fire", "-o", str(part), *steps], tiny_clip_args)
    assert r.exit_code == 130 and "--resume" in r.stderr
    assert json.loads((part / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(Trainer, "train_step", original)

    r = _run(
        [str(photo), "fire", "-o", str(part), *steps], tiny_clip_args
    )  # neither --resume nor --overwrite
    assert r.exit_code == 1 and "--resume" in r.stderr
    r = _run([str(photo), "fire", "-o", str(part), *steps, "--resume"], tiny_clip_args)
    assert r.exit_code == 0, r.stderr
    info = json.loads((part / "run.json").read_text())
    assert info["status"] == "done" and info["steps_done"] == 4 and info["timings"]["steps_this_session"] == 2
    for name in ("edit.png", "composite.png"):
        assert np.array_equal(_load(part / name), _load(full / name)), name


def test_batch_rerun_with_resume_skips_continues_and_starts(photo, tmp_path, tiny_clip_args, monkeypatch):
    """After Ctrl-C in a batch, the same command plus --resume finishes it: a finished output is
    skipped, the interrupted one continues from its checkpoint, the never-started one starts fresh."""
    from t2l.train import Trainer

    photos = []
    for name in ("a", "b", "c"):
        photos.append(tmp_path / f"{name}.png")
        photos[-1].write_bytes(photo.read_bytes())
    out, steps = tmp_path / "batch", ["--steps", "4"]
    original, trainers = Trainer.train_step, []

    def interrupted_in_b(self):
        if self not in trainers:
            trainers.append(self)
        if len(trainers) == 2 and self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_in_b)
    r = _run([*map(str, photos), "fire", "-o", str(out), *steps], tiny_clip_args)
    assert r.exit_code == 130 and "--resume" in r.stderr
    assert json.loads((out / "b" / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "c").exists()
    monkeypatch.setattr(Trainer, "train_step", original)

    r = _run([*map(str, photos), "fire", "-o", str(out), *steps, "--resume", "--json"], tiny_clip_args)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(s)["status"] for s in r.stdout.strip().splitlines()] == ["skipped", "done", "done"]
    done = {n: json.loads((out / n / "run.json").read_text()) for n in ("b", "c")}
    assert done["b"]["timings"]["steps_this_session"] == 2  # continued, not restarted
    assert done["c"]["steps_done"] == 4 and done["c"]["timings"]["steps_this_session"] == 4


def test_several_inputs_one_failing(photo, tmp_path, tiny_clip_args):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "many"
    r = _run(
        [str(photo), str(bad), str(tmp_path / "missing.jpg"), "fire", "-o", str(out), "--json"],
        tiny_clip_args,
    )
    assert r.exit_code == 1
    lines = [json.loads(s) for s in r.stdout.strip().splitlines()]
    assert [x["status"] for x in lines] == ["done", "failed", "failed"]
    assert (out / "photo" / "composite.png").exists()
    assert "broken.png" in r.stderr and "missing.jpg" in r.stderr and "2 of 3 inputs failed" in r.stderr


def test_show_roi_writes_heatmap_and_does_not_train(photo, tmp_path, tiny_clip_args):
    out = tmp_path / "roi"
    r = _run([str(photo), "fire", "--roi", "a dog", "--show-roi", "-o", str(out)], tiny_clip_args)
    assert r.exit_code == 0, r.stderr
    assert Image.open(out / "roi.png").size == (100, 80)  # at the input's original resolution
    assert not (out / "run.json").exists() and not (out / "edit.png").exists()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["   "], 2, "prompt is empty"),
        (["fire", "--show-roi"], 2, "--show-roi needs --roi"),
        (["fire", "--roi", " "], 2, "--roi text is empty"),
        (["fire", "--size", "10"], 2, "minimum side"),
        (["fire", "--preset", "huge"], 2, "unknown preset"),
        (["fire", "--resume", "--overwrite"], 2, "contradict"),
    ],
)
def test_usage_errors(photo, tmp_path, tiny_clip_args, args, code, words):
    r = _run([str(photo), *args, "-o", str(tmp_path / "u")], tiny_clip_args)
    assert r.exit_code == code and words in r.stderr, r.stderr


def test_unwritable_output_and_missing_prompt(photo, tmp_path, tiny_clip_args):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    r = _run([str(photo), "fire", "-o", str(blocker / "out")], tiny_clip_args)
    assert r.exit_code == 1 and "cannot write to output folder" in r.stderr
    r = runner.invoke(app, ["image", str(photo), *tiny_clip_args])
    assert r.exit_code == 2


def test_weights_unavailable_exits_3(photo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("T2L_CACHE_DIR", str(tmp_path / "empty-t2l-cache"))
    r = runner.invoke(app, ["image", str(photo), "fire", "--offline", "-o", str(tmp_path / "w"), *FAST])
    assert r.exit_code == 3, r.stderr
    assert "Traceback" not in r.stderr
