"""The training loop shared by images and videos: sample examples, run the generator, CLIP losses, step.

The caller supplies a `sample(step, rng) -> list[Example | GeneratorCall]` callable (image: one
augmented crop, plus the full image every 75 steps; video: ONE generator call on an atlas crop whose
RGBA is warped into three frame crops, plus a frame crop and, every 75 steps, the whole atlas) and
consumes the yielded `StepEvent`s (the core never prints). Every item (`Example`) is composited as

    composite = P + (1 - a) * background        (P, a: the item's premultiplied edit colour and alpha)

and the step's loss is the mean of the items' losses. Cost per item and step, by design:
  * ONE batch of CLIP views with gradients: the composite's and the green-screen's views together
    (2V images); the composition and directional terms share the composite's views;
  * E(in) of the directional term: drawn from a bank of input-view embeddings encoded once (images),
    or one no-grad batch of the input's views, with the output's geometry or (cfg.independent_input_views,
    video) with views drawn independently of the output's;
  * two single-image structure passes (the input's without grad);
  * no relevancy pass: the ROI prior is computed once by the caller and cropped with each example;
  * text embeddings computed once, before the loop;
  * ONE generator forward/backward per GeneratorCall however many items it feeds: the items' gradients
    are accumulated at the generator's output and back-propagated through the generator once;
  * one host sync per step for logging (the terms are summed on the device).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from t2l.augment import ViewConfig, aspect_resize_size, render_views, sample_views
from t2l.losses import (
    GREEN,
    LossWeights,
    bootstrap_loss,
    bootstrap_weight,
    composite,
    directional_loss,
    greenscreen,
    sparsity_terms,
    structure_loss,
    text_distance_loss,
)
from t2l.prompts import PromptSet


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimisation steps (video: 3000)
    lr: float = 2.5e-3  # MADGRAD initial learning rate
    momentum: float = 0.9
    weight_decay: float = 0.01
    gamma: float = 0.99  # lr <- max(min_lr, gamma * lr) after every step (video: 0.999)
    min_lr: float = 1e-5
    weights: LossWeights = field(default_factory=LossWeights)
    views: ViewConfig = field(default_factory=ViewConfig)
    anneal_bootstrap: bool = True  # images: bootstrap weight linearly to 0 over the run; video: constant
    bootstrap_until: int = (
        0  # no bootstrap term from this step on (0: no cut-off; video: the reference's epoch)
    )
    independent_input_views: bool = (
        False  # E(in) from views drawn apart from E(out)'s (video; images use a bank)
    )
    structure_short: int = 224  # structure features: shorter side of the resized image
    structure_long_max: int = 380  # ... and the cap on its longer side
    snapshot_every: int = 0  # flag every N-th step as a snapshot step (0: never)
    precision: str = "fp32"  # fp32 | bf16 (CUDA only: autocast for CLIP and generator) | tf32 (CUDA matmuls)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of to_dict (JSON lists back to tuples)."""
        tup = lambda m: {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}  # noqa: E731
        t = dict(d)
        t["weights"] = LossWeights(**t["weights"])
        t["views"] = ViewConfig(**tup(t["views"]))
        return cls(**t)


@dataclass
class Example:
    """One training item: the generator's edit composited over `background`.

    background: [1,3,h,w] RGB in [0,1], what the composite is made over (and E(in), structure source).
    gen_input: [1,3,H,W] generator input; None = background. Ignored inside a GeneratorCall.
    warp: maps the generator's output (straight RGBA [1,4,H,W]) to the item's PREMULTIPLIED effective
        edit [1,4,h,w] in the background's frame (video: sampled through the atlas mapping and weighted by
        the layer's opacity). None = identity (the output itself, premultiplied).
    relevancy: [1,1,h,w] ROI prior in [0,1] for the bootstrap term, or None.
    input_bank: [K,D] precomputed CLIP embeddings of views of the input (E(in) of the directional
        term); each step draws n of them. None = encode n views of `background` now (no grad).
    """

    background: torch.Tensor
    gen_input: torch.Tensor | None = None
    warp: Callable[[torch.Tensor], torch.Tensor] | None = None
    relevancy: torch.Tensor | None = None
    input_bank: torch.Tensor | None = None


@dataclass
class GeneratorCall:
    """ONE generator run on `gen_input` [1,3,H,W] whose output feeds several items (their warps)."""

    gen_input: torch.Tensor
    items: list[Example]


@dataclass
class StepEvent:
    step: int  # 1-based count of finished steps
    steps: int
    loss: float  # total weighted loss of this step
    losses: dict[str, float]  # unweighted terms, averaged over the step's examples
    lr: float  # learning rate used for this step
    seconds: float  # wall time of this step
    snapshot: bool  # a snapshot step (cfg.snapshot_every)


@dataclass
class TextBank:
    """Text embeddings [N,D], computed once. comp[i] pairs with src[i]."""

    comp: torch.Tensor
    src: torch.Tensor
    screen: torch.Tensor

    @classmethod
    def from_prompts(cls, clip, prompts: PromptSet) -> TextBank:
        with torch.no_grad():
            return cls(
                clip.encode_text(prompts.comp_texts()).float(),
                clip.encode_text(prompts.src_texts()).float(),
                clip.encode_text(prompts.screen_texts()).float(),
            )


def _draw(rng: torch.Generator, k: int) -> torch.Tensor:
    """A random number n in [1, k] of indices in [0, k), with replacement."""
    n = int(torch.randint(1, k + 1, (1,), generator=rng))
    return torch.randint(0, k, (n,), generator=rng)


@torch.no_grad()
def encode_view_bank(
    clip, x: torch.Tensor, cfg: ViewConfig, count: int, rng: torch.Generator
) -> torch.Tensor:
    """Embeddings [count,D] of `count` random views of x [1,3,H,W] (no grad), encoded cfg.n at a time."""
    out = []
    while sum(len(o) for o in out) < count:
        vp = sample_views(rng, x.shape[-2], x.shape[-1], cfg)
        out.append(clip.encode_image(render_views(x, vp, cfg.fill)).float())
    return torch.cat(out)[:count]


class kept_buffers:
    """Context manager: the module's buffers (BatchNorm running statistics) are restored on exit when the
    body raises, or always with always=True (renders: a train-mode forward must not change the state).
    The generator always runs BatchNorm in training mode, so these statistics never change an output;
    keeping them makes checkpoints and resumed runs bit-equal to uninterrupted ones."""

    def __init__(self, module: torch.nn.Module, always: bool = False):
        self.module, self.always = module, always

    def __enter__(self):
        self.saved = [b.detach().clone() for b in self.module.buffers()]
        return self.module

    def __exit__(self, exc_type, exc, tb):
        if self.always or exc_type is not None:
            with torch.no_grad():
                for b, v in zip(self.module.buffers(), self.saved, strict=True):
                    b.copy_(v)
        return False


def scaled_to_native(cfg: TrainConfig, native: int) -> TrainConfig:
    """Adapt view and structure sizes (defined for a 224-px CLIP) to the backbone's native size."""
    k = native / 224
    views = replace(cfg.views, short=native, long_max=round(cfg.views.long_max * k))
    return replace(
        cfg, views=views, structure_short=native, structure_long_max=round(cfg.structure_long_max * k)
    )


def structure_resize(x: torch.Tensor, short: int, long_max: int) -> torch.Tensor:
    """Resize [B,C,H,W] so the shorter side is `short` and the longer at most `long_max` (aspect kept:
    a long image gets a shorter side below `short`, as torchvision's Resize(short, max_size))."""
    h, w = aspect_resize_size(x.shape[-2], x.shape[-1], short, long_max)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


class Trainer:
    """Owns the generator, optimizer, RNG and step count; `run()` yields one StepEvent per step.

    `state_dict()` / `load_state_dict()` capture everything needed for an exact resume: generator,
    optimizer, learning rate, step and the RNG state at the start of the unfinished step.
    """

    def __init__(self, generator, clip, texts: TextBank, sample, cfg: TrainConfig, rng: torch.Generator):
        from madgrad import MADGRAD

        self.generator, self.clip, self.texts, self.sample, self.cfg, self.rng = (
            generator,
            clip,
            texts,
            sample,
            cfg,
            rng,
        )
        self.device = next(generator.parameters()).device
        if cfg.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.text_dirs = texts.comp - texts.src  # K, D
        self.opt = MADGRAD(
            generator.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.lr = cfg.lr
        self._green = torch.tensor(GREEN, device=self.device).view(1, 3, 1, 1)
        self._rng_at_step = rng.get_state()

    # ---- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "lr": self.lr,
            "rng": self._rng_at_step.clone(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.lr = int(state["step"]), float(state["lr"])
        self.rng.set_state(state["rng"])
        self._rng_at_step = state["rng"].clone()
        torch.set_rng_state(state["torch_rng"])
        for g in self.opt.param_groups:
            g["lr"] = self.lr

    # ---- one step -----------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _item_loss(self, rgba: torch.Tensor, ex: Example, step: int, premultiplied: bool) -> tuple:
        """Loss of one item from its edit rgba [1,4,h,w] (straight, or premultiplied effective when
        `premultiplied`); the terms stay on the device. The straight path is the image's exact arithmetic."""
        cfg, w, clip, rng = self.cfg, self.cfg.weights, self.clip, self.rng
        with self._autocast():
            bg = ex.background
            if premultiplied:
                a = rgba[:, 3:4]
                comp = rgba[:, :3] + (1 - a) * bg  # 1, 3, h, w
                screen = rgba[:, :3] + (1 - a) * self._green
            else:
                comp, screen = composite(rgba, bg), greenscreen(rgba)
            vp = sample_views(rng, bg.shape[-2], bg.shape[-1], cfg.views)
            V = cfg.views.n
            emb = clip.encode_image(
                render_views(torch.cat([comp, screen]), vp, cfg.views.fill)
            ).float()  # 2V, D
            e_comp, e_screen = emb[:V], emb[V:]
            with torch.no_grad():
                if ex.input_bank is not None:  # independent input views, encoded once before training
                    e_in = ex.input_bank[torch.randint(0, len(ex.input_bank), (V,), generator=rng)]  # V, D
                else:  # the input's views: the output's geometry, or independent ones
                    vp_in = (
                        sample_views(rng, bg.shape[-2], bg.shape[-1], cfg.views)
                        if cfg.independent_input_views
                        else vp
                    )
                    e_in = clip.encode_image(render_views(bg, vp_in, cfg.views.fill)).float()  # V, D
                ss_in = clip.self_similarity(
                    structure_resize(bg, cfg.structure_short, cfg.structure_long_max)
                )
            ss_out = clip.self_similarity(structure_resize(comp, cfg.structure_short, cfg.structure_long_max))
        t = self.texts
        l_text = text_distance_loss(e_comp, t.comp[_draw(rng, len(t.comp))])
        l_dir = directional_loss(e_comp, e_in, self.text_dirs[_draw(rng, len(self.text_dirs))])
        l_screen = text_distance_loss(e_screen, t.screen[_draw(rng, len(t.screen))])
        l_struct = structure_loss(ss_out.float(), ss_in.float())
        # (sliced here, after the CLIP graph, on the straight path: autograd then sums the gradient
        # contributions in the same order as before video support, so image runs stay bit-identical)
        a = rgba[:, 3:4]
        l0, l1 = sparsity_terms(a)
        loss = (
            w.comp * (l_text + l_dir)
            + w.screen * l_screen
            + w.structure * l_struct
            + w.sparsity * (w.l0 * l0 + w.l1 * l1)
        )
        terms = {"comp": l_text, "dir": l_dir, "screen": l_screen, "structure": l_struct, "l0": l0, "l1": l1}
        bw = self.bootstrap_weight(step)
        if ex.relevancy is not None and bw > 0:
            l_boot = bootstrap_loss(a, ex.relevancy.to(a))
            loss = loss + bw * l_boot
            terms["bootstrap"] = l_boot
        return loss, terms

    def bootstrap_weight(self, step: int) -> float:
        """The ROI bootstrap weight at 0-based `step` (annealed or constant, 0 from cfg.bootstrap_until)."""
        cfg = self.cfg
        if cfg.bootstrap_until and step >= cfg.bootstrap_until:
            return 0.0
        return bootstrap_weight(step, cfg.steps, cfg.weights.bootstrap, cfg.anneal_bootstrap)

    def train_step(self) -> StepEvent:
        """One step. If it fails (Ctrl-C, a non-finite loss) the generator's BatchNorm statistics and the
        RNG are left as before it, so a checkpoint taken then equals one taken after the previous step."""
        self._rng_at_step = self.rng.get_state()
        with kept_buffers(self.generator):
            try:
                return self._step()
            except BaseException:
                self.rng.set_state(self._rng_at_step)
                raise

    def _step(self) -> StepEvent:
        t0 = time.perf_counter()
        step = self.step
        self.generator.train()  # BatchNorm in training mode, always
        self.opt.zero_grad(set_to_none=True)
        calls = [
            c
            if isinstance(c, GeneratorCall)
            else GeneratorCall(c.gen_input if c.gen_input is not None else c.background, [c])
            for c in self.sample(step, self.rng)
        ]
        n = sum(len(c.items) for c in calls)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        for call in calls:
            with self._autocast():
                rgba = self.generator(call.gen_input)  # 1, 4, H, W
            rgba = rgba.float()
            shared = len(call.items) > 1
            # several items: accumulate their gradients at the output, then ONE backward through the generator
            out = rgba.detach().requires_grad_() if shared else rgba
            for ex in call.items:  # backward per item: only one CLIP graph alive at a time
                warped = ex.warp is not None
                loss, terms = self._item_loss(ex.warp(out) if warped else out, ex, step, warped)
                (loss / n).backward()
                total = total + loss.detach().double() / n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().double() / n
            if shared:
                rgba.backward(out.grad)
        values = torch.stack([total, *sums.values()]).tolist()  # the step's one host sync
        total, losses = values[0], dict(zip(sums, values[1:], strict=True))
        if not math.isfinite(total):  # train_step restores the state from before this step
            raise FloatingPointError(f"loss became {total} at step {step + 1}")
        lr = self.lr
        self.opt.step()
        self.step += 1
        self.lr = max(self.cfg.min_lr, self.cfg.gamma * self.lr)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        self._rng_at_step = self.rng.get_state()
        every = self.cfg.snapshot_every
        return StepEvent(
            self.step,
            self.cfg.steps,
            total,
            losses,
            lr,
            time.perf_counter() - t0,
            bool(every and self.step % every == 0),
        )

    def run(self) -> Iterator[StepEvent]:
        """Train from the current step to cfg.steps, yielding after each step."""
        while self.step < self.cfg.steps:
            yield self.train_step()
