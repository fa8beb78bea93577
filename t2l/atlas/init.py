"""Initialise a layered atlas from the flow and the masks, before any optimisation.

Geometry (`initial_geometry`): the camera motion between consecutive frames is a RANSAC homography
fitted to the trusted forward flow outside the (dilated) masks; these per-pair maps are chained into
frame t -> frame 0 maps, and the background atlas is the bounding box of every frame mapped into
frame 0, plus a margin, at 1 atlas px per frame px (less when that exceeds max_atlas_px). If the
chained perspective maps fold or blow the atlas up (> 25 frame areas), affine camera motion is used
instead. The object's own motion is a RANSAC similarity fitted to the flow inside the (eroded)
masks, or the shift of the mask centroids when that fails, chained the same way into the foreground
mapping; its atlas covers the masked pixels. Mappings are returned as normalised-frame ->
normalised-atlas homographies (the `h0` of t2l/atlas/model.py).

Textures (`initial_textures`): every frame pixel is splatted (bilinearly) at its atlas position
and each atlas starts as the weighted average of the pixels landing on it, holes filled from ever
coarser levels (push-pull). The background weighs pixels by 1 - mask, the foreground takes its
colour from masked pixels only, and its opacity channel starts as the logit of the fraction of
masked pixels landing on each texel. On the synthetic clips this alone reconstructs at ~40 dB.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from t2l.atlas.coords import grid_uv_to_px, uv_to_pixels
from t2l.atlas.masks import camera_homography, similarity
from t2l.atlas.model import AtlasModel

if TYPE_CHECKING:  # fit.py imports this module
    from t2l.atlas.fit import FitConfig


def _chain(steps: list[np.ndarray]) -> list[np.ndarray]:
    """Per-pair maps frame t px -> frame t+1 px  ->  per-frame maps frame t px -> frame 0 px."""
    out = [np.eye(3)]
    for h in steps:
        out.append(out[-1] @ np.linalg.inv(h))
    return out


def _to_normalised(chain: list[np.ndarray], points: list[np.ndarray], size: tuple[int, int], margin: int,
                   max_px: int, density: float = 1.0) -> tuple[np.ndarray, tuple[int, int]]:  # fmt: skip
    """Turn frame->reference px maps into normalised-frame -> normalised-atlas homographies.

    The atlas covers the bounding box of `points` (per frame, N,2 px) mapped into the reference, plus
    a margin, at 1 atlas px per reference px (less if that exceeds max_px).
    """
    H, W = size
    mapped = []
    for g, pts in zip(chain, points, strict=True):
        if len(pts):
            p = np.c_[pts, np.ones(len(pts))] @ g.T
            mapped.append(p[:, :2] / p[:, 2:])
    allp = np.concatenate(mapped)
    x0, y0 = allp.min(0) - margin
    x1, y1 = allp.max(0) + margin
    scale = min(density, math.sqrt(max_px / max((x1 - x0) * (y1 - y0), 1.0)))
    Wa, Ha = max(8, math.ceil((x1 - x0) * scale)), max(8, math.ceil((y1 - y0) * scale))
    to_px = np.array([[W / 2, 0, W / 2 - 0.5], [0, H / 2, H / 2 - 0.5], [0, 0, 1]])  # normalised -> px index
    to_atlas = np.array([[scale, 0, -scale * x0 + 0.5], [0, scale, -scale * y0 + 0.5], [0, 0, 1]])
    norm = np.array([[2 / Wa, 0, -1], [0, 2 / Ha, -1], [0, 0, 1]])
    return np.stack([norm @ to_atlas @ g @ to_px for g in chain]), (Ha, Wa)


def initial_geometry(masks: np.ndarray | None, flows: dict[str, np.ndarray], size: tuple[int, int],
                     cfg: FitConfig) -> dict:  # fmt: skip
    """Initial homographies and atlas sizes from the flow (and the masks for two layers)."""
    H, W = size
    fwd, fval = flows["forward"], flows["forward_valid"]
    T = len(fwd) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    corners = np.array([[0, 0], [W - 1, 0], [0, H - 1], [W - 1, H - 1]], np.float64)

    def camera(affine: bool) -> list[np.ndarray]:
        cam = []
        for t in range(T - 1):
            keep = fval[t]
            if masks is not None:
                keep = keep & ~cv2.dilate(masks[t].astype(np.uint8), kernel).astype(bool)
            cam.append(camera_homography(fwd[t], keep, affine=affine))
        return cam

    cam = camera(affine=False)
    chain = _chain(cam)
    bg_h0, bg_size = _to_normalised(chain, [corners] * T, size, cfg.margin, cfg.max_atlas_px, cfg.density)
    unscaled = _to_normalised(chain, [corners] * T, size, cfg.margin, 10**12)[1]
    folds = any((np.c_[corners, np.ones(4)] @ g[2]).min() <= 0 for g in chain)
    if folds or unscaled[0] * unscaled[1] > 25 * H * W:  # chained perspective blew up: affine motion instead
        cam = camera(affine=True)
        bg_h0, bg_size = _to_normalised(
            _chain(cam), [corners] * T, size, cfg.margin, cfg.max_atlas_px, cfg.density
        )
    geo = {"bg_h0": bg_h0, "bg_size": bg_size, "fg_h0": None, "fg_size": None}
    if masks is None:
        return geo
    inner_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    obj = []
    for t in range(T - 1):
        inner = cv2.erode(masks[t].astype(np.uint8), inner_k).astype(bool) & fval[t]
        h = similarity(fwd[t], inner)
        if h is None and masks[t].any() and masks[t + 1].any():
            shift = np.argwhere(masks[t + 1]).mean(0) - np.argwhere(masks[t]).mean(0)  # (dy, dx)
            h = np.array([[1, 0, shift[1]], [0, 1, shift[0]], [0, 0, 1]], np.float64)
        obj.append(h if h is not None else cam[t])
    points = [np.argwhere(m)[:, ::-1].astype(np.float64) for m in masks]
    if not any(len(p) for p in points):  # no masked pixel at all: an empty layer the size of a frame
        points = [corners] * T
    fg_h0, fg_size = _to_normalised(
        _chain(obj), points, size, 2 * cfg.margin, cfg.max_atlas_px // 2, cfg.density
    )
    geo.update(fg_h0=fg_h0, fg_size=fg_size)
    return geo


def _splat(uv: np.ndarray, values: np.ndarray, weights: np.ndarray, size: tuple[int, int],
           acc: np.ndarray, wacc: np.ndarray) -> None:  # fmt: skip
    """Bilinearly splat values (N, C) at atlas uv (N, 2) with weights (N,) into acc (C, Ha*Wa), wacc (Ha*Wa).

    numpy's bincount, single-threaded: torch's index_add_ slows down badly on a shared 2-core machine.
    """
    Ha, Wa = size
    px = uv_to_pixels(uv, grid_uv_to_px(size)) - 0.5  # N, 2: texel-centre units (texel j at j)
    x, y = px[:, 0], px[:, 1]
    x0, y0 = np.floor(x), np.floor(y)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = weights * (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))
            ok = (xi >= 0) & (xi < Wa) & (yi >= 0) & (yi < Ha) & (w > 0)
            idx = (yi[ok] * Wa + xi[ok]).astype(np.int64)
            wacc += np.bincount(idx, w[ok], minlength=Ha * Wa)
            for c in range(values.shape[1]):
                acc[c] += np.bincount(idx, values[ok, c] * w[ok], minlength=Ha * Wa)


def fill_holes(acc: np.ndarray, wacc: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Average splatted values (C, Ha, Wa) and fill empty texels from ever coarser levels (push-pull)."""
    C, Ha, Wa = acc.shape
    out = np.where(wacc > 1e-3, acc / np.maximum(wacc, 1e-6), np.nan)
    hole = wacc <= 1e-3
    a, w = acc.transpose(1, 2, 0).astype(np.float32), wacc.astype(np.float32)
    while hole.any() and min(w.shape) > 1:
        half = (max(1, w.shape[1] // 2), max(1, w.shape[0] // 2))
        # sums, not means, so a texel's weight stays comparable across levels
        a = 4 * cv2.resize(a, half, interpolation=cv2.INTER_AREA).reshape(half[1], half[0], C)
        w = 4 * cv2.resize(w, half, interpolation=cv2.INTER_AREA)
        den = cv2.resize(w, (Wa, Ha), interpolation=cv2.INTER_LINEAR)
        num = cv2.resize(a, (Wa, Ha), interpolation=cv2.INTER_LINEAR).reshape(Ha, Wa, C)
        ok = hole & (den > 1e-4)
        out[:, ok] = (num[ok] / den[ok, None]).T
        hole &= ~ok
    out[:, hole] = default[:, None]
    return out


@torch.no_grad()
def initial_textures(
    model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, chunk: int = 4, gain_passes: int = 1
) -> None:
    """Set each atlas to the weighted average of the frame pixels that land on it (and the foreground
    opacity to the fraction of masked pixels landing there), and the per-frame gain.

    The gain is estimated after a first splat as the least-squares ratio frame / reconstruction per
    channel, then the frames are splatted again divided by it, weighted by min(gain, 1)^2: a black
    or dimmed (fading) frame adds next to nothing to the atlas and is reconstructed dark.
    """
    _splat_textures(model, frames, masks, chunk)
    for _ in range(gain_passes):
        model.gain.copy_(_estimate_gain(model, frames, chunk))
        _splat_textures(model, frames, masks, chunk)


@torch.no_grad()
def _estimate_gain(model: AtlasModel, frames: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-frame RGB gain (T, 3) with frame ~ gain * reconstruction (least squares, unsaturated pixels)."""
    T = len(frames)
    gains = torch.ones(T, 3)
    model.gain.fill_(1.0)
    for s in range(0, T, chunk):
        t = torch.arange(s, min(T, s + chunk), device=frames.device)
        rec = model(t)["rgb"].clamp(0, 1)  # B, 3, H, W
        img = frames[t].permute(0, 3, 1, 2).float() / 255  # B, 3, H, W
        ok = ((rec > 0.02) & (img < 0.98)).float()
        num = (ok * img * rec).sum((2, 3))
        den = (ok * rec * rec).sum((2, 3)).clamp(min=1e-6)
        gains[s : s + len(t)] = (num / den).clamp(0, 4).cpu()
    # gain and texture brightness trade off: the typical frame keeps gain 1, the atlas its colours
    return gains / gains.median(0).values.clamp(min=1e-3)


@torch.no_grad()
def _splat_textures(model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, chunk: int) -> None:
    acc = TextureSplat(model)
    for s in range(0, len(frames), chunk):
        acc.add(model, frames, masks, torch.arange(s, min(len(frames), s + chunk), device=frames.device))
    acc.write(model)


class TextureSplat:
    """Running sums of the frame pixels splatted into each atlas (what `initial_textures` averages),
    so textures can be made from any subset of frames, one frame at a time (t2l/atlas/register.py)."""

    def __init__(self, model: AtlasModel):
        self.accs = {name: (np.zeros((tex.shape[1], tex.shape[2] * tex.shape[3])), np.zeros(tex.shape[2] * tex.shape[3]))
                     for name, tex in model.textures().items()}  # fmt: skip

    @torch.no_grad()
    def add(
        self, model: AtlasModel, frames: torch.Tensor, masks: torch.Tensor | None, t: torch.Tensor
    ) -> None:
        """Splat frames t (B,) at their current mappings, divided by the model's gain."""
        gain = model.gain.detach()[t].clamp(min=0).cpu().numpy().astype(np.float64)  # B, 3
        n_px = int(np.prod(frames.shape[1:3]))
        g = np.repeat(gain, n_px, axis=0)  # N, 3
        rgb = frames[t].reshape(-1, 3).cpu().numpy() / 255.0 / np.maximum(g, 1e-3)  # N, 3
        gw = np.minimum(g.mean(1), 1.0) ** 2  # N: dim frames count less
        m = masks[t].reshape(-1).cpu().numpy().astype(np.float64) if masks is not None else np.zeros(len(rgb))
        for name, mapping in model.mappings().items():
            uv = mapping(t, model.xy1).reshape(-1, 2).cpu().numpy().astype(np.float64)
            if name == "bg":
                _splat(uv, rgb, (1 - m + 1e-4) * gw, model.cfg.bg_size, *self.accs[name])
            else:  # colour from masked pixels only; the 4th channel averages the mask itself
                values = np.concatenate([rgb * m[:, None], m[:, None]], 1)
                _splat(uv, values, gw + 1e-6, model.cfg.fg_size, *self.accs[name])

    @torch.no_grad()
    def write(self, model: AtlasModel) -> dict[str, np.ndarray]:
        """Set the model's textures to the averages so far. Returns per layer which texels have data
        (Ha, Wa bool: for the background, unmasked pixels; for the foreground, masked ones)."""
        known = {}
        for name, tex in model.textures().items():
            acc, wacc = self.accs[name]
            Ha, Wa = tex.shape[2:]
            acc = acc.reshape(-1, Ha, Wa).astype(np.float32)
            wacc = wacc.reshape(Ha, Wa).astype(np.float32)
            if name == "bg":
                filled = fill_holes(acc, wacc, np.full(3, 0.5))
                tex.copy_(torch.from_numpy(filled).float().to(tex.device)[None])
                known[name] = wacc > 1e-3
            else:
                cover = acc[3] / np.maximum(wacc, 1e-6)  # fraction of masked pixels per texel
                rgb = fill_holes(acc[:3], acc[3].copy(), np.full(3, 0.5))
                c = np.clip(cover, 0.003, 0.997)
                logit = np.log(c / (1 - c))
                logit[wacc <= 1e-3] = -6.0
                tex.copy_(torch.from_numpy(np.concatenate([rgb, logit[None]])).float().to(tex.device)[None])
                known[name] = acc[3] > 1e-3
        return known
