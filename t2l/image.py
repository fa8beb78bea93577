"""One image edit, end to end: load and validate, train the generator, write outputs and run.json.

    run = ImageRun.prepare(input_path, prompts, cfg, clip, device, out_dir, seed=None)
    for event in run.events():      # StepEvent per step; Ctrl-C -> checkpoint + Interrupted
        ...
    summary = run.finish()          # edit/composite/greenscreen/alpha PNGs, generator.pt, run.json

Output folder: edit.png (RGBA, straight alpha), composite.png, greenscreen.png, alpha.png, all at the
input's ORIGINAL resolution (the layer is computed at the working size and upsampled), roi.png with
an ROI, snapshots/, generator.pt (weights + config), checkpoint.pt (resume), run.json (written last).
"""

from __future__ import annotations

import platform
import secrets
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import t2l
from t2l.augment import CropConfig, ViewConfig, apply_crop, sample_crop
from t2l.errors import InputError, Interrupted, ResourceError, UsageError
from t2l.files import torch_save_atomic, write_json_atomic
from t2l.generator import Generator, GeneratorConfig
from t2l.imageio import composite_uint8, pil_to_tensor, read_image, resize_short, save_png, to_uint8
from t2l.losses import GREEN
from t2l.prompts import PromptSet
from t2l.train import Example, StepEvent, TextBank, TrainConfig, Trainer, encode_view_bank

PRESETS = {
    # the paper's settings (GPU): shorter side 512, 1000 steps, 16 CLIP views
    "paper": {"size": 512, "steps": 1000, "views": 16},
    # CPU preview: a quarter of the pixels, half the views, a fifth of the steps (~2.6 s/step on 2 CPU cores)
    "draft": {"size": 256, "steps": 200, "views": 8},
}
PRESET_NAMES = ("auto", "draft", "paper")


@dataclass(frozen=True)
class ImageConfig:
    preset: str = "paper"  # the preset the other values came from
    size: int = 512  # working resolution: shorter side of the resized input
    full_every: int = 75  # add the un-augmented full image at steps 0, 75, 150, ...
    save_every: int = 0  # snapshot + checkpoint every N steps (0: only at the end / on Ctrl-C)
    input_bank: int = 4  # E(in) bank: input_bank * views embeddings of the full input, once (0: per step)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageConfig:
        t = dict(d["train"])
        t["weights"] = type(TrainConfig().weights)(**t["weights"])
        t["views"] = ViewConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in t["views"].items()})
        c = {k: tuple(v) if isinstance(v, list) else v for k, v in d["crop"].items()}
        return cls(
            preset=d["preset"],
            size=d["size"],
            full_every=d["full_every"],
            save_every=d["save_every"],
            input_bank=d.get("input_bank", 0),
            generator=GeneratorConfig(**d["generator"]),
            crop=CropConfig(**c),
            train=TrainConfig(**t),
        )


def resolve_config(
    preset: str = "auto",
    device_type: str = "cpu",
    steps: int | None = None,
    size: int | None = None,
    views: int | None = None,
    save_every: int = 0,
    generator: GeneratorConfig | None = None,
    precision: str = "fp32",
) -> tuple[ImageConfig, str | None]:
    """Build an ImageConfig from a preset and overrides. Returns (config, note about `auto`'s choice)."""
    if preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESET_NAMES)}")
    note = None
    if preset == "auto":
        preset = "paper" if device_type == "cuda" else "draft"
        note = f"preset auto -> {preset} on {device_type}" + (
            "" if preset == "paper" else " (faster, lower quality; --preset paper for the paper's settings)"
        )
    p = PRESETS[preset]
    steps, size, views = steps or p["steps"], size or p["size"], views or p["views"]
    gen = generator or GeneratorConfig()
    if steps < 1:
        raise UsageError(f"--steps {steps} must be >= 1", "use e.g. --steps 200")
    if views < 1:
        raise UsageError(f"--views {views} must be >= 1", "use e.g. --views 8")
    if size < gen.min_size:
        raise UsageError(
            f"--size {size} is below the generator's minimum side {gen.min_size}",
            f"use --size >= {gen.min_size}",
        )
    if save_every < 0:
        raise UsageError(f"--save-every {save_every} must be >= 0", "use 0 to disable snapshots")
    if precision not in ("fp32", "bf16", "tf32"):
        raise UsageError(f"unknown precision {precision!r}", "use fp32, bf16 or tf32")
    if precision != "fp32" and device_type != "cuda":
        raise UsageError(f"--precision {precision} needs a CUDA GPU", "use --precision fp32 on CPU")
    train = TrainConfig(
        steps=steps, views=ViewConfig(n=views), snapshot_every=save_every, precision=precision
    )
    return ImageConfig(preset=preset, size=size, save_every=save_every, generator=gen, train=train), note


def _versions() -> dict:
    import open_clip

    return {
        "t2l": t2l.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def _scaled_views(cfg: TrainConfig, native: int) -> TrainConfig:
    """Adapt view and structure sizes (defined for a 224-px CLIP) to the backbone's native size."""
    k = native / 224
    views = replace(cfg.views, short=native, long_max=round(cfg.views.long_max * k))
    return replace(
        cfg, views=views, structure_short=native, structure_long_max=round(cfg.structure_long_max * k)
    )


@dataclass
class ImageRun:
    input_path: Path
    prompts: PromptSet
    cfg: ImageConfig
    clip: object
    device: torch.device
    out_dir: Path
    seed: int
    original: np.ndarray  # H0, W0, 3 uint8: the input as read (orientation applied)
    work: torch.Tensor  # 1, 3, h, w in [0,1] on device: the working-size input
    notes: list[str]
    resume_state: dict | None = None
    timings: dict = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    last_event: StepEvent | None = None
    trainer: Trainer | None = None
    relevancy: torch.Tensor | None = None
    input_bank: torch.Tensor | None = None

    # ---- setup ---------------------------------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        input_path: Path,
        prompts: PromptSet,
        cfg: ImageConfig,
        clip,
        device: torch.device,
        out_dir: Path,
        seed: int | None = None,
        resume: bool = False,
    ) -> ImageRun:
        """Read and validate the input; with `resume`, adopt the checkpoint's config, prompts and seed."""
        t0 = time.perf_counter()
        notes: list[str] = []
        state = None
        ckpt = Path(out_dir) / "checkpoint.pt"
        if resume and ckpt.exists():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"checkpoint {ckpt} is unreadable ({e})", "rerun with --overwrite") from None
            cfg = ImageConfig.from_dict(state["config"])
            prompts = PromptSet(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in state["prompts"].items()}
            )
            seed = int(state["seed"])
            notes.append(f"resuming {out_dir} from step {state['trainer']['step']}/{cfg.train.steps}")
        elif resume:
            notes.append(f"no checkpoint in {out_dir}; starting from step 0")
        image, read_notes = read_image(input_path)
        notes += read_notes
        work = resize_short(image, cfg.size)
        w, h = work.size
        if min(w, h) < cfg.generator.min_size:
            raise UsageError(
                f"{input_path}: working size {w}x{h} is below the generator's minimum side {cfg.generator.min_size}",
                f"use --size >= {cfg.generator.min_size}",
            )
        if seed is None:
            seed = secrets.randbelow(2**31)
        run = cls(
            Path(input_path),
            prompts,
            cfg,
            clip,
            device,
            Path(out_dir),
            int(seed),
            np.asarray(image, dtype=np.uint8),
            pil_to_tensor(work).to(device),
            notes,
            state,
        )
        run.timings["prepare_s"] = time.perf_counter() - t0
        return run

    def compute_relevancy(self) -> torch.Tensor | None:
        """The ROI prior on the full working image, ONCE: [1,1,h,w] in [0,1] (None without --roi)."""
        if self.prompts.roi is None:
            return None
        if self.relevancy is None:
            t0 = time.perf_counter()
            self.relevancy = self.clip.relevancy(self.work, self.prompts.roi)[:, None].detach().float()
            self.timings["relevancy_s"] = time.perf_counter() - t0
        return self.relevancy

    def write_roi(self) -> Path:
        """roi.png: the ROI relevancy map as a heatmap over the input, at its original resolution."""
        from PIL import Image

        from t2l.clip.relevancy import heatmap_overlay

        rel = self.compute_relevancy()
        if rel is None:
            raise UsageError("--show-roi needs --roi TEXT", "add e.g. --roi 'the cake'")
        h0, w0 = self.original.shape[:2]
        rel = F.interpolate(
            rel[:1].float(), size=(h0, w0), mode="bilinear", align_corners=False
        )  # 1, 1, H0, W0
        overlay = heatmap_overlay(Image.fromarray(self.original), rel[0, 0].clamp(0, 1).cpu().numpy())
        path = self.out_dir / "roi.png"
        save_png(np.asarray(overlay.convert("RGB")), path)
        return path

    # ---- training ------------------------------------------------------------------------------

    def _sample(self, step: int, rng: torch.Generator) -> list[Example]:
        x, rel, cfg = self.work, self.relevancy, self.cfg
        p = sample_crop(rng, x.shape[-2], x.shape[-1], cfg.crop, cfg.generator.min_size)
        crop_rel = apply_crop(rel, p, jitter=False) if rel is not None else None
        bank = self.input_bank
        examples = [Example(apply_crop(x, p), relevancy=crop_rel, input_bank=bank)]
        if cfg.full_every and step % cfg.full_every == 0:
            examples.append(Example(x, relevancy=rel, input_bank=bank))
        return examples

    def _build_trainer(self) -> Trainer:
        torch.manual_seed(self.seed)  # the seed ALWAYS applies (generator init and any torch RNG use)
        gen = Generator(self.cfg.generator).to(self.device)
        texts = TextBank.from_prompts(self.clip, self.prompts)
        rng = torch.Generator().manual_seed(self.seed)
        tcfg = _scaled_views(self.cfg.train, int(self.clip.native_size))
        if self.cfg.train.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.cfg.input_bank > 0:
            t0 = time.perf_counter()
            count = self.cfg.input_bank * tcfg.views.n
            # its own seeded RNG: a resumed run rebuilds exactly the same bank
            bank_rng = torch.Generator().manual_seed(self.seed + 1)
            self.input_bank = encode_view_bank(self.clip, self.work, tcfg.views, count, bank_rng)
            self.timings["input_bank_s"] = time.perf_counter() - t0
        trainer = Trainer(gen, self.clip, texts, self._sample, tcfg, rng)
        if self.resume_state is not None:
            trainer.load_state_dict(self.resume_state["trainer"])
        return trainer

    def save_checkpoint(self) -> Path:
        path = self.out_dir / "checkpoint.pt"
        torch_save_atomic(
            {
                "kind": "image",
                "trainer": self.trainer.state_dict(),
                "config": self.cfg.to_dict(),
                "prompts": self.prompts.to_dict(),
                "seed": self.seed,
                "input": str(self.input_path),
            },
            path,
        )
        return path

    def events(self) -> Iterator[StepEvent]:
        """Train, yielding a StepEvent per step. Ctrl-C saves a checkpoint and raises Interrupted."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            self.compute_relevancy()
            if self.prompts.roi is not None and not (self.out_dir / "roi.png").exists():
                self.write_roi()
            self.trainer = self._build_trainer()
            t0 = time.perf_counter()
            for ev in self.trainer.run():
                self.step_seconds.append(ev.seconds)
                self.last_event = ev
                if ev.snapshot:
                    self.write_snapshot(ev.step)
                    self.save_checkpoint()
                yield ev
        except KeyboardInterrupt:
            if self.trainer is None:
                raise
            self.save_checkpoint()
            self._write_run_json("interrupted", {})
            raise Interrupted(
                f"interrupted at step {self.trainer.step}/{self.cfg.train.steps}; checkpoint saved in {self.out_dir}",
                "rerun the same command with --resume to continue",
            ) from None
        except torch.OutOfMemoryError:
            raise ResourceError(
                f"GPU out of memory at --size {self.cfg.size} with {self.cfg.train.views.n} views",
                "use --preset draft, a smaller --size, fewer --views or --precision bf16",
            ) from None
        self.timings["train_s"] = time.perf_counter() - t0

    # ---- outputs -------------------------------------------------------------------------------

    @torch.no_grad()
    def render_layer(self) -> np.ndarray:
        """The edit layer for the full working image, upsampled to the original size: [H0,W0,4] uint8."""
        return render_layer(self.trainer.generator, self.work, self.original.shape[:2])

    def write_snapshot(self, step: int) -> Path:
        layer = self.render_layer()
        path = self.out_dir / "snapshots" / f"step{step:05d}.png"
        save_png(composite_uint8(layer, self.original), path)
        return path

    def finish(self) -> dict:
        """Write the outputs, generator.pt and (last) run.json; return the summary.

        The resume checkpoint (generator + optimizer, ~4x generator.pt) is deleted once run.json says
        done: a finished run never needs it, and batch runs over many photos would keep gigabytes.
        """
        t0 = time.perf_counter()
        out = self.out_dir
        paths = write_layer_outputs(self.render_layer(), self.original, out)
        gen = self.trainer.generator
        torch_save_atomic(
            {
                "kind": "image",
                "generator": gen.state_dict(),
                "generator_config": self.cfg.generator.to_dict(),
                "size": self.cfg.size,
                "prompts": self.prompts.to_dict(),
                "seed": self.seed,
            },
            out / "generator.pt",
        )
        paths["generator"] = out / "generator.pt"
        if (out / "roi.png").exists():
            paths["roi"] = out / "roi.png"
        self.timings["outputs_s"] = time.perf_counter() - t0
        summary = self._write_run_json("done", paths)
        (out / "checkpoint.pt").unlink(missing_ok=True)
        return summary

    def _write_run_json(self, status: str, paths: dict) -> dict:
        ev = self.last_event
        secs = self.step_seconds
        h, w = self.work.shape[-2:]
        info = {
            "kind": "image",
            "status": status,
            "input": str(self.input_path.resolve()),
            "input_size": [int(self.original.shape[1]), int(self.original.shape[0])],
            "working_size": [int(w), int(h)],
            "prompts": self.prompts.to_dict(),
            "seed": self.seed,
            "device": str(self.device),
            "config": self.cfg.to_dict(),
            "clip": {
                "model": getattr(self.clip, "model_name", "?"),
                "source": getattr(self.clip, "source", "?"),
            },
            "versions": _versions(),
            "steps_done": self.trainer.step if self.trainer else 0,
            "timings": {
                **{k: round(v, 3) for k, v in self.timings.items()},
                "steps_this_session": len(secs),
                "median_step_s": round(statistics.median(secs), 4) if secs else None,
            },
            "final_losses": ({"total": ev.loss, **ev.losses, "lr": ev.lr} if ev else {}),
            "notes": self.notes,
            "outputs": {k: str(v) for k, v in paths.items()},
        }
        write_json_atomic(self.out_dir / "run.json", info)
        return info


@torch.no_grad()
def render_layer(generator: Generator, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Run `generator` on x [1,3,h,w] (BatchNorm in training mode, as trained) and upsample the RGBA
    bilinearly to size (H0, W0). Returns [H0,W0,4] uint8, straight alpha, rounded."""
    generator.train()
    rgba = generator(x)  # 1, 4, h, w
    if tuple(rgba.shape[-2:]) != tuple(size):
        rgba = F.interpolate(rgba, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    return to_uint8(rgba)


def write_layer_outputs(layer: np.ndarray, original: np.ndarray, out: Path) -> dict[str, Path]:
    """Write edit.png (the RGBA layer), composite.png, greenscreen.png and alpha.png into folder `out`.

    layer: [H0,W0,4] uint8, straight alpha; original: [H0,W0,3] uint8 RGB. Returns {name: path}.
    """
    green = np.broadcast_to(np.round(np.array(GREEN) * 255).astype(np.uint8), original.shape)
    return {
        "edit": save_png(layer, out / "edit.png"),
        "composite": save_png(composite_uint8(layer, original), out / "composite.png"),
        "greenscreen": save_png(composite_uint8(layer, green), out / "greenscreen.png"),
        "alpha": save_png(layer[..., 3], out / "alpha.png"),
    }


def output_state(out_dir: Path) -> str:
    """'done' (run.json says done), 'partial' (a checkpoint but no finished run) or 'empty'."""
    import json

    rj = out_dir / "run.json"
    if rj.exists():
        try:
            if json.loads(rj.read_text()).get("status") == "done":
                return "done"
        except (OSError, ValueError):
            pass
    return "partial" if (out_dir / "checkpoint.pt").exists() else "empty"
