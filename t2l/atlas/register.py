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

import numpy as np
import torch
import torch.nn.functional as F

from t2l.atlas.flow import consistency, dis_flow, sample, to_gray
from t2l.atlas.model import AtlasModel
from t2l.atlas.separate import textured


def grid_basis(cells: int, pixels: int) -> torch.Tensor:
    """The 1-D weights of `F.interpolate(..., mode="bilinear", align_corners=True)` from `cells` grid
    values to `pixels` samples: pixels, cells (row p holds the weights of grid value c for sample p)."""
    eye = torch.eye(cells)[None]  # 1, cells (as channels), cells (as length)
    return F.interpolate(eye, size=pixels, mode="linear", align_corners=True)[0].T.contiguous()


def _difference_operator(gh: int, gw: int) -> torch.Tensor:
    """Finite differences along rows and columns of a gh x gw grid: (edges, gh * gw)."""
    idx = torch.arange(gh * gw).view(gh, gw)
    pairs = [(idx[:, 1:], idx[:, :-1]), (idx[1:, :], idx[:-1, :])]
    rows = []
    for a, b in pairs:
        a, b = a.reshape(-1), b.reshape(-1)
        d = torch.zeros(len(a), gh * gw)
        d[torch.arange(len(a)), a] = 1
        d[torch.arange(len(a)), b] = -1
        rows.append(d)
    return torch.cat(rows)


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
    d = _difference_operator(gh, gw)
    lam = smooth * float(w.sum()) / (gh * gw) + 1e-6
    eye = torch.eye(gh * gw)
    lhs = m + lam * (d.T @ d) + anchor * lam * eye
    rhs = torch.stack([(ay.T @ (w * target[..., c]) @ ax).reshape(-1) for c in range(2)], 1)  # G, 2
    rhs = rhs + anchor * lam * current.reshape(2, -1).T
    sol = torch.linalg.solve(lhs.double(), rhs.double()).float()  # G, 2
    return sol.T.reshape(2, gh, gw)


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
    from t2l.atlas.init import initial_textures  # init imports this module's users

    T, H, W = frames.shape[:3]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    residuals = []
    sizes = {"bg": model.cfg.bg_size, "fg": model.cfg.fg_size}
    for p in range(passes):
        total, count = 0.0, 0
        for t in range(T):
            tt = torch.tensor([t], device=frames.device)
            out = model(tt)
            frame = frames[t].cpu().numpy()
            rec = (out["rgb"][0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            a, b = to_gray(frame), to_gray(rec)
            f = dis_flow(a, b, preset)  # frame px -> where its content is in the rendering
            g = dis_flow(b, a, preset)
            ok = consistency(f, g, max_error) & textured(frame)
            mx, my = xs + f[..., 0], ys + f[..., 1]
            mag = np.linalg.norm(f, axis=-1)
            total, count = total + float(mag[ok].sum()), count + int(ok.sum())
            alpha = out["alpha"][0, 0].cpu().numpy() if model.layered else None
            a_at = sample(alpha, mx, my) if alpha is not None else None
            for name, mapping in model.mappings().items():
                uv = out[f"uv_{name}"][0].cpu().numpy()  # H, W, 2
                uv_at = sample(uv, mx, my)  # where the pixel's content is mapped now
                layer = np.ones((H, W), bool) if a_at is None else (a_at > 0.5 if name == "fg" else a_at <= 0.5)
                if masks is not None and name == "fg":
                    layer &= masks[t].cpu().numpy()
                wgt = (ok & layer).astype(np.float32)
                if wgt.sum() < 50:
                    continue
                disp = mapping.disp[t]  # 2, gh, gw
                up = F.interpolate(disp[None], size=(H, W), mode="bilinear", align_corners=True)[0]
                target = torch.from_numpy(uv_at - uv) + up.permute(1, 2, 0).cpu()  # H, W, 2 uv units
                Ha, Wa = sizes[name]
                px = torch.tensor([Wa / 2, Ha / 2])  # atlas px per uv unit
                new = solve_grid(target * px, torch.from_numpy(wgt), tuple(disp.shape[1:]), smooth,
                                 disp.cpu() * px[:, None, None])  # fmt: skip
                mapping.disp[t] = (new / px[:, None, None]).to(disp.device)
            if progress is not None:
                progress(p * T + t + 1, passes * T)
        residuals.append(total / max(count, 1))
        initial_textures(model, frames, masks)
    return residuals

