"""`t2l image IMAGE... PROMPT`: text-driven layered editing of still images.

Renders the core's events (t2l/image.py) as a Rich progress bar, one-line notes and JSON lines.
torch and open_clip are imported inside the command (t2l --help stays fast).
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
    err_console,
    info,
    make_progress,
    output_dir,
)
from t2l.cli.common import handle_errors as _handle_errors
from t2l.errors import InputError, Interrupted, ResourceError, T2LError, UsageError, WeightsUnavailable

DEFAULT_OUT = Path("t2l-out")
_PROMPTS = "Prompts"
_RUN = "Run"


def output_dirs(images: list[Path], output: Path | None) -> list[Path]:
    """One output folder per input: -o itself for one input, else -o/<stem> (default t2l-out/<stem>).

    Repeated stems get -2, -3, ... so two inputs never share a folder.
    """
    if output is not None and len(images) == 1:
        return [output]
    parent = output if output is not None else DEFAULT_OUT
    seen: dict[str, int] = {}
    outs = []
    for p in images:
        stem = p.stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        outs.append(parent / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return outs


@app.command("image", cls=Command, no_args_is_help=True)
@_handle_errors
def image(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE... PROMPT", help="One or more input images, then the edit prompt (e.g. 'fire')."
        ),
    ],
    roi: RoiOpt = None,
    screen: ScreenOpt = None,
    src: SrcOpt = None,
    more: MorePromptOpt = None,
    preset: PresetOpt = "auto",
    steps: StepsOpt = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", help="Working shorter side in px (default: from --preset).", rich_help_panel=_RUN
        ),
    ] = None,
    views: ViewsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output folder (several inputs: parent of one folder each) (default: t2l-out/<stem>).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    json_out: JsonOpt = False,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", metavar=FLAG, help="Redo inputs whose outputs already exist.", rich_help_panel=_RUN
        ),
    ] = False,
    save_every: SaveEveryOpt = 0,
    show_roi: Annotated[
        bool,
        typer.Option(
            "--show-roi",
            metavar=FLAG,
            help="Write roi.png (needs --roi) and exit without training.",
            rich_help_panel=_PROMPTS,
        ),
    ] = False,
    precision: PrecisionOpt = None,
    clip_model: ClipModelOpt = DEFAULT_CLIP_MODEL,
    clip_weights: ClipWeightsOpt = DEFAULT_CLIP_WEIGHTS,
    offline: OfflineOpt = False,
    gen_depth: GenDepthOpt = 7,
    gen_width: GenWidthOpt = 128,
) -> None:
    """Edit images from a text prompt: train a generator per image that outputs an RGBA edit layer.

    Writes edit.png (RGBA layer), composite.png, greenscreen.png, alpha.png, generator.pt and run.json
    per input. Example: t2l image cake.jpg "oreo cake" --roi cake
    """
    from t2l.prompts import make_prompts

    if len(args) < 2:
        raise UsageError("need at least one IMAGE and a PROMPT", "e.g. t2l image photo.jpg 'fire'")
    *image_args, text = args
    prompts = make_prompts(text, more=more, roi=roi, screen=screen, src=src)
    if show_roi and prompts.roi is None:
        raise UsageError("--show-roi needs --roi TEXT", "add e.g. --roi 'the cake'")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "use one of them")
    if gen_depth < 1 or gen_width < 1:
        raise UsageError(
            "generator depth and width must be >= 1", "leave --gen-depth/--gen-width at defaults"
        )
    for name, value in (("--steps", steps), ("--views", views)):
        if value is not None and value < 1:  # 0 would silently fall back to the preset's value
            raise UsageError(f"{name} {value} must be >= 1", f"pass {name} 1 or more, or leave it out")
    images = [Path(a) for a in image_args]
    outs = output_dirs(images, output)

    import torch

    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip
    from t2l.device import resolve_device
    from t2l.generator import GeneratorConfig
    from t2l.image import resolve_config
    from t2l.run import output_state

    dev = resolve_device(device)
    gen_cfg = GeneratorConfig(depth=gen_depth, width=gen_width)
    if size is not None and size < gen_cfg.min_size:  # 0 would silently fall back to the preset's size
        raise UsageError(
            f"--size {size} is below the generator's minimum side {gen_cfg.min_size}",
            f"use --size >= {gen_cfg.min_size}",
        )
    cfg, note = resolve_config(preset, dev.type, steps, size, views, save_every, gen_cfg, precision or "fp32")
    resuming = resume and any(output_state(out) == "partial" for out in outs)
    if note and not resuming:  # a resumed run keeps its checkpoint's preset: the note would mislead
        info(note)
    if seed is not None:
        torch.manual_seed(seed)
    clip = None  # loaded on first use: a batch whose outputs are all finished never loads CLIP

    def get_clip():
        nonlocal clip
        if clip is None:
            clip = load_clip(ClipSpec(clip_model, clip_weights, offline), dev, download_progress_class())
        return clip

    failed = 0
    for path, out in zip(images, outs, strict=True):
        try:
            result = _run_one(
                path, out, prompts, cfg, get_clip, dev, seed, resume, overwrite, show_roi, (steps, precision)
            )
        except (Interrupted, ResourceError, WeightsUnavailable):
            raise  # these stop the whole batch
        except T2LError as e:  # this input failed; carry on with the others
            failed += 1
            err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            result = {"input": str(path), "status": "failed", "error": str(e)}
        if json_out:
            emit_json(result)
    if failed:
        if len(images) > 1:
            err_console.print(f"{failed} of {len(images)} inputs failed")
        raise typer.Exit(1)


def _run_one(path, out, prompts, cfg, get_clip, dev, seed, resume, overwrite, show_roi, overrides) -> dict:
    from t2l.imageio import read_image
    from t2l.run import output_state

    state = output_state(out) if out.exists() else "empty"
    if not show_roi:
        if state == "done" and not overwrite:
            info(f"{path}: finished outputs in {out}; skipped (--overwrite to redo)")
            return {"input": str(path), "output": str(out), "status": "skipped"}
        if state == "partial" and not (resume or overwrite):
            raise InputError(
                f"{out} holds an unfinished run", "add --resume to continue it or --overwrite to restart"
            )
    read_image(path)  # fail on a bad input before loading CLIP (seconds) for it
    with output_dir(out):  # a run that fails before writing anything leaves no empty folder
        return _train_one(
            path, out, prompts, cfg, get_clip, dev, seed, resume and state == "partial", show_roi, overrides
        )


def _train_one(path, out, prompts, cfg, get_clip, dev, seed, resume, show_roi, overrides) -> dict:
    from t2l.image import ImageRun

    steps, precision = overrides
    run = ImageRun.prepare(
        path, prompts, cfg, get_clip(), dev, out, seed=seed, resume=resume, steps=steps, precision=precision
    )
    for n in run.notes:
        info(n)
    if show_roi:
        roi_path = run.write_roi()
        info(f"wrote {roi_path}")
        return {"input": str(path), "output": str(out), "status": "roi", "roi": str(roi_path)}
    with (
        make_progress() as progress
    ):  # total and start from the run: a resumed run's come from its checkpoint
        task = progress.add_task(path.name, total=run.total_steps, status="", completed=run.done_steps)
        for ev in run.events():
            progress.update(task, completed=ev.step, status=f"loss {ev.loss:.3f}")
    summary = run.finish()
    t = summary["timings"]
    info(
        f"{path.name}: {summary['steps_done']} steps, {t.get('median_step_s') or 0:.2f} s/step, "
        f"final loss {summary['final_losses'].get('total', float('nan')):.3f} -> {out}/composite.png"
    )
    return {
        "input": str(path),
        "output": str(out),
        "status": "done",
        "seed": summary["seed"],
        "outputs": summary["outputs"],
        "timings": t,
        "final_losses": summary["final_losses"],
    }
