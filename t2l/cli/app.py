"""The Typer application object. Subcommand modules register themselves on it.

Nothing here imports torch or open_clip: `t2l --help` and `t2l --version` must stay fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from t2l import __version__


class _UntypedHelp:
    """-h/--help shows no type in the help (Typer prints `<bool>` there otherwise)."""

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt


class Command(_UntypedHelp, typer.core.TyperCommand):
    """A subcommand (t2l atlas, t2l models list, ...)."""


class Group(_UntypedHelp, typer.core.TyperGroup):
    """A group (t2l, t2l models)."""


app = typer.Typer(
    cls=Group,
    name="t2l",
    help="Edit photos and videos from a text prompt (Text2LIVE): train a small generator per input, "
    "guided by CLIP, that outputs an RGBA edit layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"t2l {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, metavar="", help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", metavar="", help="Log more detail to stderr.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", metavar="", help="Only errors on stderr; no progress bars.")
    ] = False,
) -> None:
    """Edit photos and videos from a text prompt (Text2LIVE)."""
    from t2l.cli.common import configure_logging

    configure_logging(verbose=verbose, quiet=quiet)
