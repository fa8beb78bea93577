"""The `t2l` command line. Each subcommand lives in its own module and registers on `app`."""

from __future__ import annotations

# Importing these registers their commands; they import torch only inside the command bodies.
from t2l.cli import atlas, image, models, render, video  # noqa: E402,F401
from t2l.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
