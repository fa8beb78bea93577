"""What every subcommand shares: option types, error handling, console, progress, JSON output.

The core (t2l/*) never imports this module: it raises T2LError and yields events; the CLI
turns those into one-line errors, exit codes, Rich progress bars and JSON lines.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from t2l.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_RESOURCES, T2LError

err_console = Console(stderr=True, highlight=False)
_state = {"quiet": False, "verbose": False}

# ---- shared option types (same names and env vars in every subcommand) -------------------------

# metavar of an on/off flag: nothing. Without it Typer's help prints the type (`--json <bool>`), which
# reads as if the flag took a value. Every bool option passes typer.Option(..., metavar=FLAG).
FLAG = ""

ClipModelOpt = Annotated[
    str,
    typer.Option(
        "--clip-model",
        envvar="T2L_CLIP_MODEL",
        help="open_clip model name, or a path to a JSON model config.",
        rich_help_panel="CLIP",
    ),
]
ClipWeightsOpt = Annotated[
    str,
    typer.Option(
        "--clip-weights",
        envvar="T2L_CLIP_WEIGHTS",
        help="Pretrained tag (openai), a local .safetensors/.bin/.pt file, or hf-hub:ORG/REPO.",
        rich_help_panel="CLIP",
    ),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        metavar=FLAG,
        envvar=["T2L_OFFLINE", "HF_HUB_OFFLINE"],
        help="Never touch the network; use cached or local weights only.",
        rich_help_panel="CLIP",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", envvar="T2L_DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda or mps."),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed", help="Random seed; drawn when omitted and always recorded (run.json or atlas.json)."
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", metavar=FLAG, help="Print one JSON object per result on stdout (for scripts)."),
]

# ---- options shared by the editing commands (t2l image, t2l video) -----------------------------

PROMPTS_PANEL, RUN_PANEL = "Prompts", "Run"
RoiOpt = Annotated[
    str | None,
    typer.Option(
        "--roi",
        help="Region to edit (e.g. 'the cake'); bootstraps the alpha from CLIP relevancy.",
        rich_help_panel=PROMPTS_PANEL,
    ),
]
ScreenOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--screen",
        help="What the edit layer alone shows over a green screen (default: PROMPT).",
        rich_help_panel=PROMPTS_PANEL,
    ),
]
SrcOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--src",
        help="What the input shows, for the directional loss (default: the --roi text, or 'photo').",
        rich_help_panel=PROMPTS_PANEL,
    ),
]
MorePromptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="Another prompt describing the same edit (repeatable).",
        rich_help_panel=PROMPTS_PANEL,
    ),
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset", help="auto (paper on GPU, draft on CPU), draft or paper.", rich_help_panel=RUN_PANEL
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Total training steps (default: from --preset; on --resume: the checkpoint's).",
        rich_help_panel=RUN_PANEL,
    ),
]
ViewsOpt = Annotated[
    int | None,
    typer.Option(
        "--views",
        help="CLIP views per training item and step (default: from --preset).",
        rich_help_panel=RUN_PANEL,
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="fp32 (default), or on a CUDA GPU bf16 / tf32; on --resume, changes the checkpoint's.",
        rich_help_panel=RUN_PANEL,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        metavar=FLAG,
        help="Continue an interrupted run from its checkpoint.",
        rich_help_panel=RUN_PANEL,
    ),
]
SaveEveryOpt = Annotated[
    int,
    typer.Option(
        "--save-every", help="Snapshot + checkpoint every N steps (0: off).", rich_help_panel=RUN_PANEL
    ),
]
GenDepthOpt = Annotated[int, typer.Option("--gen-depth", hidden=True)]
GenWidthOpt = Annotated[int, typer.Option("--gen-width", hidden=True)]


DEFAULT_CLIP_MODEL = "ViT-B-32-quickgelu"
DEFAULT_CLIP_WEIGHTS = "openai"


# ---- logging / console -------------------------------------------------------------------------


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Rich logging on stderr. Must run before open_clip is imported (it adds a root handler)."""
    from rich.logging import RichHandler

    _state.update(quiet=quiet, verbose=verbose)
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    root = logging.getLogger()
    root.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False)]
    root.setLevel(level)
    logging.getLogger("t2l").setLevel(
        logging.DEBUG if verbose else logging.INFO if not quiet else logging.ERROR
    )


def info(message: str) -> None:
    """One line of status on stderr (suppressed by --quiet)."""
    if not _state["quiet"]:
        err_console.print(message, soft_wrap=True)


def is_quiet() -> bool:
    return _state["quiet"]


def emit_json(obj: dict[str, Any]) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _rate_column_class():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Steps per second (or seconds per step when slower than 1/s)."""

        def render(self, task):
            speed = task.speed
            if not speed:
                return Text("  -- it/s")
            return Text(f"{speed:5.2f} it/s" if speed >= 1 else f"{1 / speed:5.1f} s/it")

    return RateColumn


def make_progress(transient: bool = False):
    """A Rich progress bar on stderr: step, rate, ETA and a free-form `status` field.

    When stderr is not a terminal Rich draws nothing until the end (no bar spam in logs).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    _RateColumn = _rate_column_class()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=transient,
        disable=_state["quiet"],
    )


def download_progress_class():
    """A tqdm subclass (what hf_hub_download's tqdm_class expects) drawn as a Rich bar on stderr.

    Subclassing tqdm keeps its whole API (total, n, refresh, set_postfix...) that huggingface_hub's
    xet downloads use; we only replace the drawing. Subcommands pass it to
    load_clip(..., download_progress=...). None under --quiet (huggingface_hub's default then).
    """
    if is_quiet():
        return None
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from tqdm.std import tqdm

    class RichDownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)  # huggingface_hub's own tqdm takes it; plain tqdm does not
            kwargs["gui"] = True  # tqdm keeps counting but does not print
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)
            self._rich = Progress(
                TextColumn("[bold]download[/] {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err_console,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.desc or "", total=self.total, completed=self.n)

        def display(self, *args, **kwargs):
            if hasattr(self, "_task"):
                self._rich.update(self._task, completed=self.n, total=self.total, description=self.desc or "")

        def clear(self, *args, **kwargs):
            pass

        def close(self):
            if hasattr(self, "_task") and not self.disable:
                self.display()
                self._rich.stop()
            super().close()

    return RichDownloadBar


# ---- errors ------------------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


# What to try when a command runs out of memory: only flags that command has. Keyed by the command's
# function name (or handle_errors(command=...)); "gpu" is said on CUDA out-of-memory, "ram" on a
# MemoryError. A command without an entry gets the generic hint.
RESOURCE_FIXES: dict[str, dict[str, str]] = {
    "image": {
        "gpu": "use --preset draft, a smaller --size, fewer --views or --precision bf16",
        "ram": "use --preset draft, a smaller --size or fewer --views",
    },
    "atlas": {
        "gpu": "use --preset draft, a smaller --size or fewer --max-frames, or --device cpu",
        "ram": "use a smaller --size or fewer --max-frames",
    },
    "video": {
        "gpu": "use --preset draft, fewer --views or --precision bf16, or fit the atlas at a smaller --size",
        "ram": "use --preset draft or fewer --views, or fit the atlas with fewer --max-frames",
    },
    "render": {
        "gpu": "use --device cpu, or --resolution working (atlas) or a smaller --size (image run)",
        "ram": "use --resolution working (atlas) or a smaller --size (image run)",
    },
}
_GENERIC_FIXES = {"gpu": "close other GPU programs or use --device cpu", "ram": "close other programs"}


def resource_fix(command: str, kind: str) -> str:
    """The out-of-memory hint for `command` ("image", "atlas", ...); kind is "gpu" or "ram"."""
    return RESOURCE_FIXES.get(command, _GENERIC_FIXES)[kind]


def handle_errors(fn: Callable | None = None, *, command: str | None = None) -> Callable:
    """Turn T2LError, Ctrl-C, OOM and disk-full into one line on stderr and a documented exit code.

    Use as @handle_errors (the hints follow the function's name) or @handle_errors(command="video").
    """
    if fn is None:
        return functools.partial(handle_errors, command=command)
    name = command or fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except T2LError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail(
                "interrupted; finished outputs are kept, rerun with --resume to continue", EXIT_INTERRUPTED
            ) from None
        except MemoryError:
            raise fail(f"out of memory; {resource_fix(name, 'ram')}", EXIT_RESOURCES) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                where = f" writing {e.filename}" if e.filename else ""
                raise fail(
                    f"no space left on device{where}; free some space or choose another -o", EXIT_RESOURCES
                ) from None
            if os.environ.get("T2L_DEBUG"):
                raise
            raise fail(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}") from None
        except Exception as e:  # noqa: BLE001
            if (
                type(e).__name__ == "OutOfMemoryError"
            ):  # torch's (CUDA) OutOfMemoryError, without importing torch
                raise fail(f"GPU out of memory; {resource_fix(name, 'gpu')}", EXIT_RESOURCES) from None
            if isinstance(e, RuntimeError) and _CPU_ALLOC_FAILED in str(e):  # torch's CPU allocator
                raise fail(f"out of memory; {resource_fix(name, 'ram')}", EXIT_RESOURCES) from None
            if os.environ.get("T2L_DEBUG"):
                raise
            raise fail(
                f"internal error: {type(e).__name__}: {e} (set T2L_DEBUG=1 for a traceback and please report it)"
            ) from None

    return wrapper


_CPU_ALLOC_FAILED = "DefaultCPUAllocator"  # in torch's RuntimeError when a CPU tensor cannot be allocated


def check_output_dir(path: Path) -> Path:
    """Create `path` (and parents) or fail with a one-line error naming it."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise T2LError(
            f"cannot write to output folder {path}: {blocker} is a file, not a folder", "choose another -o"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".t2l-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise T2LError(
            f"cannot write to output folder {path}: {e.strerror or e}", "choose another -o"
        ) from None
    return path


@contextlib.contextmanager
def output_dir(path: Path):
    """check_output_dir(path) for the body; if the body fails, the folders it created here that are
    still empty are removed again (a failed run leaves no empty output folder behind)."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    check_output_dir(path)
    try:
        yield path
    except BaseException:
        for p in created:  # deepest first; stops at the first one that holds something
            try:
                p.rmdir()
            except OSError:
                break
        raise
