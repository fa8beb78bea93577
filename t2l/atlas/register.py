"""Register every frame to the atlas it is reconstructed from, and fit the displacement grids to it.

After the initial mappings (homographies chained from the flow, t2l/atlas/init.py) each atlas is
the average of the frames splatted into it. Where a frame's content does not sit where its mapping
puts it (parallax, a character bending, a face moving, two objects going apart, drift that a chain
of homographies accumulates over a long clip) the average is a ghost, and gradient descent on the
colours moves the mappings only a little. Registration does it directly, as mosaicing does to
de-ghost a panorama: the reconstruction of frame t is rendered from the atlases, the dense flow from
the frame to that rendering (OpenCV DIS, forward-backward checked, textured pixels only) says where
each frame pixel's content sits in the rendering, and so which atlas coordinate the pixel should
map to. Each layer's displacement grid (t2l/atlas/model.py `LayerMapping.disp`) is then solved in
closed form: weighted least squares of the bilinearly upsampled grid against those targets, plus a
smoothness term in atlas pixels, which also fills cells without trusted pixels. The textures are
splatted again from the registered mappings and the two steps repeat a few times; each pass
sharpens the atlas the next registration is made against.

A layer's pixels are the ones its opacity gives it (fg: alpha > 0.5 at the matched position).

Example:
    >>> from t2l.atlas.register import register_frames
    >>> register_frames(model, frames, masks, passes=2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from t2l.atlas.flow import consistency, dis_flow, sample, to_gray
from t2l.atlas.model import AtlasModel
from t2l.atlas.separate import textured

_K5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


@lru_cache(maxsize=16)
def grid_basis(cells: int, pixels: int) -> torch.Tensor:
    """The 1-D weights of `F.interpolate(..., mode="bilinear", align_corners=True)` from `cells` grid
    values to `pixels` samples: pixels, cells (row p holds the weights of grid value c for sample p).
    Cached (every frame of a clip has the same sizes): do not modify the result."""
    eye = torch.eye(cells)[None]  # 1, cells (as channels), cells (as length)
    return F.interpolate(eye, size=pixels, mode="linear", align_corners=True)[0].T.contiguous()


@lru_cache(maxsize=4)
def _smoothness(gh: int, gw: int) -> torch.Tensor:
    """D^T D for the finite differences D along rows and columns of a gh x gw grid: (gh*gw, gh*gw).
    Cached: do not modify the result."""
    idx = torch.arange(gh * gw).view(gh, gw)
    pairs = [(idx[:, 1:], idx[:, :-1]), (idx[1:, :], idx[:-1, :])]
    rows = []
    for a, b in pairs:
        a, b = a.reshape(-1), b.reshape(-1)
        d = torch.zeros(len(a), gh * gw)
        d[torch.arange(len(a)), a] = 1
        d[torch.arange(len(a)), b] = -1
        rows.append(d)
    d = torch.cat(rows)  # edges, gh * gw
    return d.T @ d


@lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) float32 pixel coordinates of an H x W frame (np.mgrid). Cached: do not modify."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ys, xs


def solve_grid(target: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int], smooth: float,
               current: torch.Tensor, anchor: float = 1e-3) -> torch.Tensor:  # fmt: skip
    """The displacement grid whose bilinear upsampling best matches `target` where `weight` > 0.

    Minimises sum_p w_p |up(D)(p) - target_p|^2 + lam * |grad D|^2 + anchor * lam * |D - current|^2,
    lam = smooth * sum(w) / cells: the smoothness weight does not depend on the frame size.

    Args:
        target: H, W, 2 (any units); weight: H, W >= 0; grid: (gh, gw); current: 2, gh, gw (where
            there is no data the grid stays near it).
    Returns:
        2, gh, gw in the units of target.
    """
    H, W = weight.shape
    gh, gw = grid
    ay, ax = grid_basis(gh, H), grid_basis(gw, W)  # H, gh; W, gw
    w = weight.float()
    z = torch.einsum("yx,xj,xl->yjl", w, ax, ax)  # H, gw, gw
    m = torch.einsum("yi,yk,yjl->ijkl", ay, ay, z).reshape(gh * gw, gh * gw)
    lam = smooth * float(w.sum()) / (gh * gw) + 1e-6
    eye = torch.eye(gh * gw)
    lhs = m + lam * _smoothness(gh, gw) + anchor * lam * eye
    rhs = torch.stack([(ay.T @ (w * target[..., c]) @ ax).reshape(-1) for c in range(2)], 1)  # G, 2
    rhs = rhs + anchor * lam * current.reshape(2, -1).T
    sol = torch.linalg.solve(lhs.double(), rhs.double()).float()  # G, 2
    return sol.T.reshape(2, gh, gw)


def _solve_layer(model: AtlasModel, name: str, t: int, target_uv: np.ndarray, uv: np.ndarray, wgt: np.ndarray,
                 smooth: float, anchor: torch.Tensor | None = None) -> bool:  # fmt: skip
    """Re-solve layer `name`'s grid of frame t so its mapping moves from uv towards target_uv (H, W, 2)
    where wgt (H, W float) > 0. anchor: 2, gh, gw grid the cells without data stay near (default:
    the current one). Returns False (nothing changed) with too few trusted pixels."""
    if wgt.sum() < 50:
        return False
    mapping = model.mappings()[name]
    H, W = wgt.shape
    disp = mapping.disp[t]  # 2, gh, gw
    up = F.interpolate(disp[None], size=(H, W), mode="bilinear", align_corners=True)[0]
    target = torch.from_numpy(target_uv - uv) + up.permute(1, 2, 0).cpu()  # H, W, 2 uv units
    Ha, Wa = model.cfg.bg_size if name == "bg" else model.cfg.fg_size
    px = torch.tensor([Wa / 2, Ha / 2])[:, None, None]  # atlas px per uv unit
    current = (disp if anchor is None else anchor).cpu() * px
    new = solve_grid(target * px[:, 0, 0], torch.from_numpy(wgt), tuple(disp.shape[1:]), smooth, current)
    mapping.disp[t] = (new / px).to(disp.device)
    return True


@dataclass
class _Match:
    """Where each pixel of a frame sits in that frame's rendering (see `_match`)."""

    out: dict[str, torch.Tensor]  # the model's outputs for [t]
    flow: np.ndarray  # H, W, 2: frame px -> rendering px
    ok: np.ndarray  # H, W bool: trusted (forward-backward consistent, textured)
    mx: np.ndarray  # H, W: x of each pixel's content in the rendering
    my: np.ndarray
    alpha_at: np.ndarray | None  # H, W: the rendering's opacity there (None: one layer)

    def layer(self, name: str) -> np.ndarray:
        """H, W bool: the pixels the opacity gives to layer `name` (fg: alpha > 0.5); all with one layer."""
        if self.alpha_at is None:
            return np.ones(self.ok.shape, bool)
        return self.alpha_at > 0.5 if name == "fg" else self.alpha_at <= 0.5

    def residual(self) -> tuple[float, int]:
        """(sum of the trusted flow lengths in frame px, their count)."""
        mag = np.linalg.norm(self.flow, axis=-1)
        return float(mag[self.ok].sum()), int(self.ok.sum())


def _match(model: AtlasModel, t: int, frame: np.ndarray, preset: str, max_error: float,
           max_shift: float | None = None) -> _Match:  # fmt: skip
    """Render frame t and find where each pixel of the frame (H, W, 3 uint8) sits in the rendering
    (DIS flow frame -> rendering, forward-backward checked). max_shift: longer flow is not trusted."""
    out = model(torch.tensor([t], device=model.xy1.device))
    rec = (out["rgb"][0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    a, b = to_gray(frame), to_gray(rec)
    f = dis_flow(a, b, preset)  # frame px -> where its content is in the rendering
    ok = consistency(f, dis_flow(b, a, preset), max_error) & textured(frame)
    if max_shift is not None:
        ok &= np.hypot(f[..., 0], f[..., 1]) <= max_shift
    ys, xs = _pixel_grid(*frame.shape[:2])
    mx, my = xs + f[..., 0], ys + f[..., 1]
    alpha_at = sample(out["alpha"][0, 0].cpu().numpy(), mx, my) if model.layered else None
    return _Match(out, f, ok, mx, my, alpha_at)


def _register_one(model: AtlasModel, t: int, frame: np.ndarray, mask: np.ndarray | None, smooth: float,
                  preset: str, max_error: float, known: dict[str, np.ndarray] | None = None,
                  layers: tuple[str, ...] = ("bg", "fg")) -> tuple[float, int]:  # fmt: skip
    """Register frame t (H, W, 3 uint8) to its reconstruction and re-solve each layer's grid.
    known: per layer, the texels that hold data (others are hole-filled guesses: not matched against).
    Returns (sum of trusted residuals in frame px, their count)."""
    m = _match(model, t, frame, preset, max_error)
    for name in (n for n in model.mappings() if n in layers):
        uv = m.out[f"uv_{name}"][0].cpu().numpy()  # H, W, 2
        uv_at = sample(uv, m.mx, m.my)  # where the pixel's content is mapped now
        layer = m.layer(name)
        if mask is not None and name == "fg":
            layer &= mask
        if known is not None:
            layer &= _known_at(known[name], uv_at, model, name)
        _solve_layer(model, name, t, uv_at, uv, (m.ok & layer).astype(np.float32), smooth)
    return m.residual()


def _known_at(known: np.ndarray, uv: np.ndarray, model: AtlasModel, name: str) -> np.ndarray:
    """Whether the texel at atlas uv (H, W, 2) holds data (known: Ha, Wa bool). Returns H, W bool."""
    k = torch.from_numpy(known.astype(np.float32))[None, None]
    s = model.sample(k, torch.from_numpy(np.ascontiguousarray(uv))[None])  # 1, 1, H, W
    return s[0, 0].numpy() > 0.99


def _propagate(model: AtlasModel, t: int, flows: dict[str, np.ndarray], masks: np.ndarray | None,
               smooth: float, layers: tuple[str, ...] = ("bg", "fg")) -> None:  # fmt: skip
    """Frame t's grids from frame t-1's mappings carried along the flow: uv_t(p) = uv_{t-1}(p + flow_{t->t-1}(p))
    on trusted pixels of each layer; cells without any keep frame t-1's grid."""
    H, W = model.cfg.height, model.cfg.width
    ys, xs = _pixel_grid(H, W)
    bwd = np.asarray(flows["backward"][t - 1], np.float32)  # t -> t-1
    ok = flows["backward_valid"][t - 1]
    mx, my = xs + bwd[..., 0], ys + bwd[..., 1]
    prev = model(torch.tensor([t - 1], device=model.xy1.device))
    cur = model(torch.tensor([t], device=model.xy1.device))
    for name, mapping in ((n, m) for n, m in model.mappings().items() if n in layers):
        layer = np.ones((H, W), bool)
        if masks is not None:  # away from the boundaries, where flow is least reliable
            m_prev = sample(masks[t - 1].astype(np.float32), mx, my)
            inner = cv2.erode(masks[t].astype(np.uint8), _K5).astype(bool)
            outer = ~cv2.dilate(masks[t].astype(np.uint8), _K5).astype(bool)
            layer = (inner & (m_prev > 0.99)) if name == "fg" else (outer & (m_prev < 0.01))
        uv_prev = sample(prev[f"uv_{name}"][0].cpu().numpy(), mx, my)
        uv = cur[f"uv_{name}"][0].cpu().numpy()
        if not _solve_layer(model, name, t, uv_prev, uv, (ok & layer).astype(np.float32), smooth,
                            anchor=mapping.disp[t - 1]):  # fmt: skip
            mapping.disp[t] = mapping.disp[t - 1]  # too little trusted flow: carry the previous grid


@torch.no_grad()
def track_frames(model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, flows: dict[str, np.ndarray],
                 smooth: float = 0.05, preset: str = "medium", max_error: float = 1.0,
                 layers: tuple[str, ...] = ("fg",), progress: Callable[[int, int], None] | None = None) -> None:  # fmt: skip
    """One pass in frame order: each frame's grids start from the previous frame's mappings carried
    along the flow, are then registered to the atlas made of the frames before it (sharp: no later
    frame has blurred it), and the frame is added to that atlas. This follows motion a single chain
    of homographies cannot (two objects going apart, a character changing shape), without the drift
    that chaining flow alone accumulates. The textures are left as the average of all frames."""
    from t2l.atlas.init import TextureSplat  # init imports this module's users

    T = len(frames)
    m_np = masks.cpu().numpy() if masks is not None else None
    acc = TextureSplat(model)
    acc.add(model, frames, masks, torch.tensor([0], device=frames.device))
    known = acc.write(model)
    for t in range(1, T):
        _propagate(model, t, flows, m_np, smooth, layers)
        _register_one(model, t, frames[t].cpu().numpy(), None if m_np is None else m_np[t], smooth, preset,
                      max_error, known, layers)  # fmt: skip
        acc.add(model, frames, masks, torch.tensor([t], device=frames.device))
        known = acc.write(model)
        if progress is not None:
            progress(t + 1, T)


@torch.no_grad()
def register_frames(model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, passes: int = 2,
                    smooth: float = 0.05, preset: str = "medium", max_error: float = 1.0,
                    progress: Callable[[int, int], None] | None = None) -> list[float]:  # fmt: skip
    """Register each frame to its reconstruction and re-solve every layer's displacement grid; then
    splat the textures again (t2l/atlas/init.py). Repeats `passes` times.

    Args:
        model: an initialised AtlasModel (textures splatted). frames: T, H, W, 3 uint8 (the model's device).
        masks: T, H, W bool or None, as given to the initial splat.
        smooth: smoothness of the grids relative to the data (atlas px^2 per cell, see solve_grid).
        progress: called with (frames done, frames * passes).
    Returns:
        the mean trusted registration residual (frame px) of each pass, before its update.
    """
    m_np = masks.cpu().numpy() if masks is not None else None

    def one(t: int, frame: np.ndarray) -> tuple[float, int]:
        return _register_one(model, t, frame, None if m_np is None else m_np[t], smooth, preset, max_error)

    return _passes(model, frames, masks, passes, one, progress=progress)


@torch.no_grad()
def _passes(model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, passes: int,
            one: Callable[[int, np.ndarray], tuple[float, int]], score: Callable[[], float] | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[float]:  # fmt: skip
    """`passes` times: one(t, frame) for every frame (it updates frame t's mapping and returns its
    (residual sum, count)), then the textures are splatted again, the gain re-estimated in the last
    pass only (each re-estimate is a second splat). With `score` (the clip's reconstruction error) a
    pass that does not lower it is undone and ends the loop. Returns the mean residual of each pass kept."""
    from t2l.atlas.init import initial_textures  # init imports this module's users

    T = len(frames)
    residuals = []
    best = score() if score is not None else None
    for p in range(passes):
        before = {k: v.clone() for k, v in model.state_dict().items()} if score is not None else None
        total, count = 0.0, 0
        for t in range(T):
            r, n = one(t, frames[t].cpu().numpy())
            total, count = total + r, count + n
            if progress is not None:
                progress(p * T + t + 1, passes * T)
        initial_textures(model, frames, masks, gain_passes=int(p == passes - 1))
        if score is not None:
            now = score()
            if now >= best:
                model.load_state_dict(before)
                if progress is not None:
                    progress(passes * T, passes * T)
                break
            best = now
        residuals.append(total / max(count, 1))
    return residuals


def _spread_half(delta: np.ndarray, wgt: np.ndarray, size: tuple[int, int], sigma: float = 1.0) -> np.ndarray:
    """A displacement (H, W, 2) trusted where wgt (H, W float in [0, 1]) is, spread to the pixels
    around: near trusted pixels their Gaussian-weighted average (sigma px), farther out that of a
    4x wider neighbourhood, fading to 0 where no pixel is trusted; then resized to size (rows, cols).
    Returns rows, cols, 2."""
    out = None
    for s in (4 * sigma, sigma):  # coarse first, then the fine average where it has support
        num = cv2.GaussianBlur(delta * wgt[..., None], (0, 0), s)
        den = cv2.GaussianBlur(wgt, (0, 0), s)
        if out is None:
            out = num / np.maximum(den, 0.3)[..., None]
        else:
            near = np.clip(den / 0.3, 0, 1)[..., None]
            out = near * num / np.maximum(den, 1e-6)[..., None] + (1 - near) * out
    return cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _refine_one(model: AtlasModel, t: int, frame: np.ndarray, preset: str, max_error: float,
                max_shift: float = 4.0) -> tuple[float, int]:  # fmt: skip
    """Move frame t's dense residual fields so each trusted pixel maps where the flow from the frame to
    its reconstruction finds its content. Flow longer than max_shift px is not trusted: after the
    grids, what is still that far off is a flow error or content the atlas does not hold.
    Returns (sum of trusted residuals in frame px, their count)."""
    m = _match(model, t, frame, preset, max_error, max_shift)
    for name, mapping in model.mappings().items():
        uv = m.out[f"uv_{name}"][0].cpu().numpy()  # H, W, 2
        layer = m.ok & m.layer(name)
        if layer.sum() < 50:
            continue
        delta = _spread_half(
            sample(uv, m.mx, m.my) - uv, layer.astype(np.float32), tuple(mapping.res.shape[2:])
        )
        mapping.res[t] += torch.from_numpy(delta).permute(2, 0, 1).to(mapping.res.device)
    return m.residual()


@torch.no_grad()
def refine_frames(model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, passes: int = 3,
                  preset: str = "medium", max_error: float = 1.0, score: Callable[[], float] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[float]:  # fmt: skip
    """Dense refinement after the grids: each frame is registered to its reconstruction again and the
    flow's displacement (trusted pixels of each layer by the opacity, spread over a few px and halved
    in resolution) is added to the layer's residual field (model.py `LayerMapping.res`); the textures
    are splatted again after each pass. What the grid smooths over (a mouth opening, a building's edge
    against the sky) then stops blurring the atlas: each pass makes the atlas sharper for the next.

    Args:
        score: the clip's reconstruction error (lower is better); a pass that does not lower it is
            undone and the refinement stops there. None: every pass is kept.
        others as register_frames (progress: (frames done, frames * passes)).
    Returns:
        the mean trusted residual (frame px) of each pass kept, before its update.
    """

    def one(t: int, frame: np.ndarray) -> tuple[float, int]:
        return _refine_one(model, t, frame, preset, max_error)

    return _passes(model, frames, masks, passes, one, score, progress)
