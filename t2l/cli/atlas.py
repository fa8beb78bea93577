"""t2l atlas: fit layered atlases (background + foreground) to the user's own video."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from t2l.cli.app import app
from t2l.cli.common import (
    DeviceOpt,
    JsonOpt,
    SeedOpt,
    emit_json,
    handle_errors,
    info,
    make_progress,
    output_dir,
)
from t2l.errors import InputError, UsageError

MIN_FRAMES = 3
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
CHECKPOINT_EVERY_S = 120.0


def preset_settings(preset: str, frames: int) -> dict:
    """Working size and step budget of a preset for a clip of `frames` frames."""
    if preset == "quality":
        return {"size": 768, "steps": max(1500, 40 * frames), "pairs": 4, "grid": (8, 14), "flow": "medium"}
    return {"size": 432, "steps": max(300, 12 * frames), "pairs": 2, "grid": (6, 10), "flow": "medium"}


@app.command("atlas")
@handle_errors
def atlas(
    video: Annotated[Path, typer.Argument(help="Video file or folder of frames.", show_default=False)],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Atlas folder to write.", show_default=False)
    ],
    start: Annotated[int, typer.Option("--start", help="First source frame (0-based).")] = 0,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Use at most this many frames.")] = 120,
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
        int | None, typer.Option("--steps", help="Optimisation steps (default from the preset).")
    ] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fit in -o.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing atlas in -o.")] = False,
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
    if layers not in (1, 2):
        raise UsageError(
            f"--layers {layers} is not supported", "use 1 (background) or 2 (foreground + background)"
        )
    if preset not in ("auto", "draft", "quality"):
        raise UsageError(f"unknown --preset {preset!r}", "use auto, draft or quality")
    if steps is not None and steps < 0:
        raise UsageError(f"--steps {steps} must be >= 0", "pass a positive number of steps")
    if size is not None and size < 32:
        raise UsageError(f"--size {size} is too small", "use at least 32 px (432 is the CPU default)")
    if start < 0:
        raise UsageError(f"--start {start} must be >= 0", "frames are counted from 0")
    if stride < 1:
        raise UsageError(f"--stride {stride} must be >= 1", "use 1 for every frame, 2 for every other one")
    if max_frames < MIN_FRAMES:
        raise UsageError(f"--max-frames {max_frames} is too few", f"use at least {MIN_FRAMES}")
    if masks is not None and layers == 1:
        raise UsageError("--masks needs two layers", "drop --masks or use --layers 2")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "pick one")
    if not video.exists():
        raise InputError(f"video not found: {video}", "check the path")
    if video.is_file() and video.suffix.lower() in _IMAGE_SUFFIXES:
        raise InputError(
            f"{video} is a still image, not a video",
            "pass a video or a folder of frames (use `t2l image` to edit a photo)",
        )
    if (output / "atlas.json").exists() and not (overwrite or resume):
        raise UsageError(f"{output} already holds an atlas", "pass --overwrite to replace it, or another -o")
    if (output / "model.pt").is_file() and not (output / "atlas.json").exists() and not (overwrite or resume):
        raise UsageError(
            f"{output} holds an unfinished fit (model.pt)",
            "add --resume to continue it or --overwrite to restart",
        )
    if resume and not (output / "model.pt").is_file():
        raise UsageError(f"nothing to resume in {output} (no model.pt)", "run without --resume")
    with output_dir(output):  # a fit that fails before writing anything leaves no empty folder
        if from_nla is not None:
            return _import_nla(video, from_nla, output, start, max_frames, stride, size, device, json_out)
        _fit(video, output, start, max_frames, stride, size, layers, masks, preset, steps, device, seed,
             resume, json_out)  # fmt: skip


def _import_nla(video, checkpoint, output, start, max_frames, stride, size, device, json_out) -> None:
    try:
        from t2l.atlas.nla import import_nla
    except ImportError:
        raise UsageError(
            "--from-nla is not available in this build", "fit the atlas with `t2l atlas VIDEO -o DIR`"
        ) from None
    from t2l.atlas.folder import save_atlas
    from t2l.video_read import read_video

    if not checkpoint.is_file():
        raise InputError(f"NLA checkpoint not found: {checkpoint}", "check the --from-nla path")
    frames, vinfo = read_video(video, start=start, max_frames=max_frames, stride=stride, long_side=size)
    with make_progress() as progress:
        task = progress.add_task("importing NLA", total=len(frames), status="")

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, status=stage)

        data = import_nla(checkpoint, frames, info=vinfo, device=device, progress=report)
    save_atlas(output, data)
    info(f"imported {checkpoint} ({len(data.frames)} frames) into {output}")
    if json_out:
        emit_json(
            {"atlas": str(output), "frames": len(data.frames), "layers": [lay.name for lay in data.layers]}
        )


def _fit(video, output, start, max_frames, stride, size, layers, masks, preset, steps, device, seed, resume,
         json_out) -> None:  # fmt: skip
    import secrets
    import time

    import numpy as np
    import torch

    from t2l import __version__
    from t2l.atlas.fit import AtlasFitter, FitConfig
    from t2l.atlas.flow import FlowConfig, compute_flows
    from t2l.atlas.folder import AtlasData, AtlasLayer, load_model_state, save_atlas
    from t2l.atlas.masks import motion_masks, read_masks
    from t2l.device import resolve_device
    from t2l.files import torch_save_atomic
    from t2l.video_read import read_video

    dev = resolve_device(device)
    state = None
    if resume:
        try:
            state = load_model_state(output / "model.pt")
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
            raise InputError(
                f"cannot read {output / 'model.pt'} ({type(e).__name__}: {e})", "start again with --overwrite"
            ) from None
        if not isinstance(state, dict) or "run" not in state:
            raise InputError(f"{output / 'model.pt'} is not a t2l atlas fit state", "run without --resume")
        run = dict(state["run"])
        if steps is not None:
            run["steps"] = steps
        info(
            f"resuming at step {state['step']}/{run['steps']} (frame selection, size and preset of the saved run)"
        )
    else:
        chosen = preset if preset != "auto" else ("quality" if dev.type == "cuda" else "draft")
        why = {"auto": f" (auto: {'GPU' if dev.type == 'cuda' else 'no GPU'})"}.get(preset, "")
        settings = preset_settings(chosen, max_frames)
        run = {"preset": chosen, "start": start, "max_frames": max_frames, "stride": stride,
               "size": size or settings["size"], "layers": layers, "seed": seed if seed is not None else secrets.randbelow(2**31),
               "masks": str(masks) if masks else None, "steps": steps}  # fmt: skip
        info(f"preset {chosen}{why}: long side {run['size']} px")

    timings = {}
    t0 = time.perf_counter()
    # One frame more than asked tells whether the clip was cut short, so the user hears about it.
    frames, vinfo = read_video(
        video, run["start"], run["max_frames"] + 1, run["stride"], long_side=run["size"]
    )
    if len(frames) > run["max_frames"]:
        n = run["max_frames"]
        frames = frames[:n]
        vinfo = dataclasses.replace(
            vinfo, timestamps=vinfo.timestamps[:n], frame_indices=vinfo.frame_indices[:n]
        )
        info(f"{video} has more frames: fitting {n} (raise --max-frames, or use --start/--stride)")
    T, H, W = frames.shape[:3]
    if T < MIN_FRAMES:
        raise InputError(
            f"{video} gives only {T} frame(s) from frame {run['start']}",
            f"an atlas needs at least {MIN_FRAMES} frames",
        )
    if state is not None:
        saved = state["model_config"]
        if (saved["frames"], saved["height"], saved["width"]) != (T, H, W):
            raise InputError(
                f"{output / 'model.pt'} was fitted on {saved['frames']} frames of {saved['width']}x{saved['height']}, "
                f"but {video} gives {T} frames of {W}x{H}",
                "resume with the same video, or start again with --overwrite",
            )
        if run["steps"] is not None and state["step"] >= run["steps"] and (output / "atlas.json").exists():
            raise UsageError(
                f"{output} is already fitted ({state['step']} steps)",
                f"pass --steps above {state['step']} to keep fitting, or --overwrite to start again",
            )
    settings = preset_settings(run["preset"], T)
    if run["steps"] is None:
        run["steps"] = settings["steps"]
    torch.manual_seed(run["seed"])
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    flows = compute_flows(frames, FlowConfig(preset=settings["flow"]))
    timings["flow_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fg_masks, mask_source = None, None
    if state is not None:
        if state.get("masks") is not None:
            fg_masks = np.unpackbits(state["masks"], count=T * H * W).reshape(T, H, W).astype(bool)
            mask_source = state["run"].get("mask_source")
    elif run["layers"] == 2:
        if run["masks"]:
            indices = list(vinfo.frame_indices) or [run["start"] + i * run["stride"] for i in range(T)]
            fg_masks, mask_source = read_masks(run["masks"], indices, (H, W)), "given"
        else:
            fg_masks, _ = motion_masks(flows, frames=frames)
            mask_source = "automatic"
            if fg_masks.mean() < 1e-3:
                info(
                    "no moving object found: fitting one background layer (pass --masks DIR for a static object)"
                )
                fg_masks, mask_source, run["layers"] = None, None, 1
    if fg_masks is not None and not fg_masks.any():
        info(f"the masks in {run['masks']} are all empty: fitting one background layer")
        fg_masks, mask_source, run["layers"] = None, None, 1
    run["mask_source"] = mask_source
    timings["masks_s"] = time.perf_counter() - t0

    cfg = FitConfig(steps=run["steps"], pairs=settings["pairs"], grid=settings["grid"], seed=run["seed"])
    t0 = time.perf_counter()
    fitter = AtlasFitter(frames, fg_masks, flows, cfg, device=dev, state=state)
    timings["init_s"] = time.perf_counter() - t0
    packed = np.packbits(fg_masks) if fg_masks is not None else None

    def checkpoint() -> None:
        torch_save_atomic({**fitter.state_dict(), "run": run, "masks": packed}, output / "model.pt")

    info(
        f"{T} frames {W}x{H}, {run['layers']} layer(s), masks: {mask_source or 'none'}, {run['steps']} steps on {dev.type}"
    )
    (output / "atlas.json").unlink(missing_ok=True)  # from here on the folder holds an unfinished fit
    t0 = time.perf_counter()
    last_save = time.perf_counter()
    try:
        with make_progress() as progress:
            task = progress.add_task("fitting", total=run["steps"], completed=fitter.step, status="")
            for ev in fitter.run():
                progress.update(task, completed=ev.step, status=f"PSNR {ev.psnr:5.2f} dB")
                if time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                    checkpoint()
                    last_save = time.perf_counter()
    except KeyboardInterrupt:
        checkpoint()
        raise
    timings["fit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = fitter.export()
    timings["export_s"] = time.perf_counter() - t0
    data = AtlasData(
        frames=frames,
        info=vinfo,
        layers=[AtlasLayer(lay["name"], lay["uv"], lay["texture"], lay["uv_to_px"]) for lay in res.layers],
        alpha=res.alpha,
        reconstruction=res.reconstruction,
        psnr=res.psnr,
        masks=fg_masks,
        flow={k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in flows.items()},
        model_state={**fitter.state_dict(), "run": run, "masks": packed},
        meta={
            "run": run,
            "fit_config": fitter.state_dict()["fit_config"],
            "device": str(dev),
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "drift_px_per_frame": res.consistency,
            "t2l_version": __version__,
            "torch_version": torch.__version__,
        },  # fmt: skip
    )
    t0 = time.perf_counter()
    save_atlas(output, data)
    mean_psnr = float(np.mean(res.psnr))
    info(f"atlas written to {output}: mean PSNR {mean_psnr:.2f} dB, drift "
         + ", ".join(f"{k} {v:.2f}" for k, v in res.consistency.items()) + " px/frame")  # fmt: skip
    if json_out:
        emit_json({"atlas": str(output), "frames": T, "width": W, "height": H, "layers": [lay["name"] for lay in res.layers],
                   "psnr_mean": round(mean_psnr, 3), "drift_px_per_frame": res.consistency, "steps": run["steps"],
                   "preset": run["preset"], "masks": mask_source, "seconds": round(sum(timings.values()) + time.perf_counter() - t0, 2)})  # fmt: skip
