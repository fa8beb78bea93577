"""t2l atlas: fit layered atlases (background + foreground) to the user's own video.

Parses flags into an AtlasConfig and draws the events of the core's AtlasRun (t2l/atlas/run.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from t2l.cli.app import Command, app
from t2l.cli.common import (
    FLAG,
    DeviceOpt,
    JsonOpt,
    SeedOpt,
    emit_json,
    handle_errors,
    info,
    make_progress,
    output_dir,
)
from t2l.errors import InputError, Interrupted, UsageError

_MARK = "mark the object: --fg-box x0,y0,x1,y1 (on the first frame, or on --fg-box-frame N), or --masks DIR"
# what to do about each quality-report warning (t2l/atlas/report.py), in this command's terms
_FIXES = {
    # a ghost in a few frames is mostly an object the background layer kept (bigbuckbunny's character:
    # automatic masks miss what never leaves; a box around it separates it, docs/benchmarks.md)
    "low_psnr": "if those frames show an object twice (a ghost), mark it: --fg-box x0,y0,x1,y1 (on the "
    "first frame, or on --fg-box-frame N), or --masks DIR; otherwise fit a shorter window (--max-frames) "
    "or give more --steps",
    "empty_fg": _MARK,
    "sparse_fg": _MARK,
    "masks_disagree": "look at masks/ and alpha/ in the atlas folder; give --masks DIR if the masks are wrong",
    "truncated": "re-download or re-export the file to fit the missing frames",
}
_BOX_LOST = ("the object in --fg-box was lost: give a tighter box on a frame where it stands out "
             "(--fg-box-frame N), or --masks DIR")  # fmt: skip
# ... after --fg-box the object is already marked
_FIXES_BOX = {**_FIXES, "empty_fg": _BOX_LOST, "sparse_fg": _BOX_LOST,
              "low_psnr": "fit a shorter window (--max-frames), more --steps, or give --masks DIR"}  # fmt: skip


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _flagged(e: UsageError) -> UsageError:
    """The core names config fields (`max_frames 2 is too few`); say the flag (`--max-frames 2 ...`).
    A window that misses the box's frame gets the flags of one that holds it as its fix."""
    from t2l.atlas.run import WINDOW_FIX, WindowError

    option = getattr(e, "option", None)
    if not option or not e.problem.startswith(option):
        return e
    fix = e.fix
    if isinstance(e, WindowError) and e.window:
        fix = WINDOW_FIX + " ".join(f"{_flag(k)} {v}" for k, v in e.window.items())
    return UsageError(_flag(option) + e.problem[len(option) :], fix)


@app.command("atlas", cls=Command)
@handle_errors
def atlas(
    video: Annotated[Path, typer.Argument(help="Video file or folder of frames.", show_default=False)],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Atlas folder to write.", show_default=False)
    ],
    start: Annotated[int, typer.Option("--start", help="First source frame (0-based).")] = 0,
    max_frames: Annotated[
        int | None,
        typer.Option(
            "--max-frames",
            help="Use at most this many frames [default: 120, stopping at the first scene cut]. "
            "A window given explicitly must not cross a cut.",
            show_default=False,
        ),
    ] = None,
    stride: Annotated[int, typer.Option("--stride", help="Use every N-th frame.")] = 1,
    size: Annotated[
        int | None, typer.Option("--size", help="Working long side in px (default: 432 draft, 768 quality).")
    ] = None,
    layers: Annotated[
        int, typer.Option("--layers", help="1 = background only; 2 = foreground + background.")
    ] = 2,
    masks: Annotated[
        Path | None,
        typer.Option("--masks", help="Folder of foreground masks (one image per frame); default: automatic."),
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", help="auto (quality on GPU, draft on CPU), draft or quality.")
    ] = "auto",
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Total optimisation steps the fit reaches (default: the preset's; on --resume the saved total).",
        ),
    ] = None,
    fg_box: Annotated[
        str | None,
        typer.Option(
            "--fg-box",
            help="x0,y0,x1,y1: a box around the object (source pixels) on the first fitted frame or on "
            "--fg-box-frame; it is refined by grabCut and followed along the flow. Instead of automatic masks.",
            show_default=False,
        ),
    ] = None,
    fg_box_frame: Annotated[
        int | None,
        typer.Option(
            "--fg-box-frame",
            help="The source frame number --fg-box is drawn on (default: the first fitted frame), e.g. "
            "where an object that enters late is in view.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", metavar=FLAG, help="Continue an interrupted fit in -o.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", metavar=FLAG, help="Replace an existing atlas in -o.")
    ] = False,
    from_nla: Annotated[
        Path | None,
        typer.Option(
            "--from-nla",
            help="Import a Neural Layered Atlases checkpoint instead of fitting (VIDEO = its frames).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fit layered atlases to VIDEO and write an atlas folder for `t2l render`."""
    from t2l.atlas.run import AtlasRun, folder_state, resolve_config
    from t2l.device import resolve_device

    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "pick one")
    if steps is not None and steps < 0:
        raise UsageError(f"--steps {steps} must be >= 0", "pass the total number of steps the fit reaches")
    state = folder_state(output) if output.is_dir() else "empty"
    if state == "done" and not (overwrite or resume):
        raise UsageError(f"{output} already holds an atlas", "pass --overwrite to replace it, or another -o")
    if state == "partial" and not (overwrite or resume):
        raise UsageError(
            f"{output} holds an unfinished fit (model.pt)",
            "add --resume to continue it or --overwrite to restart",
        )
    if resume and state == "empty":
        raise UsageError(f"nothing to resume in {output} (no model.pt)", "run without --resume")
    box = None
    if fg_box is not None:
        try:
            box = tuple(int(v) for v in fg_box.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise UsageError(
                f"--fg-box {fg_box!r} is not x0,y0,x1,y1", "give four integers, e.g. --fg-box 40,30,200,180"
            )
    if resume:  # a resumed fit keeps its saved window, box and box frame (run.json)
        if box is not None or fg_box_frame is not None:
            info(
                "--fg-box and --fg-box-frame are ignored on --resume: the fit keeps the masks it started "
                "with (--overwrite to fit again with these)"
            )
        box = fg_box_frame = None
    dev = resolve_device(device)
    try:
        cfg, note = resolve_config(
            preset, dev.type, start=start, max_frames=max_frames, stride=stride, size=size, layers=layers,
            masks=masks, steps=steps, seed=seed, fg_box=box,
            fg_box_frame=fg_box_frame,
        )  # fmt: skip
        run = None if from_nla is not None else AtlasRun.prepare(video, output, cfg, dev, resume=resume)
    except UsageError as e:
        raise _flagged(e) from None
    with output_dir(output):  # a fit that fails before writing anything leaves no empty folder
        if from_nla is not None:
            return _import_nla(video, from_nla, output, cfg, size, dev, json_out)
        if note and not resume:
            info(f"{note}: long side {cfg.size} px")
        _draw(run, json_out)


def _draw(run, json_out: bool) -> None:
    """Notes as info lines, each phase as a progress bar, report warnings with their fix; the result last."""
    from t2l.atlas.fit import FitEvent
    from t2l.atlas.run import RESUME_FIX, Note, Phase, SceneCutError

    cli_fix = {RESUME_FIX: "rerun the same command with --resume to continue"}
    warnings = []
    try:
        with make_progress() as progress:
            tasks, done = {}, {}  # phase -> task id; task id -> steps done

            def bar(name: str, total=None, completed=0):
                for tid in tasks.values():  # the previous phases are over: show them complete
                    progress.update(tid, total=done.get(tid) or 1, completed=done.get(tid) or 1)
                tasks[name] = progress.add_task(name, total=total, completed=completed, status="")

            def tick(name: str, n: int, total: int | None) -> None:
                if name in tasks:
                    progress.update(tasks[name], completed=n, total=total)
                    done[tasks[name]] = n

            run.on_progress = tick
            recent = []  # one step sees 2-4 frames: show the mean of the last steps, not one batch
            for ev in run.events():
                if isinstance(ev, Note) and ev.code == "quality":
                    warnings.append(ev.data)
                elif isinstance(ev, Note) and ev.code == "scene_cut":
                    info(f"{ev.text}: fit it with --start {ev.data['next_start']}")
                elif isinstance(ev, Note) and ev.code == "truncated":
                    info(f"warning: {ev.text}; {_FIXES['truncated']}")
                elif isinstance(ev, Note):
                    info(ev.text)
                elif isinstance(ev, FitEvent):
                    recent = [*recent[-19:], ev.psnr]
                    status = f"PSNR ~{sum(recent) / len(recent):5.2f} dB (last steps)"
                    progress.update(tasks["fit"], completed=ev.step, status=status)
                    done[tasks["fit"]] = ev.step
                elif isinstance(ev, Phase) and ev.name == "fit":
                    bar("fit", total=run.cfg.steps, completed=run.fitter.step)
                elif isinstance(ev, Phase):
                    bar(ev.name)
            bar("done")
            progress.remove_task(tasks.pop("done"))
    except KeyboardInterrupt:  # reached us between two events: the core saves what it can
        e = run.interrupted()
        raise Interrupted(e.problem, cli_fix.get(e.fix, e.fix)) from None
    except Interrupted as e:
        raise Interrupted(e.problem, cli_fix.get(e.fix, e.fix)) from None
    except SceneCutError as e:
        fix = f"fit one shot at a time: --start {e.first} --max-frames {e.frames}, then --start {e.cut}"
        raise UsageError(e.problem, fix) from None
    except UsageError as e:  # found once the frames are read (a box outside them, or on a frame not fitted)
        raise _flagged(e) from None
    s = run.summary
    _print_report(s["quality"], warnings, box=getattr(run, "mask_source", None) == "box")
    drift = ", ".join(f"{k} {v:.2f}" for k, v in s["drift_px_per_frame"].items())
    worst = s["quality"]["worst"][0]
    info(f"atlas written to {s['atlas']}: mean PSNR {s['psnr_mean']:.2f} dB (all frames; lowest "
         f"{worst['psnr']:.2f} dB at frame {worst['source_frame']}), drift {drift} px/frame"
         + (f"; {len(warnings)} warning(s) above" if warnings else ""))  # fmt: skip
    if json_out:
        emit_json(s)


def _import_nla(video, checkpoint, output, cfg, size, dev, json_out) -> None:
    """--from-nla: frames at their own size unless --size is given (NLA's normalisation needs them as trained)."""
    from t2l.atlas.folder import save_atlas
    from t2l.atlas.nla import import_nla
    from t2l.atlas.previews import write_previews
    from t2l.video_read import read_video

    if not checkpoint.is_file():
        raise InputError(f"NLA checkpoint not found: {checkpoint}", "check the --from-nla path")
    frames, vinfo = read_video(
        video, start=cfg.start, max_frames=cfg.max_frames, stride=cfg.stride, long_side=size
    )
    with make_progress() as progress:
        task = progress.add_task("importing NLA", total=len(frames), status="")

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, status=stage)

        data = import_nla(checkpoint, frames, info=vinfo, device=str(dev), progress=report)
    save_atlas(output, data)
    for note in write_previews(output, data):
        info(note)
    info(f"imported {checkpoint} ({len(data.frames)} frames) into {output}")
    if json_out:
        emit_json(
            {"atlas": str(output), "frames": len(data.frames), "layers": [lay.name for lay in data.layers]}
        )


def _print_report(q: dict, warnings: list[dict], box: bool = False) -> None:
    """The quality report in one line on stderr, then each warning with what to do about it."""
    parts = [f"PSNR mean {q['psnr_mean']:.2f} dB, min {q['psnr_min']:.2f} dB (worst frames "
             + ", ".join(str(w["source_frame"]) for w in q["worst"]) + ")"]  # fmt: skip
    if "fg_share" in q:
        parts.append(f"foreground {100 * q['fg_share']:.1f}% of the pixels")
    if "mask_iou" in q:
        parts.append(f"alpha vs masks IoU {q['mask_iou']:.2f}")
    if "gain_range" in q and (q["gain_range"][0] < 0.9 or q["gain_range"][1] > 1.1):
        parts.append(f"exposure gain {q['gain_range'][0]:.2f}-{q['gain_range'][1]:.2f}")
    info("quality: " + "; ".join(parts))
    for w in warnings:
        fix = (_FIXES_BOX if box else _FIXES).get(w["code"])
        info(f"warning: {w['message']}" + (f"; {fix}" if fix else ""))
