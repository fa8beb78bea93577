"""One atlas fit, end to end: decode, flow, masks, initialise, optimise, write the folder, previews.

    cfg, note = resolve_config("auto", device_type="cpu", size=None, steps=None, ...)
    run = AtlasRun.prepare(video, out_dir, cfg, device, resume=False)
    for event in run.events():   # Phase, Note, FitEvent (t2l/atlas/fit.py); Ctrl-C -> model.pt + Interrupted
        ...
    run.summary                  # after the last event: the folder is complete (atlas.json written)

The core never prints: notes (a clip cut short, a fallback to one layer, a preview that could not be
encoded) come as Note events and the CLI decides how to show them. Errors name values and limits
(`steps 2 is below ...`); a UsageError about one config field carries it in `.option` so the CLI can
name its flag instead.

Steps: `steps` is always the TOTAL number of optimisation steps the fit reaches. None: the preset's
budget for the clip (a new fit) or the checkpoint's total (resume). On resume a total below the steps
already done is a UsageError. model.pt is saved every `checkpoint_every_s` seconds and on Ctrl-C;
resuming it gives the same atlas as an uninterrupted fit (the fitter restores its frame sampler).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from t2l import __version__
from t2l.atlas.cuts import find_cuts
from t2l.atlas.fit import AtlasFitter, FitConfig, FitEvent
from t2l.atlas.flow import FlowConfig, compute_flows
from t2l.atlas.folder import AtlasData, AtlasLayer, load_model_state, save_atlas
from t2l.atlas.masks import motion_masks, read_masks
from t2l.atlas.previews import write_previews
from t2l.atlas.report import quality_report
from t2l.atlas.separate import box_masks
from t2l.errors import InputError, Interrupted, UsageError
from t2l.files import torch_save_atomic
from t2l.video_read import read_video

MIN_FRAMES = 3
RESUME_FIX = "resume the fit to continue"  # the CLI says how (--resume)
DEFAULT_MAX_FRAMES = 120
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class AtlasPreset:
    size: int  # working long side, px
    pairs: int  # consecutive frame pairs per step
    grid: tuple[int, int]  # per-frame displacement grid (rows, cols)
    min_steps: int  # step budget: max(min_steps, steps_per_frame * T)
    steps_per_frame: int
    flow: str = "medium"  # DIS preset

    def steps(self, frames: int) -> int:
        return max(self.min_steps, self.steps_per_frame * frames)


PRESETS = {
    "draft": AtlasPreset(size=432, pairs=2, grid=(12, 20), min_steps=300, steps_per_frame=12),
    "quality": AtlasPreset(size=768, pairs=4, grid=(16, 28), min_steps=1500, steps_per_frame=40),
}
PRESET_NAMES = ("auto", *PRESETS)


@dataclass(frozen=True)
class AtlasConfig:
    preset: str = "draft"  # the preset pairs/grid/flow (and default size, steps) came from
    start: int = 0  # first source frame
    max_frames: int = DEFAULT_MAX_FRAMES  # frames used at most (all are held in memory at working size)
    # the frame window was asked for explicitly: it must not cross a scene cut (the default one stops
    # at the first cut instead)
    window_given: bool = False
    stride: int = 1  # every N-th source frame
    size: int = 432  # working long side, px
    layers: int = 2  # 1 = background only, 2 = foreground + background
    masks: str | None = None  # folder of given foreground masks; None = automatic (two layers)
    # (x0, y0, x1, y1) source px on frame fg_box_frame: the object to put in the foreground, refined by
    # grabCut and carried along the flow both ways (t2l/atlas/separate.py); None = automatic
    fg_box: tuple[int, int, int, int] | None = None
    fg_box_frame: int | None = None  # the source frame the box is drawn on; None = the first fitted frame
    steps: int | None = None  # TOTAL steps the fit reaches; None = preset budget / checkpoint's total
    seed: int = 0  # frame order of the optimisation
    checkpoint_every_s: float = 120.0  # model.pt cadence during the fit

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AtlasConfig:
        """Also reads the `run` dict of older model.pt files (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("fg_box") is not None:
            kw["fg_box"] = tuple(int(x) for x in kw["fg_box"])
        return cls(**kw)

    def fit_config(self, frames: int) -> FitConfig:
        p = PRESETS[self.preset]
        steps = self.steps if self.steps is not None else p.steps(frames)
        # a user's box is the truth, not a bootstrap: its masks weigh fully for the whole fit
        until = 1.0 if self.fg_box is not None else FitConfig.mask_until
        return FitConfig(steps=steps, pairs=p.pairs, grid=p.grid, seed=self.seed, mask_until=until)


def option_error(option: str, problem: str, fix: str) -> UsageError:
    """A UsageError about config field `option`; the message starts with the option's name."""
    e = UsageError(f"{option} {problem}", fix)
    e.option = option
    return e


def resolve_config(
    preset: str = "auto",
    device_type: str = "cpu",
    *,
    start: int = 0,
    max_frames: int | None = None,
    stride: int = 1,
    size: int | None = None,
    layers: int = 2,
    masks: str | Path | None = None,
    steps: int | None = None,
    seed: int | None = None,
    fg_box: tuple[int, int, int, int] | None = None,
    fg_box_frame: int | None = None,
) -> tuple[AtlasConfig, str | None]:
    """Validate values and build an AtlasConfig; `auto` picks quality on CUDA, else draft.

    Returns (config, note about what `auto` chose, or None). A seed is drawn when None. max_frames
    None: DEFAULT_MAX_FRAMES, stopping at the first scene cut; given: a window that must not cross one.
    """
    window_given = max_frames is not None
    max_frames = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
    if preset not in PRESET_NAMES:
        raise option_error("preset", f"{preset!r} is unknown", f"use one of {', '.join(PRESET_NAMES)}")
    if layers not in (1, 2):
        raise option_error(
            "layers", f"{layers} is not supported", "use 1 (background) or 2 (foreground + background)"
        )
    if steps is not None and steps < 0:
        raise option_error("steps", f"{steps} must be >= 0", "ask for a positive total number of steps")
    if size is not None and size < 32:
        raise option_error("size", f"{size} is too small", "use at least 32 px (432 is the CPU default)")
    if start < 0:
        raise option_error("start", f"{start} must be >= 0", "frames are counted from 0")
    if stride < 1:
        raise option_error("stride", f"{stride} must be >= 1", "use 1 for every frame, 2 for every other one")
    if max_frames < MIN_FRAMES:
        raise option_error("max_frames", f"{max_frames} is too few", f"use at least {MIN_FRAMES}")
    if masks is not None and layers == 1:
        raise UsageError("given masks need two layers", "drop the masks or fit 2 layers")
    if fg_box is not None:
        if (
            len(fg_box) != 4
            or fg_box[0] < 0
            or fg_box[1] < 0
            or fg_box[2] <= fg_box[0]
            or fg_box[3] <= fg_box[1]
        ):
            raise option_error(
                "fg_box", f"{fg_box} is not a box", "give x0,y0,x1,y1 with x1 > x0 >= 0 and y1 > y0 >= 0"
            )
        if masks is not None or layers == 1:
            raise UsageError("a foreground box needs two layers and no mask folder", "give one of them")
        fg_box = tuple(int(v) for v in fg_box)
    if fg_box_frame is not None:
        if fg_box is None:
            raise option_error(
                "fg_box_frame", f"{fg_box_frame} is given without a box", "give the box (x0,y0,x1,y1) too"
            )
        if fg_box_frame < 0:
            raise option_error("fg_box_frame", f"{fg_box_frame} must be >= 0", "frames are counted from 0")
        _check_box_frame(fg_box_frame, start, stride)
    note = None
    if preset == "auto":
        preset = "quality" if device_type == "cuda" else "draft"
        note = f"preset {preset} (auto: {'GPU' if device_type == 'cuda' else 'no GPU'})"
    cfg = AtlasConfig(
        preset=preset, start=start, max_frames=max_frames, window_given=window_given, stride=stride,
        size=size or PRESETS[preset].size,
        layers=layers, masks=str(masks) if masks is not None else None, fg_box=fg_box, fg_box_frame=fg_box_frame,
        steps=steps,
        seed=seed if seed is not None else secrets.randbelow(2**31),
    )  # fmt: skip
    return cfg, note


class WindowError(UsageError):
    """The frame a box is drawn on (`option`) lies outside the fitted frames. window: the config
    fields of a window that holds it (e.g. {"start": 15}), empty when the clip has no such frame."""

    def __init__(self, option: str, problem: str, fix: str, window: dict[str, int]):
        super().__init__(f"{option} {problem}", fix)
        self.option, self.window = option, window


WINDOW_FIX = "fit a window that holds it: "  # + the window's fields (the CLI: its flags)


def _window_fix(window: dict[str, int]) -> str:
    return WINDOW_FIX + ", ".join(f"{k}={v}" for k, v in window.items())


def _check_box_frame(frame: int, start: int, stride: int) -> None:
    """Before decoding: the box's source frame must be one of start, start + stride, ... (whether the
    window reaches it is known once the clip is read: AtlasRun._box_frame). The box's coordinates
    belong to that frame, so the fix moves the window, not the box."""
    problem, window = None, {}
    if frame < start:
        problem, window = f"{frame} is before the first fitted frame {start}", {"start": frame}
    elif (frame - start) % stride:
        problem = f"{frame} falls between the fitted frames ({start}, {start + stride}, ...: stride {stride})"
        window = {"start": start + (frame - start) % stride}
    if problem:
        raise WindowError("fg_box_frame", problem, _window_fix(window), window)


def folder_state(out_dir: Path) -> str:
    """'done' (atlas.json), 'partial' (model.pt without atlas.json: an unfinished fit) or 'empty'."""
    if (out_dir / "atlas.json").exists():
        return "done"
    return "partial" if (out_dir / "model.pt").is_file() else "empty"


@dataclass(frozen=True)
class Phase:
    """A stage of the run starts: decode, flow, masks, init, fit, export, write, previews."""

    name: str
    seconds_so_far: float  # since the run started


@dataclass(frozen=True)
class Note:
    """Something the user should hear about (the run goes on)."""

    text: str
    code: str | None = None  # "scene_cut", "truncated", "quality" (a report warning) ...
    data: dict | None = None  # the values behind it, e.g. {"next_start": 30} for a scene cut


class SceneCutError(UsageError):
    """An explicitly asked frame window crosses a scene cut. first, frames: the shot before the cut;
    cut: the source frame that starts the next shot."""

    def __init__(self, problem: str, fix: str, first: int, frames: int, cut: int):
        super().__init__(problem, fix)
        self.first, self.frames, self.cut = first, frames, cut


Event = Phase | Note | FitEvent


class AtlasRun:
    """One fit into `out_dir`. Build with prepare(); iterate events(); read summary."""

    def __init__(
        self, video: Path, out_dir: Path, cfg: AtlasConfig, device: torch.device, state: dict | None
    ):
        self.video, self.out_dir, self.cfg, self.device, self.state = video, out_dir, cfg, device, state
        self.summary: dict | None = None
        self.mask_source: str | None = None
        self.timings: dict[str, float] = {}
        self.fitter: AtlasFitter | None = None
        self._stage = "prepare"  # prepare -> fit -> write (what a Ctrl-C would lose)
        self._packed = None
        self._more = False  # the clip has frames after the fitted window (set once it is read)
        # called with (phase, done, total or None) during decode, flow and export; set by the caller
        self.on_progress = None
        self.cut_at: int | None = None  # source frame of the scene cut the window stopped at

    @classmethod
    def prepare(cls, video: str | Path, out_dir: str | Path, cfg: AtlasConfig, device: str | torch.device = "auto",
                resume: bool = False) -> AtlasRun:  # fmt: skip
        """Check the input; with `resume`, read out_dir/model.pt and adopt its config. Only cfg.steps is
        taken from `cfg` then (None: the checkpoint's total)."""
        from t2l.device import resolve_device

        video, out_dir = Path(video), Path(out_dir)
        if not video.exists():
            raise InputError(f"video not found: {video}", "check the path")
        if video.is_file() and video.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(
                f"{video} is a still image, not a video",
                "pass a video or a folder of frames (use `t2l image` to edit a photo)",
            )
        state = None
        if resume:
            state, cfg = _resume_state(out_dir, cfg)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        return cls(video, out_dir, cfg, dev, state)

    # ---- the run ---------------------------------------------------------------------------------

    def _checkpoint(self, packed) -> None:
        torch_save_atomic(
            {**self.fitter.state_dict(), "run": self.cfg.to_dict(), "mask_source": self.mask_source,
             "masks": packed},
            self.out_dir / "model.pt",
        )  # fmt: skip

    def events(self) -> Iterator[Event]:
        cfg, state, out, t_run = self.cfg, self.state, self.out_dir, time.perf_counter()

        def phase(name: str) -> Phase:
            return Phase(name, time.perf_counter() - t_run)

        if state is not None:
            yield Note(
                f"resuming at step {state['step']}/{cfg.steps} (frame selection, size and preset of the saved run)"
            )
        yield phase("decode")
        t0 = time.perf_counter()
        # One frame more than asked tells whether the clip was cut short, so the user hears about it.
        frames, vinfo = read_video(
            self.video, cfg.start, cfg.max_frames + 1, cfg.stride, long_side=cfg.size,
            progress=lambda n: self._tick("decode", n, cfg.max_frames + 1),
        )  # fmt: skip
        self._tick("decode", len(frames), len(frames))  # the bar ends full on a clip shorter than asked
        if vinfo.short_of_header():
            why = f" (decoding failed: {vinfo.decode_error})" if vinfo.decode_error else ""
            yield Note(
                f"{self.video} decodes only {vinfo.decoded_frames} of the {vinfo.header_frames} frames its "
                f"header announces{why}: the file looks truncated or damaged; fitting what decodes",
                code="truncated",
            )
        more = len(frames) > cfg.max_frames
        n = min(len(frames), cfg.max_frames)
        cuts = find_cuts(frames[:n]) if state is None else []  # a resumed fit reads the frames it fitted
        cut = self.cut_at = None
        if cuts:
            c, first = cuts[0], vinfo.frame_indices[0]
            cut = self.cut_at = vinfo.frame_indices[c]
            if cfg.window_given:
                raise SceneCutError(
                    f"frames {first}-{vinfo.frame_indices[n - 1]} of {self.video} cross a scene cut at frame {cut}",
                    f"fit one shot at a time: {c} frames from frame {first}, then from frame {cut}",
                    first, c, cut,
                )  # fmt: skip
            if c < MIN_FRAMES:
                raise InputError(
                    f"{self.video} has a scene cut at frame {cut}, {c} frame(s) after frame {first}",
                    f"fit the shot that starts at frame {cut}",
                )
            yield Note(
                f"scene cut at frame {cut}: fitting frames {first}-{vinfo.frame_indices[c - 1]} (one shot); "
                f"the next shot starts at frame {cut}",
                code="scene_cut", data={"next_start": cut},
            )  # fmt: skip
            n, more = c, False
            cfg = self.cfg = dataclasses.replace(cfg, max_frames=c)  # a resume reads exactly these frames
        if len(frames) > n:
            frames = frames[:n]
            vinfo = dataclasses.replace(
                vinfo, timestamps=vinfo.timestamps[:n], frame_indices=vinfo.frame_indices[:n]
            )
        self._more = more
        if more:
            yield Note(
                f"{self.video} has more frames: fitting {n} (raise the frame limit, or pick a start/stride)"
            )
        T, H, W = frames.shape[:3]
        if T < MIN_FRAMES:
            raise InputError(
                f"{self.video} gives only {T} frame(s) from frame {cfg.start}",
                f"an atlas needs at least {MIN_FRAMES} frames",
            )
        indices = list(vinfo.frame_indices) or [cfg.start + i * cfg.stride for i in range(T)]  # source numbers
        # the box's frame among the fitted ones, checked before the flow (which takes a while)
        box_at = self._box_frame(indices) if cfg.fg_box is not None and state is None else None
        if box_at is not None:  # run.json / atlas.json record the source frame the box was drawn on
            cfg = self.cfg = dataclasses.replace(cfg, fg_box_frame=indices[box_at])
        if state is not None:
            saved = state["model_config"]
            if (saved["frames"], saved["height"], saved["width"]) != (T, H, W):
                raise InputError(
                    f"{out / 'model.pt'} was fitted on {saved['frames']} frames of {saved['width']}x{saved['height']}, "
                    f"but {self.video} gives {T} frames of {W}x{H}",
                    f"resume with the same video, or {_restart(out)}",
                )
        fit_cfg = cfg.fit_config(T)
        cfg = self.cfg = dataclasses.replace(cfg, steps=fit_cfg.steps)
        torch.manual_seed(cfg.seed)
        self.timings["read_s"] = time.perf_counter() - t0

        yield phase("flow")
        t0 = time.perf_counter()
        flows = compute_flows(
            frames,
            FlowConfig(preset=PRESETS[cfg.preset].flow),
            progress=lambda d, t: self._tick("flow", d, t),
        )
        self.timings["flow_s"] = time.perf_counter() - t0

        yield phase("masks")
        t0 = time.perf_counter()
        fg_masks = None
        if state is not None:
            if state.get("masks") is not None:
                fg_masks = np.unpackbits(state["masks"], count=T * H * W).reshape(T, H, W).astype(bool)
                self.mask_source = state.get("mask_source") or state["run"].get("mask_source")
        elif cfg.layers == 2:
            if cfg.fg_box is not None:
                s = W / vinfo.width if vinfo.width else 1.0  # source px -> working px
                x0, y0, x1, y1 = (round(v * s) for v in cfg.fg_box)
                x1, y1 = min(x1, W), min(y1, H)
                if x1 - x0 < 2 or y1 - y0 < 2:
                    raise option_error(
                        "fg_box", f"{cfg.fg_box} lies outside the {vinfo.width}x{vinfo.height} frame",
                        "give the box in source pixels (x0,y0 top left, x1,y1 bottom right)",
                    )  # fmt: skip
                fg_masks, self.mask_source = box_masks(frames, flows, (x0, y0, x1, y1), frame=box_at), "box"
            elif cfg.masks:
                fg_masks, self.mask_source = read_masks(cfg.masks, indices, (H, W)), "given"
                if not fg_masks.any():
                    yield Note(f"the masks in {cfg.masks} are all empty: fitting one background layer")
                    fg_masks = None
            else:
                fg_masks, _ = motion_masks(
                    flows, frames=frames, progress=lambda d, t: self._tick("masks", d, t)
                )
                self.mask_source = "automatic"
                if fg_masks.mean() < 1e-3:
                    yield Note(
                        "no moving object found: fitting one background layer (give masks for a static object)"
                    )
                    fg_masks = None
            if fg_masks is None:
                self.mask_source = None
                cfg = self.cfg = dataclasses.replace(cfg, layers=1)
        self.timings["masks_s"] = time.perf_counter() - t0

        yield phase("init")
        t0 = time.perf_counter()
        self.fitter = fitter = AtlasFitter(frames, fg_masks, flows, fit_cfg, device=self.device, state=state,
                                           progress=lambda d, t: self._tick("init", d, t))  # fmt: skip
        self.timings["init_s"] = time.perf_counter() - t0
        packed = np.packbits(fg_masks) if fg_masks is not None else None
        yield Note(
            f"{T} frames {W}x{H}, {cfg.layers} layer(s), masks: {self.mask_source or 'none'}, "
            f"{cfg.steps} steps on {self.device.type}"
        )

        (out / "atlas.json").unlink(missing_ok=True)  # from here on the folder holds an unfinished fit
        self._packed, self._stage = packed, "fit"
        yield phase("fit")
        t0 = last_save = time.perf_counter()
        try:
            for ev in fitter.run():
                yield ev
                if time.perf_counter() - last_save > cfg.checkpoint_every_s:
                    self._checkpoint(packed)
                    last_save = time.perf_counter()
            self.timings["fit_s"] = time.perf_counter() - t0
            self._checkpoint(packed)  # a Ctrl-C or a crash while exporting and writing loses no step
            self._stage = "write"
            yield from self._write(frames, vinfo, flows, fg_masks, packed, fit_cfg, t_run)
        except KeyboardInterrupt:
            raise self.interrupted() from None

    def interrupted(self) -> Interrupted:
        """After a Ctrl-C (inside events(), or in the caller between two events): save the fit state if
        a fit is under way and return the Interrupted error to raise."""
        out = self.out_dir
        if self._stage == "fit":
            self._checkpoint(self._packed)
            return Interrupted(
                f"interrupted at step {self.fitter.step}/{self.cfg.steps}; the fit state is saved in {out / 'model.pt'}",
                RESUME_FIX,
            )
        if self._stage == "write" and not (out / "atlas.json").exists():
            return Interrupted(
                f"interrupted while writing the atlas; the fit ({self.cfg.steps} steps) is saved in {out / 'model.pt'}",
                RESUME_FIX,
            )
        if self._stage == "write":
            return Interrupted(
                f"interrupted while encoding the previews in {out}", "the atlas itself is complete"
            )
        return Interrupted("interrupted before the fit started; nothing was saved", "run the command again")

    def _write(self, frames, vinfo, flows, fg_masks, packed, fit_cfg, t_run) -> Iterator[Event]:
        cfg, out, fitter = self.cfg, self.out_dir, self.fitter
        T, H, W = frames.shape[:3]

        def phase(name: str) -> Phase:
            return Phase(name, time.perf_counter() - t_run)

        yield phase("export")
        t0 = time.perf_counter()
        res = fitter.export(progress=lambda d, t: self._tick("export", d, t))
        self.timings["export_s"] = time.perf_counter() - t0
        # a box's or a mask folder's empty frames say "nothing in front here": not a lost foreground
        quality = quality_report(res.psnr, res.alpha, fg_masks, vinfo, res.gain,
                                 masks_given=self.mask_source in ("box", "given"))  # fmt: skip
        if self.cut_at is not None:
            quality["scene_cut_at"] = self.cut_at
        model_state = {
            **fitter.state_dict(),
            "run": cfg.to_dict(),
            "mask_source": self.mask_source,
            "masks": packed,
        }
        data = AtlasData(
            frames=frames,
            info=vinfo,
            layers=[
                AtlasLayer(lay["name"], lay["uv"], lay["texture"], lay["uv_to_px"]) for lay in res.layers
            ],
            alpha=res.alpha,
            reconstruction=res.reconstruction,
            psnr=res.psnr,
            gain=res.gain,
            masks=fg_masks,
            flow={k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in flows.items()},
            model_state=model_state,
            meta={
                "run": {**cfg.to_dict(), "mask_source": self.mask_source},
                "fit_config": asdict(fit_cfg),
                "device": str(self.device),
                "timings": {k: round(v, 2) for k, v in self.timings.items()},
                "drift_px_per_frame": res.consistency,
                "registration": {
                    "tracking": fitter.tracked,
                    "residual_px": [round(r, 3) for r in fitter.register_residuals],
                    "refine_residual_px": [round(r, 3) for r in fitter.refine_residuals],
                },  # fmt: skip
                "quality": quality,
                "gain": [[round(float(x), 4) for x in g] for g in res.gain] if res.gain is not None else None,
                "t2l_version": __version__,
                "torch_version": torch.__version__,
            },
        )
        yield phase("write")
        t0 = time.perf_counter()
        save_atlas(out, data)  # the atlas is complete from here on
        self.timings["write_s"] = time.perf_counter() - t0
        yield phase("previews")
        for note in write_previews(out, data):
            yield Note(note)
        for w in quality["warnings"]:
            yield Note(w["message"], code="quality", data=w)
        self.summary = {
            "atlas": str(out), "frames": T, "width": W, "height": H,
            "layers": [lay["name"] for lay in res.layers],
            "psnr_mean": round(float(np.mean(res.psnr)), 3), "drift_px_per_frame": res.consistency,
            "steps": cfg.steps, "preset": cfg.preset, "masks": self.mask_source, "quality": quality,
            "seconds": round(time.perf_counter() - t_run, 2),
        }  # fmt: skip

    def _box_frame(self, indices: list[int]) -> int:
        """The index among the fitted frames (source numbers `indices`) of the source frame the box is
        drawn on (cfg.fg_box_frame; None: the first). One the window does not hold is a usage error."""
        cfg, T = self.cfg, len(indices)
        n = cfg.fg_box_frame
        if n is None:
            return 0
        if n in indices:
            return indices.index(n)
        # resolve_config checked start and stride; what is left is a window, shot or clip that ends before n
        every = f", stride {cfg.stride}" if cfg.stride > 1 else ""
        if self._more:  # the clip goes on: a longer window reaches n
            window = {"max_frames": (n - cfg.start) // cfg.stride + 1}
            raise WindowError(
                "fg_box_frame", f"{n} is after the last fitted frame {indices[-1]} ({T} frames{every})",
                _window_fix(window), window,
            )  # fmt: skip
        if self.cut_at is not None and n >= self.cut_at:
            raise WindowError(
                "fg_box_frame", f"{n} is past the scene cut at frame {self.cut_at} (the window fits frames "
                f"{indices[0]}-{indices[-1]}{every}, one shot)", _window_fix({"start": self.cut_at}),
                {"start": self.cut_at},
            )  # fmt: skip
        raise WindowError(
            "fg_box_frame", f"{n} is past the end of {self.video} (frames {indices[0]}-{indices[-1]}{every} "
            "are fitted)", f"draw the box on a frame up to {indices[-1]}", {},
        )  # fmt: skip

    def _tick(self, phase: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(phase, done, total)


def _restart(out_dir: Path) -> str:
    # like t2l/atlas/folder.py's fixes: a broken or finished folder names the command that redoes it
    return f"start again: t2l atlas VIDEO -o {out_dir} --overwrite"


def _resume_state(out_dir: Path, cfg: AtlasConfig) -> tuple[dict, AtlasConfig]:
    """Read out_dir/model.pt; the saved config with the total steps (cfg.steps, else the saved total)."""
    path = out_dir / "model.pt"
    if not path.is_file():
        raise UsageError(f"nothing to resume in {out_dir} (no model.pt)", "start a new fit instead")
    try:
        state = load_model_state(path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise InputError(f"cannot read {path} ({type(e).__name__}: {e})", _restart(out_dir)) from None
    if not isinstance(state, dict) or "run" not in state or "step" not in state:
        raise InputError(f"{path} is not a t2l atlas fit state", "start a new fit instead")
    saved = AtlasConfig.from_dict(state["run"])
    done = int(state["step"])
    total = cfg.steps if cfg.steps is not None else saved.steps
    if total is not None and total < done:
        raise option_error(
            "steps",
            f"{total} is below the {done} steps already done",
            f"steps is the total the fit reaches: ask for {done} or more, or leave it out"
            + (f" to finish the saved {saved.steps}" if saved.steps is not None else ""),
        )
    if total == done and (out_dir / "atlas.json").exists():
        raise UsageError(
            f"{out_dir} is already fitted ({done} steps)",
            f"ask for a total above {done} steps to keep fitting, or {_restart(out_dir)}",
        )
    return state, dataclasses.replace(saved, steps=total)
