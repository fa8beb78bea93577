"""Bad inputs through the CLI: one-line error, documented exit code, no traceback, no leftovers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2l.cli import app

runner = CliRunner()
FAST = ["--steps", "2", "--size", "64", "--views", "1", "--gen-depth", "4", "--gen-width", "8", "--seed", "1"]


def invoke(args, **kw):
    r = runner.invoke(app, [str(a) for a in args], **kw)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from t2l.atlas.synthetic import SyntheticConfig, make_clip
    from t2l.video_write import write_mp4

    d = tmp_path_factory.mktemp("inputs")
    a = np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(a).save(d / "ok.png")
    Image.fromarray(a).save(d / "ok.jpg")
    for name in ("ok.png", "ok.jpg"):
        b = (d / name).read_bytes()
        (d / f"trunc{Path(name).suffix}").write_bytes(b[: len(b) // 2])
    (d / "text.jpg").write_text("not an image\n")
    write_mp4(d / "clip.mp4", make_clip(SyntheticConfig(frames=6, height=48, width=64)).frames, Fraction(24))
    b = (d / "clip.mp4").read_bytes()
    (d / "trunc.mp4").write_bytes(b[: len(b) // 3])
    (d / "afile").write_text("x")
    return d


# ---- t2l image -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt, value, needle",
    [("--steps", "0", "--steps 0 must be >= 1"), ("--views", "0", "--views 0 must be >= 1"),
     ("--size", "0", "--size 0 is below")],
)  # fmt: skip
def test_image_zero_options_are_usage_errors(files, tmp_path, tiny_clip_args, opt, value, needle):
    """0 used to fall back silently to the preset's value (`steps or preset`)."""
    args = ["image", files / "ok.png", "fire", *FAST, *tiny_clip_args, "-o", tmp_path / "out", opt, value]
    r = invoke(args)
    assert r.exit_code == 2
    assert needle in one_error_line(r)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, needle",
    [("trunc.png", "corrupt or truncated"), ("trunc.jpg", "corrupt or truncated"),
     ("text.jpg", "not an image"), ("clip.mp4", "not an image"), ("missing.png", "does not exist")],
)  # fmt: skip
def test_image_bad_inputs(files, tmp_path, tiny_clip_args, name, needle):
    src = files / name
    before = digest(src) if src.exists() else None
    r = invoke(["image", src, "fire", *FAST, *tiny_clip_args, "-o", tmp_path / "out"])
    assert r.exit_code == 1
    assert needle in one_error_line(r)
    assert not (tmp_path / "out").exists()
    assert (digest(src) if src.exists() else None) == before


def test_image_no_weights_leaves_no_empty_output_folder(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "a" / "b"
    r = invoke(["image", files / "ok.png", "fire", *FAST, "--offline", "-o", out])
    assert r.exit_code == 3
    assert "t2l models download" in one_error_line(r)
    assert not out.exists() and not (tmp_path / "a").exists()


def test_image_unreadable_weights_leaves_no_empty_output_folder(files, tmp_path, tiny_clip_files):
    cfg, _ = tiny_clip_files
    out = tmp_path / "out"
    args = ["image", files / "ok.png", "fire", *FAST, "--offline", "--clip-model", cfg]
    r = invoke([*args, "--clip-weights", files / "ok.png", "-o", out])
    assert r.exit_code == 1
    assert "cannot read CLIP weights" in one_error_line(r)
    assert not out.exists()


def test_image_output_under_a_file(files, tiny_clip_args):
    r = invoke(["image", files / "ok.png", "fire", *FAST, *tiny_clip_args, "-o", files / "afile" / "sub"])
    assert r.exit_code == 1
    assert "is a file, not a folder; choose another -o" in one_error_line(r)


# ---- t2l atlas -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atlas_dir(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas") / "a"
    r = invoke(["atlas", files / "clip.mp4", "-o", out, "--steps", "3", "--size", "64", "--seed", "0"])
    assert r.exit_code == 0, r.stderr
    return out


@pytest.mark.parametrize(
    "extra, code, needle",
    [(["--stride", "0"], 2, "--stride 0 must be >= 1; use 1"), (["--start", "-1"], 2, "--start -1 must be >= 0"),
     (["--max-frames", "0"], 2, "too few"), (["--layers", "3"], 2, "not supported")],
)  # fmt: skip
def test_atlas_bad_options(files, tmp_path, extra, code, needle):
    r = invoke(["atlas", files / "clip.mp4", "-o", tmp_path / "a", *extra])
    assert r.exit_code == code
    assert needle in one_error_line(r)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "name, needle",
    [("ok.png", "is a still image, not a video"), ("trunc.mp4", "corrupt"), ("text.jpg", "still image")],
)
def test_atlas_bad_inputs_leave_no_folder(files, tmp_path, name, needle):
    before = digest(files / name)
    r = invoke(["atlas", files / name, "-o", tmp_path / "a", "--steps", "2", "--size", "64"])
    assert r.exit_code == 1
    assert needle in one_error_line(r)
    assert not (tmp_path / "a").exists()
    assert digest(files / name) == before


def test_atlas_unfinished_fit_needs_resume_or_overwrite(files, tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "model.pt").write_bytes(b"partial")
    r = invoke(["atlas", files / "clip.mp4", "-o", out, "--steps", "2", "--size", "64"])
    assert r.exit_code == 2
    assert "unfinished fit" in one_error_line(r) and "--resume" in r.stderr
    assert (out / "model.pt").read_bytes() == b"partial"


def test_atlas_resume_of_finished_atlas_needs_more_steps(files, atlas_dir):
    r = invoke(["atlas", files / "clip.mp4", "-o", atlas_dir, "--resume"])  # the saved total: nothing to do
    assert r.exit_code == 2
    assert "already fitted (3 steps)" in one_error_line(r)
    r = invoke(["atlas", files / "clip.mp4", "-o", atlas_dir, "--resume", "--steps", "2"])  # below the total
    assert r.exit_code == 2
    assert "--steps 2 is below the 3 steps already done" in one_error_line(r)
    assert (atlas_dir / "atlas.json").is_file()


# ---- t2l render / models ------------------------------------------------------------------------


def test_render_bad_resolution_names_the_fix(atlas_dir, tmp_path):
    r = invoke(["render", atlas_dir, "-o", tmp_path / "x.mp4", "--resolution", "4k"])
    assert r.exit_code == 2
    assert "use working" in one_error_line(r)


def test_render_image_run_output_under_a_file(files, tmp_path, tiny_clip_args):
    run = tmp_path / "run"
    r = invoke(["image", files / "ok.png", "fire", *FAST, *tiny_clip_args, "-o", run])
    assert r.exit_code == 0, r.stderr
    r = invoke(["render", run, "-o", files / "afile" / "x.png"])
    assert r.exit_code == 1
    assert "is a file, not a folder; choose another -o" in one_error_line(r)


def test_models_list_cache_dir_is_a_file(files):
    r = invoke(["models", "list", "--cache-dir", files / "afile"])
    assert r.exit_code == 2
    assert "is a file, not a folder" in one_error_line(r)


# ---- Ctrl-C ----------------------------------------------------------------------------------------


def _t2l(args, **kw) -> subprocess.Popen:
    """A real `t2l` process that takes SIGINT as KeyboardInterrupt (even when started in the background)."""
    return subprocess.Popen(
        [sys.executable, "-m", "t2l", *map(str, args)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


class _StderrReader:
    """Collects a child's stderr in a thread, so waiting on its output never blocks the test."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stderr.readline, "")))
        self._thread.daemon = True
        self._thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def rest(self, timeout: float = 60.0) -> str:
        """Everything the child wrote, once it has closed stderr (exited); closes our end of the pipe."""
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._proc.stderr.close()
        return self.text()


def _wait_for(cond, proc, timeout=90.0) -> None:
    """Poll cond() until true; fail (never hang) if the child exits first or `timeout` seconds pass."""
    t_end = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"t2l exited with {proc.returncode} before the condition held"
        assert time.monotonic() < t_end, f"timed out after {timeout} s"
        time.sleep(0.05)


def test_waiting_on_a_stalled_child_times_out_instead_of_hanging():
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE, text=True
    )
    reader = _StderrReader(p)
    t0 = time.monotonic()
    try:
        with pytest.raises(AssertionError, match="timed out after 1.0 s"):
            _wait_for(lambda: "steps on" in reader.text(), p, timeout=1.0)
        assert time.monotonic() - t0 < 10
    finally:
        p.kill()
        p.wait()
        reader.rest(timeout=10)


def test_image_ctrl_c_checkpoints_and_resumes(files, tmp_path, tiny_clip_args):
    out = tmp_path / "run"
    args = ["image", files / "ok.png", "fire", "--steps", "200", "--size", "64", "--views", "1",
            "--gen-depth", "4", "--gen-width", "8", "--seed", "1", "--save-every", "5", *tiny_clip_args, "-o", out]  # fmt: skip
    p = _t2l(args)
    reader = _StderrReader(p)
    _wait_for(lambda: (out / "checkpoint.pt").exists(), p)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    err = reader.rest()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    assert (out / "checkpoint.pt").is_file()
    r = invoke(args[:-2] + ["-o", out])  # without --resume: refused, nothing touched
    assert r.exit_code == 1 and "unfinished run" in one_error_line(r)
    import torch

    done = torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["step"]
    r = invoke([*args, "--resume", "--steps", str(done + 2)])  # --steps is the total: 2 more, not ~195
    assert r.exit_code == 0, r.stderr
    assert f"from step {done}/{done + 2}" in r.stderr
    assert (out / "composite.png").is_file() and not (out / "checkpoint.pt").exists()


def test_atlas_ctrl_c_checkpoints_and_resumes(files, tmp_path):
    out = tmp_path / "a"
    p = _t2l(["atlas", files / "clip.mp4", "-o", out, "--steps", "1000000", "--size", "64", "--seed", "0"])
    reader = _StderrReader(p)
    _wait_for(lambda: "steps on" in reader.text(), p)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    err = reader.rest()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert (out / "model.pt").is_file() and not (out / "atlas.json").exists()
    from t2l.atlas.folder import load_model_state

    done = load_model_state(out / "model.pt")["step"]  # --steps is the total: one step more than saved
    r = invoke(["atlas", files / "clip.mp4", "-o", out, "--resume", "--steps", str(done + 1)])
    assert r.exit_code == 0, r.stderr
    assert f"resuming at step {done}/{done + 1}" in r.stderr
    assert (out / "atlas.json").is_file()


def test_atlas_resume_from_corrupt_checkpoint(files, tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "model.pt").write_bytes(b"junk\n")
    r = invoke(["atlas", files / "clip.mp4", "-o", out, "--resume"])
    assert r.exit_code == 1
    line = one_error_line(r)
    assert "cannot read" in line and "--overwrite" in line and "internal error" not in line
