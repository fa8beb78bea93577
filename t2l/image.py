"""One image edit, end to end: load and validate, train the generator, write outputs and run.json.

    run = ImageRun.prepare(input_path, prompts, cfg, clip, device, out_dir, seed=None)
    for event in run.events():      # StepEvent per step; Ctrl-C -> checkpoint + Interrupted (t2l/run.py)
        ...
    summary = run.finish()          # edit/composite/greenscreen/alpha PNGs, generator.pt, run.json

Output folder: edit.png (RGBA, straight alpha), composite.png, greenscreen.png, alpha.png, all at the
input's ORIGINAL resolution (the layer is computed at the working size and upsampled), roi.png with
an ROI, snapshots/, generator.pt (weights + config), checkpoint.pt (resume), run.json (written last).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from t2l.atlas.coords import premultiply, unpremultiply
from t2l.augment import CropConfig, ViewConfig, apply_crop, sample_crop
from t2l.errors import UsageError
from t2l.files import torch_save_atomic
from t2l.generator import Generator, GeneratorConfig
from t2l.imageio import composite_uint8, pil_to_tensor, read_image, resize_short, save_png, to_uint8
from t2l.losses import GREEN
from t2l.prompts import PromptSet
from t2l.run import (
    TrainingRun,
    clip_identity,
    file_sha256,
    output_state,  # noqa: F401  (re-exported: t2l.image.output_state)
    prepare_resume,
)
from t2l.train import (
    Example,
    StepEvent,
    TextBank,
    TrainConfig,
    Trainer,
    encode_view_bank,
    kept_buffers,
    scaled_to_native,
)

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

    def describe(self) -> str:
        return f"preset {self.preset}, size {self.size}, {self.train.views.n} views"

    @classmethod
    def from_dict(cls, d: dict) -> ImageConfig:
        c = {k: tuple(v) if isinstance(v, list) else v for k, v in d["crop"].items()}
        return cls(
            preset=d["preset"],
            size=d["size"],
            full_every=d["full_every"],
            save_every=d["save_every"],
            input_bank=d.get("input_bank", 0),
            generator=GeneratorConfig(**d["generator"]),
            crop=CropConfig(**c),
            train=TrainConfig.from_dict(d["train"]),
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


def image_identity(input_path: Path, clip, prompts: PromptSet) -> dict:
    """What a resumed image run must share with its checkpoint (t2l/run.py)."""
    path = Path(input_path)
    return {
        "kind": "image",
        "input": str(path.resolve()),
        "input_sha256": file_sha256(path) if path.is_file() else None,
        "clip": clip_identity(clip),
        "prompts": prompts.to_dict(),
    }


@dataclass
class ImageRun(TrainingRun):
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

    kind = "image"

    @property
    def identity(self) -> dict:
        return image_identity(self.input_path, self.clip, self.prompts)

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
        steps: int | None = None,
        precision: str | None = None,
    ) -> ImageRun:
        """Read and validate the input. With `resume` and a checkpoint, the checkpoint's config and seed
        win, except `steps` (the total to reach) and `precision` when given; a checkpoint of another
        input, CLIP model or prompt is refused (t2l/run.py)."""
        t0 = time.perf_counter()
        state, cfg, seed, notes = prepare_resume(
            out_dir,
            image_identity(input_path, clip, prompts),
            resume,
            cfg,
            seed,
            ImageConfig.from_dict,
            steps,
            precision,
        )
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

    def _before_training(self) -> None:
        self.compute_relevancy()
        if self.prompts.roi is not None and not (self.out_dir / "roi.png").exists():
            self.write_roi()

    def _oom_hint(self) -> str:
        return "use --preset draft, a smaller --size, fewer --views or --precision bf16"

    def _memory_context(self) -> str:
        return f"size {self.cfg.size}, {self.cfg.train.views.n} views"

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
        tcfg = scaled_to_native(self.cfg.train, int(self.clip.native_size))
        if self.cfg.input_bank > 0:
            t0 = time.perf_counter()
            count = self.cfg.input_bank * tcfg.views.n
            # its own seeded RNG: a resumed run rebuilds exactly the same bank
            bank_rng = torch.Generator().manual_seed(self.seed + 1)
            self.input_bank = encode_view_bank(self.clip, self.work, tcfg.views, count, bank_rng)
            self.timings["input_bank_s"] = time.perf_counter() - t0
        return Trainer(gen, self.clip, texts, self._sample, tcfg, rng)

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

    def _run_info(self) -> dict:
        h, w = self.work.shape[-2:]
        return {
            "input": str(self.input_path.resolve()),
            "input_size": [int(self.original.shape[1]), int(self.original.shape[0])],
            "working_size": [int(w), int(h)],
        }


@torch.no_grad()
def render_layer(generator: Generator, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Run `generator` on x [1,3,h,w] (BatchNorm in training mode, as trained) and resize the RGBA to
    size (H0, W0) with resize_rgba. Returns [H0,W0,4] uint8, straight alpha, rounded."""
    generator.train()
    with kept_buffers(generator, always=True):  # a render (snapshot) does not change the training state
        rgba = generator(x)  # 1, 4, h, w
    return to_uint8(resize_rgba(rgba, size))


def resize_rgba(rgba: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize straight RGBA [B,4,h,w] in [0,1] to size (H, W), PREMULTIPLIED: the colour under
    alpha ~0 (unconstrained by training) never bleeds into visible edge pixels. Returns straight RGBA."""
    if tuple(rgba.shape[-2:]) == tuple(size):
        return rgba
    pre = F.interpolate(premultiply(rgba), size=tuple(size), mode="bilinear", align_corners=False)
    return unpremultiply(pre.clamp(0, 1)).clamp(0, 1)


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
