"""The CLI shell: fast startup without torch, version, error mapping, atomic writes."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from t2l import __version__
from t2l.cli import app
from t2l.cli.common import handle_errors
from t2l.errors import (
    EXIT_INTERRUPTED,
    EXIT_RESOURCES,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    InputError,
    UsageError,
    WeightsUnavailable,
)
from t2l.files import _umask, atomic_path, write_json_atomic

runner = CliRunner()


def test_cli_import_does_not_load_torch_or_open_clip():
    code = "import sys, t2l.cli; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"t2l {__version__}"
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("image", "atlas", "render", "models"):
        assert cmd in r.stdout


def _app_raising(exc: BaseException) -> typer.Typer:
    a = typer.Typer()

    @a.command()
    @handle_errors
    def boom(name: str = "x") -> None:
        raise exc

    return a


@pytest.mark.parametrize(
    "exc, code, words",
    [
        (InputError("cannot read photo.jpg: not an image", "pass a PNG or JPEG"), 1, "photo.jpg"),
        (UsageError("the prompt is empty", 'give a text such as "oreo cake"'), EXIT_USAGE, "prompt"),
        (WeightsUnavailable("no CLIP weights", "run t2l models download"), EXIT_WEIGHTS, "download"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "--resume"),
        (OSError(errno.ENOSPC, "No space left on device", "/out/edit.png"), EXIT_RESOURCES, "/out/edit.png"),
        (RuntimeError("something broke"), 1, "T2L_DEBUG"),
    ],
)
def test_errors_are_one_line_with_documented_exit_code(exc, code, words):
    r = runner.invoke(_app_raising(exc), [])
    assert r.exit_code == code
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "edit.png"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("interrupted")
    assert list(target.parent.iterdir()) == []
    write_json_atomic(target.with_suffix(".json"), {"a": 1})
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent
        tmp.write_bytes(b"full")
    assert target.read_bytes() == b"full"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["edit.json", "edit.png"]
