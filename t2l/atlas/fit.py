"""Fit a layered atlas to a clip: initialise from flow and masks, then optimise NLA-style losses.

Initialisation (t2l/atlas/init.py) does most of the work in seconds: the camera motion (RANSAC
homographies on the trusted flow outside the masks) is chained into a background mapping, the
object's own motion (similarities on the flow inside the masks) into a foreground mapping, and the
textures start as the average of the frames splatted into each atlas. Registration
(t2l/atlas/register.py) then solves each frame's displacement grids against its own rendering (and,
with two layers, tracks the foreground frame by frame first), so the mappings follow parallax and
non-rigid motion, then refines each frame's dense residual fields against it for what the grids
cannot follow (a pass that does not lower the reconstruction error is undone). The optimisation
fits the colours: textures, opacity and gain, on whole frames, a few random consecutive frame pairs
per step, with NLA's losses (reconstruction, image gradients,
mask bootstrap, sparsity, opacity flow consistency; with `lr_mapping > 0` also flow consistency of
the mappings and rigidity of the grids, which then learn too).

Long clips: each step touches only `pairs` pairs of frames, so the step time is constant; more frames
need proportionally more steps to be visited equally often. Per frame the model holds 8 + 2*gh*gw
numbers per layer plus the residual fields (2 floats per 2x2 frame pixels per layer: ~2 bytes per
frame pixel and layer, about the size of the frames themselves with two layers; model.pt grows
by as much).

Usage (needs a clip's frames, masks and optical flow, as t2l/atlas/run.py prepares them):

    fitter = AtlasFitter(frames, masks, flows, FitConfig(steps=200))
    for event in fitter.run():
        print(event.step, event.psnr)
    result = fitter.export()
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from t2l.atlas.coords import grid_uv_to_px, texel_index
from t2l.atlas.init import initial_geometry, initial_textures
from t2l.atlas.model import AtlasModel, AtlasModelConfig
from t2l.atlas.register import refine_frames, register_frames, track_frames


@dataclass(frozen=True)
class FitConfig:
    steps: int = 400  # optimisation steps
    pairs: int = 2  # consecutive frame pairs per step (2 pairs = 4 frames)
    lr_texture: float = 0.02  # Adam lr of texture colours ([0,1] units)
    # Adam lr of homography corrections and displacement grids (normalised units). 0 = the registered
    # mappings stay as they are (the default: measured on real clips, descending on the colours moved
    # registered mappings away from the content and lost 1-4 dB; docs/benchmarks.md)
    lr_mapping: float = 0.0
    lr_gain: float = 1e-3  # Adam lr of the per-frame RGB gain (initialised from the frames)
    lr_opacity_field: float = 0.05  # Adam lr of the per-frame opacity correction (logit units); 0 = none
    grid: tuple[int, int] = (12, 20)  # displacement grid per frame (rows, cols)
    w_rgb: float = 1.0  # squared colour error
    w_grad: float = 0.5  # squared error of image x/y differences
    w_mask: float = 0.02  # BCE of the opacity against the masks (bootstrap) ...
    mask_until: float = 0.3  # ... at full weight for this fraction of the steps, then a tenth
    w_sparsity: float = 0.002  # |rgb_fg * (1 - alpha)|^2: keeps the foreground atlas clean
    w_flow: float = 2e-4  # flow consistency of the mappings (error in atlas px, Charbonnier)
    w_alpha_flow: float = 0.005  # flow consistency of the opacity
    w_rigid: float = 0.05  # smoothness of the displacement grids (atlas px^2 per cell)
    margin: int = 6  # atlas margin around what the frames cover (px)
    max_atlas_px: int = 4_000_000  # atlases larger than this are stored at a lower resolution
    density: float = 1.5  # atlas px per frame px of the reference frame (> 1: resampling blurs less)
    track: bool = True  # (two layers) a sequential fg pass along the flow before the registration passes
    track_smooth: float = 0.2  # smoothness of the grids in that pass (register.py)
    register_passes: int = 2  # frame-to-atlas registration passes before the optimisation (register.py)
    register_smooth: float = 0.05  # smoothness of the registered displacement grids
    refine_passes: int = 3  # dense refinement passes of the residual fields after the grids (register.py)
    seed: int = 0


@dataclass
class FitEvent:
    step: int  # 1-based, out of total
    total: int
    losses: dict[str, float]
    psnr: float  # dB of the reconstruction of this step's frames
    elapsed: float  # seconds since the fit (or the resumed fit) started


@dataclass
class FitResult:
    """AtlasData-compatible arrays (see t2l/atlas/folder.py)."""

    layers: list[dict]  # {"name", "uv" T,H,W,2 float32, "texture" Ha,Wa,4 uint8, "uv_to_px"}
    alpha: np.ndarray | None  # T, H, W float32 in [0,1]
    reconstruction: np.ndarray  # T, H, W, 3 uint8
    psnr: list[float]  # per frame, dB
    consistency: dict[str, float] = field(default_factory=dict)  # per layer, mean drift px/frame
    gain: np.ndarray | None = None  # T, 3 float32 per-frame RGB gain of the reconstruction


# ---- losses --------------------------------------------------------------------------------------


def _grad_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of x and y finite differences. a, b: B, C, H, W."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.pow(2).mean() + dy.pow(2).mean()


def _warp(x: torch.Tensor, flow_grid: torch.Tensor) -> torch.Tensor:
    """Sample x (B, C, H, W) at normalised positions flow_grid (B, H, W, 2)."""
    return F.grid_sample(x, flow_grid, mode="bilinear", padding_mode="border", align_corners=False)


def _to_grid(flow: torch.Tensor, xy1: torch.Tensor, norm_per_px: torch.Tensor) -> torch.Tensor:
    """Pixel flow (B, H, W, 2) -> normalised positions p + flow (B, H, W, 2). norm_per_px: (2 / W, 2 / H)."""
    return xy1[..., :2] + flow * norm_per_px


def _rigidity(disp: torch.Tensor, px_per_uv: torch.Tensor) -> torch.Tensor:
    """Squared finite differences of displacement grids (B, 2, gh, gw) in atlas px. px_per_uv: (Wa/2, Ha/2)."""
    d = disp * px_per_uv[None, :, None, None]
    return (d[..., 1:] - d[..., :-1]).pow(2).mean() + (d[..., 1:, :] - d[..., :-1, :]).pow(2).mean()


# ---- the fitter ----------------------------------------------------------------------------------


class AtlasFitter:
    """Owns the model, the optimiser and the data of one fit; `run()` yields FitEvents.

    Args:
        frames: T, H, W, 3 uint8 RGB, T >= 2. masks: T, H, W bool or None (one layer).
        flows: compute_flows output (float32 or float16 flow). cfg: FitConfig.
        state: a previous `state_dict()` to resume from (same clip and size).
        progress: called with (frames registered, frames * passes) while the mappings are registered.
    """

    def __init__(self, frames: np.ndarray, masks: np.ndarray | None, flows: dict[str, np.ndarray],
                 cfg: FitConfig = FitConfig(), device: str | torch.device = "cpu", state: dict | None = None,
                 progress=None):  # fmt: skip
        self.cfg = cfg
        self.device = torch.device(device)
        T, H, W = frames.shape[:3]
        self.frames = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)  # T, H, W, 3 uint8
        self.masks = torch.from_numpy(masks).to(self.device) if masks is not None else None  # T, H, W bool
        self.flows = flows
        self.step = 0
        self.register_residuals: list[float] = []  # mean registration residual (frame px) per pass
        self.refine_residuals: list[float] = []  # the same, per dense refinement pass kept
        self.tracked: bool | None = None  # whether the tracking pass was kept (None: not registered here)
        if state is not None:
            mcfg = AtlasModelConfig.from_dict(state["model_config"])
            if (mcfg.frames, mcfg.height, mcfg.width) != (T, H, W):
                raise ValueError(
                    f"saved model is for {mcfg.frames}x{mcfg.height}x{mcfg.width} frames, not {T}x{H}x{W}"
                )
            self.model = AtlasModel(mcfg, state["model"]["bg_map.h0"],
                                    state["model"].get("fg_map.h0")).to(self.device)  # fmt: skip
            try:
                missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
            except RuntimeError as e:  # a tensor of another shape: another clip size or t2l version
                raise ValueError(f"saved model does not match: {str(e).splitlines()[-1].strip()}") from None
            # states from before the gain keep gain 1, from before the residual fields none (zeros)
            if unexpected or set(missing) - {"gain", "bg_map.res", "fg_map.res", "alpha_field"}:
                raise ValueError(f"saved model does not match: missing {missing}, unexpected {unexpected}")
            self.step = int(state["step"])
            reg = state.get("registration") or {}
            self.tracked, self.register_residuals = reg.get("tracked"), list(reg.get("residuals", []))
            self.refine_residuals = list(reg.get("refine_residuals", []))
            # a fit resumes as it started: its grid, mappings learned or held (states from before
            # registration learned them at 3e-4), and an opacity correction or none (none before it)
            saved = state.get("fit_config") or {}
            cfg = self.cfg = replace(cfg, grid=mcfg.grid, lr_mapping=float(saved.get("lr_mapping", 3e-4)),
                                     lr_opacity_field=float(saved.get("lr_opacity_field", 0.0)))  # fmt: skip
        else:
            geo = initial_geometry(masks, flows, (H, W), cfg)
            mcfg = AtlasModelConfig(T, H, W, geo["bg_size"], geo["fg_size"], cfg.grid)
            fg_h0 = torch.from_numpy(geo["fg_h0"]) if geo["fg_h0"] is not None else None
            self.model = AtlasModel(mcfg, torch.from_numpy(geo["bg_h0"]), fg_h0).to(self.device)
            initial_textures(self.model, self.frames, self.masks)
            self._register(flows, progress)
        if cfg.lr_mapping == 0:  # held: no gradients through the mappings (the group stays, for old states)
            for m in self.model.mappings().values():
                m.requires_grad_(False)
        groups = [
            {"params": [self.model.bg_texture], "lr": cfg.lr_texture},
            {
                "params": [p for m in self.model.mappings().values() for p in m.parameters()],
                "lr": cfg.lr_mapping,
            },
        ]
        if self.model.layered:
            groups.append({"params": [self.model.fg_texture], "lr": cfg.lr_texture})
        groups.append({"params": [self.model.gain], "lr": cfg.lr_gain})
        if self.model.layered:
            self.model.alpha_field.requires_grad_(cfg.lr_opacity_field > 0)
            groups.append({"params": [self.model.alpha_field], "lr": cfg.lr_opacity_field})
        self.base_lr = [g["lr"] for g in groups]  # before loading a state: saved groups carry decayed lrs
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
        if state is not None and "optimizer" in state:
            saved_opt = state["optimizer"]
            now = self.opt.state_dict()["param_groups"]
            if len(saved_opt["param_groups"]) < len(now):  # a state from before the last groups (gain,
                # opacity field) were added: those start fresh, the others keep their moments
                saved_opt = {
                    **saved_opt,
                    "param_groups": saved_opt["param_groups"] + now[len(saved_opt["param_groups"]) :],
                }
            try:
                self.opt.load_state_dict(saved_opt)
            except ValueError:  # groups that do not match at all: the moments restart
                pass
        # the frame sampler: restored from a saved state, so an interrupted fit resumes exactly
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if state is not None and "sampler" in state:
            self.gen.set_state(state["sampler"])
        elif state is not None:  # a state saved before the sampler was (t2l <= 0.1): close, not exact
            self.gen.manual_seed(cfg.seed + self.step)
        self._sampler_at_step = self.gen.get_state()  # as of the last completed step
        # constants of every step, made once: atlas size and atlas px per uv unit (Wa/2, Ha/2) per
        # layer, normalised frame units per frame px (2/W, 2/H)
        all_sizes = {"bg": self.model.cfg.bg_size, "fg": self.model.cfg.fg_size}
        self.sizes = {n: all_sizes[n] for n in self.model.mappings()}
        self.px_per_uv = {
            n: torch.tensor([s[1] / 2, s[0] / 2], device=self.device) for n, s in self.sizes.items()
        }
        self.norm_per_px = torch.tensor([2 / W, 2 / H], device=self.device)

    @torch.no_grad()
    def _register(self, flows: dict[str, np.ndarray], progress) -> None:
        """Registration (t2l/atlas/register.py). With two layers both ways are tried and the one that
        reconstructs the clip better is kept: the passes alone from the chained similarities (best for
        one rigid object: tracking adds the flow's small errors), or the tracking pass first (needed
        when the foreground does not move as one piece: two objects, a deforming character)."""
        cfg, model, T = self.cfg, self.model, len(self.frames)
        tries = [False, True] if cfg.track and model.layered else [False]
        # frames to register: every try's passes, the tracking pass, the dense refinement
        total = T * (len(tries) * cfg.register_passes + (len(tries) - 1) + cfg.refine_passes)
        done = 0

        def tick(d: int, _total: int) -> None:
            if progress is not None:
                progress(done + d, total)

        start = {k: v.clone() for k, v in model.state_dict().items()}
        best = None  # (mse, state, residuals)
        for track in tries:
            model.load_state_dict(start)
            if track:
                track_frames(model, self.frames, self.masks, flows, cfg.track_smooth, progress=tick)
                done += T
                initial_textures(model, self.frames, self.masks)
            residuals = []
            if cfg.register_passes:
                residuals = register_frames(model, self.frames, self.masks, cfg.register_passes,
                                            cfg.register_smooth, progress=tick)  # fmt: skip
                done += T * cfg.register_passes
            mse = self._mse() if len(tries) > 1 else 0.0
            if best is None or mse < best[0]:
                best = (mse, {k: v.clone() for k, v in model.state_dict().items()} if len(tries) > 1 else None,
                        residuals, track)  # fmt: skip
        if best[1] is not None:
            model.load_state_dict(best[1])
        self.register_residuals, self.tracked = best[2], best[3]
        if cfg.refine_passes:
            self.refine_residuals = refine_frames(
                model, self.frames, self.masks, cfg.refine_passes, score=self._mse, progress=tick
            )

    @torch.no_grad()
    def _mse(self, chunk: int = 4) -> float:
        """Mean squared reconstruction error of every frame ([0,1] units)."""
        total = 0.0
        for s in range(0, len(self.frames), chunk):
            t = torch.arange(s, min(len(self.frames), s + chunk), device=self.device)
            target = self.frames[t].permute(0, 3, 1, 2).float() / 255
            total += float((self.model(t)["rgb"].clamp(0, 1) - target).pow(2).mean((1, 2, 3)).sum())
        return total / len(self.frames)

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: model config and weights, optimiser, step, frame sampler
        state (as of the last completed step), fit config."""
        return {
            "model_config": self.model.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "sampler": self._sampler_at_step.clone(),
            "fit_config": asdict(self.cfg),
            "registration": {
                "tracked": self.tracked,
                "residuals": list(self.register_residuals),
                "refine_residuals": list(self.refine_residuals),
            },
        }

    # -- one step -----------------------------------------------------------------------------

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.model.cfg.frames
        first = torch.randint(0, T - 1, (self.cfg.pairs,), generator=self.gen)
        return first, torch.cat([first, first + 1]).to(self.device)

    def losses(self, first: torch.Tensor, t: torch.Tensor, frac: float) -> tuple[torch.Tensor, dict, float]:
        cfg, model = self.cfg, self.model
        P = len(first)
        out = model(t)
        target = self.frames[t].permute(0, 3, 1, 2).float() / 255  # B, 3, H, W
        terms = {}
        mse = (out["rgb"] - target).pow(2).mean()
        terms["rgb"] = cfg.w_rgb * mse
        terms["grad"] = cfg.w_grad * _grad_loss(out["rgb"], target)
        idx = first.numpy()  # P
        fwd = torch.from_numpy(np.asarray(self.flows["forward"][idx], np.float32)).to(self.device)  # P,H,W,2
        valid = torch.from_numpy(self.flows["forward_valid"][idx]).to(self.device).float()  # P, H, W
        grid = _to_grid(fwd, model.xy1, self.norm_per_px)  # P, H, W, 2
        layer_w = {"bg": valid}
        if model.layered:
            alpha = out["alpha"][:, 0]  # B, H, W
            a0, a1 = alpha[:P], alpha[P:]
            layer_w = {"bg": valid * (1 - a0).detach(), "fg": valid * a0.detach()}
            if self.masks is not None:
                m = self.masks[t].float()
                w_mask = cfg.w_mask * (1.0 if frac < cfg.mask_until else 0.1)
                terms["mask"] = w_mask * F.binary_cross_entropy(alpha.clamp(1e-4, 1 - 1e-4), m)
            terms["sparsity"] = cfg.w_sparsity * (out["rgb_fg"] * (1 - out["alpha"])).pow(2).mean()
            a1_at = _warp(a1[:, None], grid)[:, 0]
            terms["alpha_flow"] = cfg.w_alpha_flow * (valid * (a0 - a1_at).abs()).mean()
        flow_terms, rigid = torch.zeros(()), torch.zeros(())
        for name, mapping in (model.mappings() if cfg.lr_mapping > 0 else {}).items():  # frozen: no terms
            uv = out[f"uv_{name}"]
            uv1_at = _warp(uv[P:].permute(0, 3, 1, 2), grid).permute(0, 2, 3, 1)  # P, H, W, 2
            err = ((uv[:P] - uv1_at) * self.px_per_uv[name]).pow(2).sum(-1).add(1e-4).sqrt()
            flow_terms = flow_terms + (layer_w[name] * err).mean()
            rigid = rigid + _rigidity(mapping.disp[t], self.px_per_uv[name])
        terms["flow"] = cfg.w_flow * flow_terms
        terms["rigid"] = cfg.w_rigid * rigid
        total = sum(terms.values())
        psnr = -10 * math.log10(max(float(mse.detach()), 1e-10))
        return total, {k: float(v.detach()) for k, v in terms.items()}, psnr

    def run(self) -> Iterator[FitEvent]:
        """Optimise from the current step to cfg.steps, yielding one FitEvent per step."""
        start = time.perf_counter()
        total = self.cfg.steps
        self.model.train()
        while self.step < total:
            frac = self.step / max(total, 1)
            decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))  # cosine to 10%
            for g, lr in zip(self.opt.param_groups, self.base_lr, strict=True):
                g["lr"] = lr * decay
            first, t = self._batch()
            loss, terms, psnr = self.losses(first, t, frac)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            self._sampler_at_step = self.gen.get_state()
            yield FitEvent(self.step, total, terms, psnr, time.perf_counter() - start)

    # -- results ------------------------------------------------------------------------------

    @torch.no_grad()
    def export(self, chunk: int = 4, progress=None) -> FitResult:
        """Evaluate every frame: uv per layer, opacity, reconstruction, PSNR, atlas images with coverage.

        progress: called with (frames done, frames) after each chunk."""
        model = self.model.eval()
        T, H, W = model.cfg.frames, model.cfg.height, model.cfg.width
        names = list(model.mappings())
        uvs = {n: np.empty((T, H, W, 2), np.float32) for n in names}
        alpha = np.empty((T, H, W), np.float32) if model.layered else None
        recon = np.empty((T, H, W, 3), np.uint8)
        psnr = []
        cover = {n: torch.zeros(int(np.prod(s)), device=self.device) for n, s in self.sizes.items()}
        for s in range(0, T, chunk):
            t = torch.arange(s, min(T, s + chunk), device=self.device)
            out = model(t)
            rgb = (out["rgb"].clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)  # B, H, W, 3
            recon[s : s + len(t)] = rgb.cpu().numpy()
            err = (rgb.float() - self.frames[t].float()).pow(2).mean((1, 2, 3))
            psnr += [float(10 * math.log10(255**2 / max(float(e), 1e-10))) for e in err]
            a = out["alpha"][:, 0] if model.layered else None
            if a is not None:
                alpha[s : s + len(t)] = a.cpu().numpy()
            for n in names:
                uv = out[f"uv_{n}"]
                uvs[n][s : s + len(t)] = uv.cpu().numpy()
                size = self.sizes[n]
                w = torch.ones_like(uv[..., 0]) if a is None else (a if n == "fg" else 1 - a)
                px = texel_index(uv, grid_uv_to_px(size)).reshape(-1, 2)
                ok = (px[:, 0] >= 0) & (px[:, 0] < size[1]) & (px[:, 1] >= 0) & (px[:, 1] < size[0])
                idx = px[ok, 1] * size[1] + px[ok, 0]
                cover[n].scatter_reduce_(0, idx, w.reshape(-1)[ok], reduce="amax")
            if progress is not None:
                progress(min(T, s + chunk), T)
        layers = []
        for n in names:
            size = self.sizes[n]
            tex = model.textures()[n][0, :3].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            cov = cv2.dilate(cover[n].reshape(size).cpu().numpy(), np.ones((3, 3), np.uint8))
            rgba = np.concatenate([tex, cov[..., None]], -1)
            layers.append({"name": n, "uv": uvs[n], "texture": (rgba * 255).round().astype(np.uint8),
                           "uv_to_px": grid_uv_to_px(size)})  # fmt: skip
        result = FitResult(layers, alpha, recon, psnr, gain=model.gain.detach().clamp(min=0).cpu().numpy())
        result.consistency = {
            lay["name"]: drift(lay["uv"], lay["uv_to_px"], self.flows, alpha, lay["name"]) for lay in layers
        }
        return result


def atlas_scale(uv: np.ndarray, to_px, where: np.ndarray | None = None) -> float:
    """Atlas px per frame px of a mapping (T, H, W, 2): the median of sqrt(|det J|) of frame px ->
    atlas px (finite differences) over every 4th frame, at the pixels `where` (T, H, W bool) if given."""
    sx, _, sy, _ = to_px
    u, v = uv[::4, ..., 0] * sx, uv[::4, ..., 1] * sy  # t, H, W atlas px
    ux, vx = u[:, :-1, 1:] - u[:, :-1, :-1], v[:, :-1, 1:] - v[:, :-1, :-1]
    uy, vy = u[:, 1:, :-1] - u[:, :-1, :-1], v[:, 1:, :-1] - v[:, :-1, :-1]
    det = np.abs(ux * vy - uy * vx)
    if where is not None and where[::4, :-1, :-1].any():
        det = det[where[::4, :-1, :-1]]
    return float(np.sqrt(np.median(det)))


def drift(uv: np.ndarray, to_px, flows: dict[str, np.ndarray], alpha: np.ndarray | None, layer: str,
          scale: float | None = None) -> float:  # fmt: skip
    """Mean |uv_t(p) - uv_{t+1}(p + flow)| in atlas px divided by `scale` (atlas px per frame px; None:
    measured, `atlas_scale`), over trusted forward-flow pixels p that belong to `layer` (alpha > 0.5
    for fg, <= 0.5 for bg): how far an edit slides over the content per frame, in frame px."""
    if scale is None:
        mine = None if alpha is None else (alpha > 0.5 if layer == "fg" else alpha <= 0.5)
        scale = atlas_scale(uv, to_px, mine)
    scale = max(scale, 1e-6)  # a collapsed mapping: huge drift, not a division by zero
    sx, _, sy, _ = to_px
    total, count = 0.0, 0
    H, W = uv.shape[1:3]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    for t in range(len(flows["forward"])):
        f = np.asarray(flows["forward"][t], np.float32)
        where = flows["forward_valid"][t].copy()
        if alpha is not None:
            where &= (alpha[t] > 0.5) if layer == "fg" else (alpha[t] <= 0.5)
        if not where.any():
            continue
        nxt = cv2.remap(
            uv[t + 1], xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        d = uv[t] - nxt
        err = np.hypot(d[..., 0] * sx, d[..., 1] * sy)[where]
        total += float(err.sum())
        count += int(where.sum())
    return total / max(count, 1) / scale
