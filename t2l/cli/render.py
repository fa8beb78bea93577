"""`t2l render DIR -o OUT`: render an atlas folder's edits to video, or re-render an image run.

DIR decides what happens: an atlas folder (atlas.json) maps RGBA atlas edits onto the original
frames (docs/render.md); an image run (run.json with "kind": "image") is handed to
t2l.image_render. torch is imported inside the command (t2l --help stays fast).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from t2l.cli.app import Command, app
from t2l.cli.common import (
    FLAG,
    DeviceOpt,
    JsonOpt,
    check_output_dir,
    emit_json,
    handle_errors,
    info,
    make_progress,
)
from t2l.errors import InputError, UsageError

_ATLAS = "Atlas folders"
_IMAGE = "Image runs"
_SUFFIX_FORMAT = {".mp4": "mp4", ".mov": "prores", ".webm": "webm"}
_FORMAT_SUFFIX = {"mp4": ".mp4", "prores": ".mov", "webm": ".webm"}


def plan_outputs(out: Path, formats: list[str] | None) -> dict[str, Path]:
    """Format -> output path. One format: OUT itself (OUT.mp4 if OUT has no extension). Several: OUT's
    extension swapped per format, the png folder being OUT without extension. No --format: OUT's
    extension decides (.mp4, .mov = prores, .webm), else mp4."""
    if not formats:
        suffix = out.suffix.lower()
        if suffix in _SUFFIX_FORMAT:
            return {_SUFFIX_FORMAT[suffix]: out}
        if suffix:
            raise UsageError(
                f"cannot tell the format from {out.name!r}",
                "name the output .mp4, .mov (ProRes 4444) or .webm, or pass --format (png for a folder of frames)",
            )
        return {"mp4": out.with_suffix(".mp4")}
    plan = {}
    fmts = list(dict.fromkeys(f.lower() for f in formats))
    for fmt in fmts:
        if fmt not in (*_FORMAT_SUFFIX, "png"):
            raise UsageError(f"unknown --format {fmt!r}", "use mp4, png, prores or webm")
        if len(fmts) == 1:
            plan[fmt] = out if fmt == "png" or out.suffix else out.with_suffix(_FORMAT_SUFFIX[fmt])
        else:
            base = out.with_suffix("") if out.suffix.lower() in _SUFFIX_FORMAT else out
            plan[fmt] = base if fmt == "png" else base.with_suffix(_FORMAT_SUFFIX[fmt])
    return plan


def _check_free(targets: list[tuple[Path, bool]], overwrite: bool) -> None:
    """Each (path, is_folder) must be free, or --overwrite given and of the same kind."""
    for p, is_folder in targets:
        if not p.exists():
            continue
        if p.is_dir() != is_folder:
            raise UsageError(f"{p} exists and is a {'folder' if p.is_dir() else 'file'}", "choose another -o")
        if (p.is_file() or any(p.iterdir())) and not overwrite:
            raise UsageError(f"{p} already exists", "pass --overwrite or choose another -o")


def _check_writable(path: Path, is_folder: bool) -> None:
    """Create the folder that will hold `path` (or `path` itself for a folder) or fail in one line."""
    check_output_dir(path if is_folder else path.parent)


@app.command("render", cls=Command, no_args_is_help=True)
@handle_errors
def render(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="An atlas folder (t2l atlas) or an image run folder.")
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Output file (.mp4/.mov/.webm), or folder with --format png."),
    ],
    fg: Annotated[
        Path | None,
        typer.Option(
            "--fg", help="RGBA edit of the foreground atlas [DIR/edits/fg.png].", rich_help_panel=_ATLAS
        ),
    ] = None,
    bg: Annotated[
        Path | None,
        typer.Option(
            "--bg", help="RGBA edit of the background atlas [DIR/edits/bg.png].", rich_help_panel=_ATLAS
        ),
    ] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="mp4 (composited video), prores or webm (RGBA edit layer), png (folder of RGBA layer "
            "frames); repeatable (default: from -o's extension: .mp4, .mov, .webm; else mp4).",
            rich_help_panel=_ATLAS,
        ),
    ] = None,
    frames: Annotated[
        bool,
        typer.Option(
            "--frames",
            metavar=FLAG,
            help="Also write the composited frames as PNG into OUT-frames/.",
            rich_help_panel=_ATLAS,
        ),
    ] = False,
    resolution: Annotated[
        str,
        typer.Option(
            "--resolution",
            help="working (the atlas frames) or source (decode the source video again).",
            rich_help_panel=_ATLAS,
        ),
    ] = "working",
    crf: Annotated[
        int, typer.Option("--crf", help="MP4 quality, 0-51, lower is better.", rich_help_panel=_ATLAS)
    ] = 18,
    input_image: Annotated[
        Path | None,
        typer.Option("--input", help="Apply the run's edit to this image instead.", rich_help_panel=_IMAGE),
    ] = None,
    size: Annotated[
        int | None, typer.Option("--size", help="Render at this shorter side in px.", rich_help_panel=_IMAGE)
    ] = None,
    device: DeviceOpt = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", metavar=FLAG, help="Replace existing outputs.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render DIR: an atlas folder's RGBA edits mapped onto the video, or an image run."""
    if not folder.is_dir():
        raise InputError(
            f"{folder} is not a folder", "pass an atlas folder (t2l atlas) or an image run folder"
        )
    if (folder / "atlas.json").is_file():
        _render_atlas(folder, output, fg, bg, formats, frames, resolution, crf, overwrite, as_json)
        return
    run_json = folder / "run.json"
    if run_json.is_file():
        try:
            kind = json.loads(run_json.read_text()).get("kind")
        except (ValueError, AttributeError) as e:
            raise InputError(f"cannot read {run_json}: {e}", "re-run the edit that made it") from None
        if kind == "image":
            _render_image(folder, output, input_image, size, device, overwrite, as_json)
            return
        if kind == "video":
            _render_video_run(
                folder, run_json, output, fg, bg, formats, frames, resolution, crf, overwrite, as_json
            )
            return
    raise InputError(
        f"{folder} is neither an atlas folder (atlas.json) nor an image or video run (run.json)",
        "pass a folder made by t2l atlas, t2l image or t2l video",
    )


def _render_video_run(
    run_dir, run_json, output, fg, bg, formats, frames, resolution, crf, overwrite, as_json
):
    """A `t2l video` run folder: its edit.png over its atlas (only that edit; --fg/--bg add the other layer)."""
    from t2l.run import file_sha256

    info_ = json.loads(run_json.read_text())
    atlas, layer = Path(info_.get("input", "")), info_.get("layer")
    edit = run_dir / "edit.png"
    if info_.get("status") != "done" or not edit.is_file():
        raise InputError(f"{run_dir} holds no finished video edit", "finish it with t2l video ... --resume")
    if not (atlas / "atlas.json").is_file():
        raise InputError(
            f"the run's atlas folder {atlas} is gone", f"render with t2l render ATLAS --{layer} {edit}"
        )
    if (fg if layer == "fg" else bg) is not None:
        raise UsageError(
            f"{run_dir} is an edit of the {layer} layer; --{layer} would replace it",
            f"pass only the other layer's edit, or render the atlas: t2l render {atlas} --{layer} FILE",
        )
    want = info_.get("atlas_sha256")
    if want and file_sha256(atlas / "atlas.json") != want:
        raise InputError(
            f"the atlas {atlas} has changed since {run_dir} was trained (refitted?)",
            f"edit it again with t2l video, or render the old edit anyway: t2l render ATLAS --{layer} {edit}",
        )
    given = {"fg": fg, "bg": bg, layer: edit}
    _render_atlas(
        atlas, output, given["fg"], given["bg"], formats, frames, resolution, crf, overwrite, as_json, False
    )


def _render_atlas(
    folder, output, fg, bg, formats, frames, resolution, crf, overwrite, as_json, atlas_edits: bool = True
) -> None:
    from t2l.atlas.folder import load_atlas
    from t2l.atlas.render import load_edit, render_to_files

    if resolution not in ("working", "source"):
        raise UsageError(
            f"--resolution must be working or source, got {resolution!r}",
            "use working (atlas frames) or source (decode the source video again)",
        )
    if not 0 <= crf <= 51:
        raise UsageError(f"--crf must be in 0..51, got {crf}", "17-23 is the usual range")
    plan = plan_outputs(output, formats)
    frames_dir = output.with_suffix("").with_name(output.with_suffix("").name + "-frames") if frames else None
    targets = [(p, fmt == "png") for fmt, p in plan.items()] + ([(frames_dir, True)] if frames_dir else [])
    _check_free(targets, overwrite)

    t0 = time.perf_counter()
    data = load_atlas(folder, with_frames=resolution == "working")
    names = [lay.name for lay in data.layers]
    given = {"fg": fg, "bg": bg}
    for name, path in given.items():
        if path is not None and name not in names:
            raise UsageError(
                f"--{name} given but this atlas has no {name} layer", f"its layers: {', '.join(names)}"
            )
    paths = {name: given[name] or folder / "edits" / f"{name}.png" for name in names}
    paths = {name: p for name, p in paths.items() if given[name] is not None or (atlas_edits and p.is_file())}
    if not paths:
        raise InputError(
            f"no edit to render in {folder}",
            "pass --fg/--bg RGBA images painted over layers/<name>/atlas.png, or put them in DIR/edits/",
        )
    edits = {name: load_edit(p, data.layer(name)) for name, p in paths.items()}
    for p, is_folder in targets:
        _check_writable(p, is_folder)

    t_count = data.layers[0].uv.shape[0]
    info(f"rendering {', '.join(paths)} edit(s) over {t_count} frames at {resolution} resolution")
    with make_progress() as progress:
        task = progress.add_task("render", total=t_count, status="")
        for done in render_to_files(data, edits, plan, resolution, crf, frames_dir):
            progress.update(task, completed=done)
    seconds = time.perf_counter() - t0
    for p, _ in targets:
        info(f"wrote {p}")
    if as_json:
        emit_json(
            {
                "kind": "atlas",
                "input": str(folder),
                "outputs": {fmt: str(p) for fmt, p in plan.items()},
                "frames_dir": str(frames_dir) if frames_dir else None,
                "edits": {name: str(p) for name, p in paths.items()},
                "frames": t_count,
                "resolution": resolution,
                "seconds": round(seconds, 3),
            }
        )


def image_run_targets(output: Path) -> list[Path]:
    """The files `t2l render RUN -o OUTPUT` writes for an image run (t2l.image_render's naming):
    OUTPUT.png and OUTPUT_edit.png for an image path, else the four PNGs inside folder OUTPUT."""
    from t2l.image_render import IMAGE_SUFFIXES

    if output.suffix.lower() in IMAGE_SUFFIXES:
        return [output, output.with_name(f"{output.stem}_edit.png")]
    return [output / f"{name}.png" for name in ("edit", "composite", "greenscreen", "alpha")]


def _render_image(folder, output, input_image, size, device, overwrite, as_json) -> None:
    from t2l.image_render import render_image_run

    targets = image_run_targets(output)
    is_folder = targets[0].parent == output
    if output.exists() and output.is_dir() != is_folder:
        kind = "folder" if output.is_dir() else "file"
        raise UsageError(f"{output} exists and is a {kind}", "choose another -o")
    taken = [p for p in targets if p.exists()]
    if taken and not overwrite:
        names = ", ".join(p.name for p in taken)
        problem = f"{output} already holds {names}" if is_folder else f"{taken[0]} already exists"
        raise UsageError(problem, "pass --overwrite or choose another -o")
    _check_writable(output, is_folder)
    t0 = time.perf_counter()
    result = render_image_run(folder, output, input=input_image, size=size, device=device)
    outputs = result.get("outputs", {}) if isinstance(result, dict) else {}
    for p in outputs.values() or [output]:
        info(f"wrote {p}")
    if as_json:
        extra = result if isinstance(result, dict) else {}
        emit_json(
            {**extra, "kind": "image", "run": str(folder), "seconds": round(time.perf_counter() - t0, 3)}
        )
