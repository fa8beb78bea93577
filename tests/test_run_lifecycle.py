"""The run-folder lifecycle shared by image and video runs (t2l/run.py), seen from image runs:
resume identity, the steps rule, the progress start, and the premultiplied resize of the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from t2l.cli import app
from t2l.errors import InputError, UsageError
from t2l.generator import GeneratorConfig
from t2l.image import ImageRun, resize_rgba, resolve_config
from t2l.prompts import make_prompts

runner = CliRunner()
GEN = GeneratorConfig(depth=4, width=8)


def test_layer_resize_is_premultiplied_so_hidden_colour_never_bleeds():
    # catches: a straight-alpha upsample (issue 9 defect 1): the red under alpha 0 would tint the edge
    rgba = torch.zeros(1, 4, 4, 4)
    rgba[:, 0] = 1.0  # red everywhere ...
    rgba[:, :, :, 2:] = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(
        1, 4, 1, 1
    )  # ... but the right half opaque green
    big = resize_rgba(rgba, (16, 16))
    a = big[0, 3]
    edge = (a > 0.01) & (a < 0.99)
    assert edge.any()
    assert float(big[0, 0][a > 0.01].max()) < 1e-6  # no red wherever anything is visible
    assert torch.allclose(big[0, 1][a > 0.01], torch.ones(()))  # the visible colour is the green's
    assert torch.equal(resize_rgba(rgba, (4, 4)), rgba)


@pytest.fixture(scope="module")
def clip(tiny_clip_files):
    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip

    cfg, weights = tiny_clip_files
    return load_clip(ClipSpec(str(cfg), str(weights), offline=True), "cpu")


@pytest.fixture()
def photo(tmp_path):
    a = (np.random.RandomState(0).rand(10, 12, 3) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(a).resize((80, 64), Image.BICUBIC).save(path)
    return path


def _interrupted(photo, clip, out, prompt="fire", steps=4):
    cfg, _ = resolve_config("draft", "cpu", steps, 64, 2, 0, GEN)
    run = ImageRun.prepare(photo, make_prompts(prompt), cfg, clip, torch.device("cpu"), out, seed=3)
    ev = run.events()
    next(ev), next(ev)
    run.save_checkpoint()  # what Ctrl-C does
    ev.close()
    return cfg


def _resume(photo, clip, out, prompt="fire", steps=None, clip_obj=None):
    cfg, _ = resolve_config("paper", "cpu", None, None, None, 0, GEN)  # flags differ: the checkpoint wins
    return ImageRun.prepare(
        photo, make_prompts(prompt), cfg, clip_obj or clip, torch.device("cpu"), out, resume=True, steps=steps
    )


def test_resume_refuses_another_input_prompt_or_clip_and_keeps_the_checkpoint_settings(photo, clip, tmp_path):
    # catches: --resume trusting the folder (issue 9 defect 2)
    out = tmp_path / "run"
    _interrupted(photo, clip, out)
    run = _resume(photo, clip, out)
    assert (run.done_steps, run.total_steps) == (2, 4)  # the progress bar's start and total
    assert run.cfg.size == 64 and run.cfg.train.views.n == 2 and run.seed == 3
    with pytest.raises(InputError, match="prompts"):
        _resume(photo, clip, out, prompt="ice")
    other = photo.with_name("other.png")
    Image.open(photo).save(other)
    with pytest.raises(InputError, match="other.png"):
        _resume(other, clip, out)

    class OtherClip:
        def __getattr__(self, name):
            return "ViT-L-14" if name == "model_name" else getattr(clip, name)

    with pytest.raises(InputError, match="CLIP model"):
        _resume(photo, clip, out, clip_obj=OtherClip())
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(photo)  # same path, new content
    with pytest.raises(InputError, match="photo.png has changed since the checkpoint"):
        _resume(photo, clip, out)


def test_steps_is_the_total_on_resume(photo, clip, tmp_path):
    # catches: --steps meaning "more steps" on resume, or a total below what is done accepted
    out = tmp_path / "run"
    _interrupted(photo, clip, out)
    assert _resume(photo, clip, out, steps=6).total_steps == 6
    with pytest.raises(UsageError, match="steps 1 is below the 2 steps this run has already done"):
        _resume(photo, clip, out, steps=1)


def test_cli_resume_draws_from_the_checkpoint_and_drops_the_auto_note(photo, clip, tmp_path, tiny_clip_args):
    out = tmp_path / "run"
    _interrupted(photo, clip, out)
    r = runner.invoke(app, ["image", str(photo), "fire", "-o", str(out), "--resume", "--gen-depth", "4",
                            "--gen-width", "8", *tiny_clip_args])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "preset auto" not in r.stderr and "resuming" in r.stderr
    assert "4/4" in r.stderr  # the checkpoint's total, not the draft preset's 200
