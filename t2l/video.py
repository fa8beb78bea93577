"""One video edit on a layered atlas, end to end: load, train the generator on one layer, render, report.

    cfg, note = resolve_config("auto", "cpu", layer="fg")
    run = VideoRun.prepare(atlas_dir, prompts, cfg, clip, device, out_dir, seed=None)
    for event in run.events():          # StepEvent per step (t2l/run.py: Ctrl-C, divergence, OOM)
        ...
    for done, total in run.finish():    # edit.png, video.mp4, layer/ PNGs, greenscreen.mp4, report
        ...
    run.summary                         # what run.json says

The training items are built by t2l/video_crops.py (one generator call per atlas crop, sampled into
three frame crops, plus a direct frame crop and the whole atlas every 75 steps); the losses, CLIP
views, training loop and run-folder lifecycle are the image's (t2l/train.py, t2l/run.py). The result
is an RGBA edit of the layer's atlas image, rendered over the ORIGINAL frames by t2l/atlas/render.py.

Run folder (default ATLAS/runs/<layer>-<prompt>/): edit.png (atlas.png's size, straight alpha),
video.mp4, layer/00000.png ... (RGBA edit layer per frame), greenscreen.mp4, optional layer.mov
(ProRes 4444) / layer.webm (VP9 alpha), snapshots/, generator.pt, checkpoint.pt (while unfinished),
run.json (written last, with the consistency report).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from t2l.atlas.coords import sample_atlas, unpremultiply, uv_to_pixels
from t2l.augment import ViewConfig
from t2l.errors import UsageError
from t2l.files import torch_save_atomic
from t2l.generator import Generator, GeneratorConfig
from t2l.imageio import save_png, to_uint8
from t2l.losses import LossWeights
from t2l.prompts import PromptSet
from t2l.run import TrainingRun, clip_identity, file_sha256, prepare_resume
from t2l.train import TextBank, TrainConfig, Trainer, encode_view_bank, kept_buffers, scaled_to_native
from t2l.video_crops import CropSettings, LayerCrops

# The reference's video settings (video-facts.md): structure 3, sparsity 0.1 * (0.005 L0 + 0.01 L1),
# bootstrap 10 (constant while active), gamma 0.999, 6 views with black fill, 3000 steps.
VIDEO_WEIGHTS = LossWeights(structure=3.0, sparsity=0.1, l0=0.005, l1=0.01, bootstrap=10.0)

PRESETS = {
    # the reference's settings (GPU)
    "paper": {"steps": 3000, "views": 6, "frame_gap": 2},
    # CPU preview (docs/video.md, docs/benchmarks.md): 1/20 of the steps, 4 views; the same crops and items
    "draft": {"steps": 150, "views": 4, "frame_gap": 2},
}
PRESET_NAMES = ("auto", "draft", "paper")
FORMATS = ("png", "prores", "webm")  # edit-layer deliverables besides video.mp4 and greenscreen.mp4


def video_train_config(
    steps: int, views: int, save_every: int, precision: str, bootstrap_steps: int
) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        gamma=0.999,
        weights=VIDEO_WEIGHTS,
        views=ViewConfig(n=views, fill=0.0),
        anneal_bootstrap=False,
        bootstrap_until=bootstrap_steps,
        independent_input_views=True,
        snapshot_every=save_every,
        precision=precision,
    )


@dataclass(frozen=True)
class VideoConfig:
    preset: str = "paper"  # the preset the other values came from
    layer: str = "fg"  # the atlas layer to edit: fg or bg
    save_every: int = 0  # snapshot + checkpoint every N steps (0: only at the end / on Ctrl-C)
    input_bank: int = 4  # E(in) banks: input_bank * views embeddings per frame, once (0: encode per item)
    crops: CropSettings = field(default_factory=CropSettings)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: TrainConfig = field(default_factory=lambda: video_train_config(3000, 6, 0, "fp32", 0))

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"preset {self.preset}, layer {self.layer}, {self.train.views.n} views"

    @classmethod
    def from_dict(cls, d: dict) -> VideoConfig:
        tup = lambda m: {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}  # noqa: E731
        return cls(
            preset=d["preset"],
            layer=d["layer"],
            save_every=d["save_every"],
            input_bank=d.get("input_bank", 0),
            crops=CropSettings(**tup(d["crops"])),
            generator=GeneratorConfig(**d["generator"]),
            train=TrainConfig.from_dict(d["train"]),
        )


def resolve_config(
    preset: str = "auto",
    device_type: str = "cpu",
    layer: str = "fg",
    steps: int | None = None,
    views: int | None = None,
    save_every: int = 0,
    generator: GeneratorConfig | None = None,
    precision: str = "fp32",
    bootstrap_steps: int = 0,
) -> tuple[VideoConfig, str | None]:
    """Build a VideoConfig from a preset and overrides. Returns (config, note about `auto`'s choice)."""
    if preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESET_NAMES)}")
    note = None
    if preset == "auto":
        preset = "paper" if device_type == "cuda" else "draft"
        note = f"preset auto -> {preset} on {device_type}" + (
            ""
            if preset == "paper"
            else " (faster, lower quality; --preset paper for the reference's settings)"
        )
    p = PRESETS[preset]
    steps, views = steps or p["steps"], views or p["views"]
    if layer not in ("fg", "bg"):
        raise UsageError(f"unknown layer {layer!r}", "use fg or bg")
    if steps < 1:
        raise UsageError(f"steps {steps} must be >= 1", "use e.g. 300 steps")
    if views < 1:
        raise UsageError(f"views {views} must be >= 1", "use e.g. 4 views")
    if save_every < 0 or bootstrap_steps < 0:
        raise UsageError("save-every and bootstrap steps must be >= 0", "use 0 to disable them")
    if precision not in ("fp32", "bf16", "tf32"):
        raise UsageError(f"unknown precision {precision!r}", "use fp32, bf16 or tf32")
    if precision != "fp32" and device_type != "cuda":
        raise UsageError(f"precision {precision} needs a CUDA GPU", "use fp32 on the CPU")
    cfg = VideoConfig(
        preset=preset,
        layer=layer,
        save_every=save_every,
        crops=CropSettings(frame_gap=p["frame_gap"]),
        generator=generator or GeneratorConfig(),
        train=video_train_config(steps, views, save_every, precision, bootstrap_steps),
    )
    return cfg, note


def slug(text: str, limit: int = 40) -> str:
    """A folder-name form of a prompt: 'Rusty car!' -> 'rusty-car'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "edit"


def default_run_dir(atlas_dir: Path, layer: str, prompt: str) -> Path:
    return Path(atlas_dir) / "runs" / f"{layer}-{slug(prompt)}"


def video_identity(atlas_dir: Path, layer: str, clip, prompts: PromptSet) -> dict:
    """What a resumed video run must share with its checkpoint (t2l/run.py)."""
    index = Path(atlas_dir) / "atlas.json"
    return {
        "kind": "video",
        "input": str(Path(atlas_dir).resolve()),
        "input_sha256": file_sha256(index) if index.is_file() else None,
        "layer": layer,
        "clip": clip_identity(clip),
        "prompts": prompts.to_dict(),
    }


def pick_layer(layer_names: list[str], asked: str | None) -> str:
    """The layer to edit: `asked`, or fg when the atlas has one, else bg."""
    if asked is None:
        return "fg" if "fg" in layer_names else "bg"
    if asked not in layer_names:
        if asked == "fg":
            raise UsageError(
                "this atlas has one layer (bg), no foreground to edit",
                "edit the background (bg), or refit the atlas with a foreground (t2l atlas --masks/--fg-box)",
            )
        raise UsageError(f"this atlas has no layer {asked!r}", f"use one of {', '.join(layer_names)}")
    return asked


@dataclass
class VideoRun(TrainingRun):
    atlas_dir: Path
    prompts: PromptSet
    cfg: VideoConfig
    clip: object
    device: torch.device
    out_dir: Path
    seed: int
    data: object  # AtlasData
    crops: LayerCrops
    notes: list[str]
    resume_state: dict | None = None
    timings: dict = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    last_event: object = None
    trainer: Trainer | None = None
    summary: dict | None = None
    report: dict | None = None  # the consistency report, once finish() has made it

    kind = "video"

    @property
    def identity(self) -> dict:
        return video_identity(self.atlas_dir, self.cfg.layer, self.clip, self.prompts)

    @property
    def layer(self):
        return self.data.layer(self.cfg.layer)

    # ---- setup ---------------------------------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        atlas_dir: Path,
        prompts: PromptSet,
        cfg: VideoConfig,
        clip,
        device: torch.device,
        out_dir: Path,
        seed: int | None = None,
        resume: bool = False,
        steps: int | None = None,
        precision: str | None = None,
        data=None,
    ) -> VideoRun:
        """Load and check the atlas (or take `data`, an AtlasData already loaded). With `resume` and a
        checkpoint, the checkpoint's config and seed win except `steps` (the total) and `precision`."""
        from t2l.atlas.folder import load_atlas

        t0 = time.perf_counter()
        notes: list[str] = []
        data = data if data is not None else load_atlas(atlas_dir)
        pick_layer([lay.name for lay in data.layers], cfg.layer)
        state, cfg, seed, notes = prepare_resume(
            out_dir,
            video_identity(atlas_dir, cfg.layer, clip, prompts),
            resume,
            cfg,
            seed,
            VideoConfig.from_dict,
            steps,
            precision,
        )
        lay = data.layer(cfg.layer)
        crops = LayerCrops(
            data.frames, lay.uv, lay.texture, lay.uv_to_px, data.alpha, cfg.layer,
            cfg.generator.min_size, cfg.crops, device,
        )  # fmt: skip
        if crops.k > 1:
            notes.append(f"the {cfg.layer} atlas is small: the generator works on it at {crops.k}x")
        if seed is None:
            seed = secrets.randbelow(2**31)
        run = cls(
            Path(atlas_dir), prompts, cfg, clip, device, Path(out_dir), int(seed), data, crops, notes, state
        )
        run.timings["prepare_s"] = time.perf_counter() - t0
        return run

    def _before_training(self) -> None:
        """ROI relevancy ONCE: per frame (items from frames) and on the atlas (the whole-atlas item)."""
        if self.prompts.roi is None or self.crops.relevancy is not None:
            return
        t0 = time.perf_counter()
        frames, maps = self.data.frames, []
        for i in range(0, len(frames), 8):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + 8])).permute(0, 3, 1, 2).float() / 255
            maps.append(
                self.clip.relevancy(x.to(self.device), self.prompts.roi).detach().float().cpu().numpy()
            )
        self.crops.relevancy = np.concatenate(maps)  # T, H, W
        box = self.crops.full_box()
        atlas = self.crops.full_item().background  # 1, 3, h, w: the used atlas, masked by coverage
        rel = torch.zeros(1, 1, *self.crops.atlas_size, device=self.device)
        rel[..., box.y0 : box.y1, box.x0 : box.x1] = self.clip.relevancy(atlas, self.prompts.roi)[
            :, None
        ].float()
        self.crops.atlas_relevancy = rel.detach()
        self.timings["relevancy_s"] = time.perf_counter() - t0

    def _build_trainer(self) -> Trainer:
        torch.manual_seed(self.seed)  # the seed ALWAYS applies (generator init and any torch RNG use)
        gen = Generator(self.cfg.generator).to(self.device)
        texts = TextBank.from_prompts(self.clip, self.prompts)
        rng = torch.Generator().manual_seed(self.seed)
        tcfg = scaled_to_native(self.cfg.train, int(self.clip.native_size))
        if self.cfg.input_bank > 0:  # E(in) banks per frame, its own seeded RNG: a resume rebuilds them
            t0 = time.perf_counter()
            bank_rng = torch.Generator().manual_seed(self.seed + 1)
            count = self.cfg.input_bank * tcfg.views.n
            self.crops.build_input_banks(
                lambda x: encode_view_bank(self.clip, x, tcfg.views, count, bank_rng)
            )
            self.timings["input_bank_s"] = time.perf_counter() - t0
        return Trainer(gen, self.clip, texts, self.crops.sample, tcfg, rng)

    def _oom_hint(self) -> str:
        return "use --preset draft, fewer --views, --precision bf16, or fit the atlas at a smaller size"

    def _memory_context(self) -> str:
        h, w = self.data.frames.shape[1:3]
        return f"{w}x{h} frames, {self.cfg.train.views.n} views"

    # ---- outputs -------------------------------------------------------------------------------

    @torch.no_grad()
    def render_edit(self) -> np.ndarray:
        """The edit of the layer's atlas image: uint8 [Ha, Wa, 4], straight alpha, atlas.png's size.

        The generator runs once on the used atlas (as the whole-atlas training item, BatchNorm in training
        mode); texels outside the used region are transparent (no edge smear)."""
        return render_atlas_edit(self.trainer.generator, self.crops)

    def write_snapshot(self, step: int) -> Path:
        edit = self.render_edit()
        path = save_png(edit, self.out_dir / "snapshots" / f"step{step:05d}_edit.png")
        from t2l.atlas.render import render_edit

        t = self.crops.eligible[len(self.crops.eligible) // 2]
        video, _ = render_edit(self.data, {self.cfg.layer: edit}, self.data.frames[t : t + 1], first=t)
        save_png(video[0], self.out_dir / "snapshots" / f"step{step:05d}_frame{t:05d}.png")
        return path

    def finish(
        self,
        formats: tuple[str, ...] = ("png",),
        resolution: str = "working",
        crf: int = 18,
        copy_edit: str = "keep",
    ) -> Iterator[tuple[int, int]]:
        """Write edit.png, render video.mp4 + greenscreen.mp4 + the edit layer in `formats`, generator.pt,
        the consistency report, ATLAS/edits/<layer>.png (copy_edit: "keep" = unless a different edit is
        there, "replace", "no") and (last) run.json. Yields (frames done, total) while rendering;
        self.summary holds run.json's content afterwards."""
        from t2l.atlas.render import render_edit, render_to_files
        from t2l.consistency import consistency_report

        for f in formats:
            if f not in FORMATS:
                raise UsageError(f"unknown format {f!r}", f"use {', '.join(FORMATS)}")
        t0 = time.perf_counter()
        out, name = self.out_dir, self.cfg.layer
        edit = self.render_edit()
        paths = {"edit": save_png(edit, out / "edit.png")}
        outputs = {"mp4": out / "video.mp4", "greenscreen": out / "greenscreen.mp4"}
        names = {"png": "layer", "prores": "layer.mov", "webm": "layer.webm"}
        outputs.update({f: out / names[f] for f in formats})
        total = len(self.data.frames)
        for done in render_to_files(self.data, {name: edit}, outputs, resolution, crf):
            yield done, total
        paths.update({("video" if f == "mp4" else f): p for f, p in outputs.items()})
        self.timings["render_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        video, layer = render_edit(self.data, {name: edit})  # working resolution, for the report
        flow = self.data.flow
        if flow is None and len(self.data.frames) > 1:  # e.g. an NLA import: measure along fresh flow
            from t2l.atlas.flow import compute_flows

            flow = compute_flows(self.data.frames)
            self.notes.append("the atlas has no stored flow; the consistency report uses flow computed now")
        edit_alpha = sampled_alpha(edit, self.layer)
        self.report = None if flow is None else consistency_report(
            self.data.frames, video, layer, flow, self.data.alpha, edit_alpha, name,
            uv_px=uv_to_pixels(self.layer.uv, self.layer.uv_to_px), atlas_size=self.crops.atlas_size,
        )  # fmt: skip
        self.timings["report_s"] = time.perf_counter() - t1
        gen = self.trainer.generator
        torch_save_atomic(
            {
                "kind": "video",
                "generator": gen.state_dict(),
                "generator_config": self.cfg.generator.to_dict(),
                "layer": name,
                "atlas_scale": self.crops.k,
                "atlas_box": list(self.crops.full_box()),
                "atlas": str(self.atlas_dir.resolve()),
                "config": self.cfg.to_dict(),
                "prompts": self.prompts.to_dict(),
                "seed": self.seed,
            },
            out / "generator.pt",
        )
        paths["generator"] = out / "generator.pt"
        if copy_edit != "no":  # last before run.json: a failed command never touches the atlas folder
            dst = self.atlas_dir / "edits" / f"{name}.png"
            if dst.exists() and copy_edit != "replace" and dst.read_bytes() != paths["edit"].read_bytes():
                self.notes.append(
                    f"{dst} holds another edit and was kept; use this run's with "
                    f"t2l render {self.atlas_dir} --{name} {paths['edit']}, or overwrite to replace it"
                )
            else:
                paths["atlas_edit"] = save_png(edit, dst)
        self.summary = self._write_run_json("done", paths)
        (out / "checkpoint.pt").unlink(missing_ok=True)

    def _run_info(self) -> dict:
        d = self.data
        T, H, W = d.frames.shape[:3]
        info = {
            "input": str(self.atlas_dir.resolve()),
            "layer": self.cfg.layer,
            "frames": int(T),
            "working_size": [int(W), int(H)],
            "fps": str(d.info.fps),
            "atlas_scale": self.crops.k,
            "atlas_sha256": self.identity["input_sha256"],
        }
        if self.report is not None:
            info["consistency"] = self.report
        return info


@torch.no_grad()
def render_atlas_edit(generator: Generator, crops: LayerCrops) -> np.ndarray:
    """Run the generator once on the used atlas and place its RGBA (reduced to atlas density,
    premultiplied) into a transparent image of atlas.png's size: uint8 [Ha, Wa, 4], straight alpha."""
    generator.train()
    box = crops.full_box()
    with kept_buffers(generator, always=True):  # a render does not change the training state
        pre = crops.to_atlas_density(generator(crops.gen_input(box)).float())  # 1, 4, h, w premultiplied
    canvas = torch.zeros(1, 4, *crops.atlas_size, device=pre.device)
    canvas[..., box.y0 : box.y1, box.x0 : box.x1] = unpremultiply(pre).clamp(0, 1)
    return to_uint8(canvas)


def sampled_alpha(edit: np.ndarray, layer) -> np.ndarray:
    """The edit's own alpha [T, H, W] in [0,1] read through the layer's uv (before the layer's opacity)."""
    a = torch.from_numpy(edit[..., 3].astype(np.float32) / 255)[None, None]  # 1, 1, Ha, Wa
    out = []
    for t in range(layer.uv.shape[0]):
        uv = torch.from_numpy(np.ascontiguousarray(layer.uv[t], dtype=np.float32))[None]
        out.append(sample_atlas(a, uv, layer.uv_to_px, premultiplied=False)[0, 0].numpy())
    return np.stack(out)
