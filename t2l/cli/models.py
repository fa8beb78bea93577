"""t2l models subcommand."""

from __future__ import annotations

from t2l.cli.app import app  # noqa: F401
