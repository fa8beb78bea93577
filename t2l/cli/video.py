"""`t2l video INPUT PROMPT`: text-driven editing of one layer of a video, through its layered atlas.

INPUT is an atlas folder (`t2l atlas`), or a video file: its atlas is then fitted first into
<video stem>.atlas/ beside it (reused when complete, continued when unfinished). Draws the core's
events (t2l/video.py) as progress bars, one-line notes, the consistency report and a JSON line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from t2l.cli.app import Command, app
from t2l.cli.common import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_WEIGHTS,
    FLAG,
    ClipModelOpt,
    ClipWeightsOpt,
    DeviceOpt,
    GenDepthOpt,
    GenWidthOpt,
    JsonOpt,
    MorePromptOpt,
    OfflineOpt,
    PrecisionOpt,
    PresetOpt,
    ResumeOpt,
    RoiOpt,
    SaveEveryOpt,
    ScreenOpt,
    SeedOpt,
    SrcOpt,
    StepsOpt,
    ViewsOpt,
    download_progress_class,
    emit_json,
    info,
    make_progress,
    output_dir,
)
from t2l.cli.common import handle_errors as _handle_errors
from t2l.errors import InputError, UsageError

_PROMPTS = "Prompts"
_RUN = "Run"
_OUT = "Outputs"
RUN_FILES = ("checkpoint.pt", "run.json", "generator.pt", "edit.png", "video.mp4", "greenscreen.mp4",
             "layer.mov", "layer.webm")  # fmt: skip
RUN_FOLDERS = ("layer", "snapshots")


@app.command("video", cls=Command, no_args_is_help=True)
@_handle_errors
def video(
    input_path: Annotated[
        Path,
        typer.Argument(metavar="INPUT", help="An atlas folder (t2l atlas), or a video file to fit one for."),
    ],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The edit, e.g. 'rusty car'.")],
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Atlas layer to edit: fg or bg (default: fg when the atlas has one, else bg).",
            rich_help_panel=_PROMPTS,
        ),
    ] = None,
    roi: RoiOpt = None,
    screen: ScreenOpt = None,
    src: SrcOpt = None,
    more: MorePromptOpt = None,
    preset: PresetOpt = "auto",
    steps: StepsOpt = None,
    views: ViewsOpt = None,
    bootstrap_steps: Annotated[
        int,
        typer.Option(
            "--bootstrap-steps",
            help="With --roi: stop the ROI bootstrap after N steps (0: the whole run).",
            rich_help_panel=_RUN,
        ),
    ] = 0,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Run folder (default: ATLAS/runs/<layer>-<prompt>).", rich_help_panel=_OUT
        ),
    ] = None,
    json_out: JsonOpt = False,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            metavar=FLAG,
            help="Replace an existing run in the run folder.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    save_every: SaveEveryOpt = 0,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="Edit-layer deliverables besides video.mp4: png (RGBA frames, default), prores (.mov), webm (VP9 alpha). Repeatable.",
            rich_help_panel=_OUT,
        ),
    ] = None,
    resolution: Annotated[
        str,
        typer.Option(
            "--resolution",
            help="working (the atlas frames) or source (decode the source again).",
            rich_help_panel=_OUT,
        ),
    ] = "working",
    crf: Annotated[
        int,
        typer.Option(
            "--crf", help="H.264 quality of video.mp4 (0-51, lower is better).", rich_help_panel=_OUT
        ),
    ] = 18,
    no_copy: Annotated[
        bool,
        typer.Option(
            "--no-copy",
            metavar=FLAG,
            help="Do not copy edit.png to ATLAS/edits/<layer>.png (what t2l render ATLAS uses).",
            rich_help_panel=_OUT,
        ),
    ] = False,
    clip_model: ClipModelOpt = DEFAULT_CLIP_MODEL,
    clip_weights: ClipWeightsOpt = DEFAULT_CLIP_WEIGHTS,
    offline: OfflineOpt = False,
    gen_depth: GenDepthOpt = 7,
    gen_width: GenWidthOpt = 128,
) -> None:
    """Edit one layer of a video from a text prompt: train a generator on the layer's atlas.

    Writes edit.png (the RGBA atlas edit), video.mp4 (the edited video over the original frames), the edit layer as RGBA PNG frames, greenscreen.mp4, generator.pt and run.json (with a consistency report).
    Example: t2l video car.atlas "rusty car" --layer fg --roi car
    """
    from t2l.prompts import make_prompts
    from t2l.run import output_state

    prompts = make_prompts(prompt, more=more, roi=roi, screen=screen, src=src)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "use one of them")
    for name, value in (("--steps", steps), ("--views", views)):
        if value is not None and value < 1:
            raise UsageError(f"{name} {value} must be >= 1", f"pass {name} 1 or more, or leave it out")
    for name, value in (("--save-every", save_every), ("--bootstrap-steps", bootstrap_steps)):
        if value < 0:
            raise UsageError(f"{name} {value} must be >= 0", "use 0 to turn it off")
    if resolution not in ("working", "source"):
        raise UsageError(f"--resolution {resolution!r} is unknown", "use working or source")
    if not 0 <= crf <= 51:
        raise UsageError(f"--crf {crf} is outside 0..51", "17-23 is the usual range")
    fmts = tuple(dict.fromkeys(formats or ["png"]))
    bad = [f for f in fmts if f not in ("png", "prores", "webm")]
    if bad:
        raise UsageError(f"unknown --format {bad[0]!r}", "use png, prores or webm")
    if gen_depth < 1 or gen_width < 1:
        raise UsageError(
            "generator depth and width must be >= 1", "leave --gen-depth/--gen-width at defaults"
        )
    if not input_path.exists():
        raise InputError(f"input not found: {input_path}", "pass an atlas folder (t2l atlas) or a video file")

    import torch

    from t2l.device import resolve_device
    from t2l.generator import GeneratorConfig
    from t2l.video import default_run_dir, pick_layer, resolve_config

    dev = resolve_device(device)
    gen_cfg = GeneratorConfig(depth=gen_depth, width=gen_width)
    # validate everything cheap before a possible atlas fit (minutes) and the CLIP load (seconds)
    resolve_config(
        preset,
        dev.type,
        layer or "fg",
        steps,
        views,
        save_every,
        gen_cfg,
        precision or "fp32",
        bootstrap_steps,
    )
    atlas_dir = _atlas_for(input_path, dev, json_out)
    from t2l.atlas.folder import load_atlas

    data = load_atlas(atlas_dir)
    name = pick_layer([lay.name for lay in data.layers], layer)
    cfg, note = resolve_config(
        preset, dev.type, name, steps, views, save_every, gen_cfg, precision or "fp32", bootstrap_steps
    )
    out = output if output is not None else default_run_dir(atlas_dir, name, prompt)
    state = output_state(out) if out.is_dir() else "empty"
    if state == "done" and not overwrite:
        raise UsageError(f"{out} already holds a finished edit", "pass --overwrite to redo it, or another -o")
    if state == "partial" and not (resume or overwrite):
        raise UsageError(
            f"{out} holds an unfinished run", "add --resume to continue it or --overwrite to restart"
        )
    if resume and state != "partial":
        raise UsageError(f"nothing to resume in {out} (no checkpoint.pt)", "run without --resume")
    if note and not resume:
        info(note)
    if seed is not None:
        torch.manual_seed(seed)

    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip

    clip = load_clip(ClipSpec(clip_model, clip_weights, offline), dev, download_progress_class())
    render = {
        "formats": fmts,
        "resolution": resolution,
        "crf": crf,
        "copy_edit": "no" if no_copy else "replace" if overwrite else "keep",
    }
    with output_dir(out):
        summary = _train(
            atlas_dir, data, prompts, cfg, clip, dev, out, seed, resume, (steps, precision), render, overwrite
        )
    if json_out:
        emit_json(summary)


def _atlas_for(input_path: Path, dev, json_out: bool) -> Path:
    """The atlas folder for INPUT: itself; for a video file or a folder of frames <stem>.atlas beside it,
    fitted with t2l atlas's defaults when missing, continued when unfinished, reused when complete."""
    from t2l.atlas.run import IMAGE_SUFFIXES, folder_state

    frames = input_path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in input_path.iterdir())
    if input_path.is_dir() and ((input_path / "atlas.json").exists() or not frames):
        if not (input_path / "atlas.json").exists():
            if (input_path / "model.pt").exists():
                raise InputError(
                    f"{input_path} holds an unfinished atlas fit",
                    f"finish it: t2l atlas VIDEO -o {input_path} --resume",
                )
            raise InputError(
                f"{input_path} is not an atlas folder (no atlas.json)",
                "fit one with t2l atlas VIDEO -o DIR, or pass the video file",
            )
        return input_path
    # a video file or a folder of frames: its atlas lives beside it
    atlas_dir = input_path.with_name((input_path.name if input_path.is_dir() else input_path.stem) + ".atlas")
    state = folder_state(atlas_dir) if atlas_dir.is_dir() else "empty"
    if state == "done":
        info(f"using the atlas fitted before in {atlas_dir} (delete it to refit)")
        return atlas_dir
    from t2l.atlas.run import AtlasRun
    from t2l.atlas.run import resolve_config as atlas_config
    from t2l.cli.atlas import _draw

    if state == "empty" and atlas_dir.exists() and any(atlas_dir.iterdir()):
        raise InputError(
            f"{atlas_dir} exists and is not an atlas folder", "move it away, or fit with t2l atlas -o DIR"
        )
    cfg, note = atlas_config("auto", dev.type)  # t2l atlas's defaults
    info(f"fitting the atlas of {input_path} into {atlas_dir} first" + (f" ({note})" if note else ""))
    run = AtlasRun.prepare(input_path, atlas_dir, cfg, dev, resume=state == "partial")
    with output_dir(atlas_dir):
        _draw(run, json_out=False)
    return atlas_dir


def _clear_run(out: Path) -> None:
    """Remove what an earlier run left in `out` (only t2l's own run files)."""
    import shutil

    for f in RUN_FILES:
        (out / f).unlink(missing_ok=True)
    for d in RUN_FOLDERS:
        if (out / d).is_dir():
            shutil.rmtree(out / d)


def _train(atlas_dir, data, prompts, cfg, clip, dev, out, seed, resume, overrides, render, overwrite) -> dict:
    """Train and render one run, drawing its progress; returns the JSON summary line."""
    from t2l.consistency import format_report
    from t2l.video import VideoRun

    steps, precision = overrides
    run = VideoRun.prepare(
        atlas_dir,
        prompts,
        cfg,
        clip,
        dev,
        out,
        seed=seed,
        resume=resume,
        steps=steps,
        precision=precision,
        data=data,
    )
    for n in run.notes:
        info(n)
    if overwrite:  # only once everything before training has worked: a failed start keeps the old run
        _clear_run(out)
    shown = len(run.notes)
    with make_progress() as progress:
        task = progress.add_task(
            f"{cfg.layer} edit", total=run.total_steps, status="", completed=run.done_steps
        )
        for ev in run.events():
            progress.update(task, completed=ev.step, status=f"loss {ev.loss:.3f}")
        task2 = progress.add_task("render", total=len(data.frames), status="", completed=0)
        for done, _total in run.finish(**render):
            progress.update(task2, completed=done)
    for n in run.notes[shown:]:
        info(n)
    s = run.summary
    t = s["timings"]
    for line in format_report(s.get("consistency") or {}):
        info(line)
    info(
        f"{cfg.layer} edit: {s['steps_done']} steps, {t.get('median_step_s') or 0:.2f} s/step, "
        f"final loss {s['final_losses'].get('total', float('nan')):.3f} -> {out}/video.mp4"
    )
    return {
        "input": str(atlas_dir),
        "output": str(out),
        "status": "done",
        "layer": cfg.layer,
        "seed": s["seed"],
        "outputs": s["outputs"],
        "timings": t,
        "final_losses": s["final_losses"],
        "consistency": s.get("consistency"),
    }
