"""Synthetic clips with known ground truth: a textured object moving over a textured, panning background.

Used by the tests and by benchmarks/atlas_fit.py: the true foreground masks and the true motion
(per-pixel forward flow) are returned with the frames, so flow, masks and fitted atlases can be
scored exactly.

Example:
    >>> clip = make_clip(SyntheticConfig(frames=8, height=64, width=96))
    >>> clip.frames.shape, clip.masks.shape, clip.flow.shape
    ((8, 64, 96, 3), (8, 64, 96), (7, 64, 96, 2))
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SyntheticConfig:
    frames: int = 30  # T
    height: int = 240  # H, frame pixels
    width: int = 432  # W
    pan: tuple[float, float] = (2.5, 0.6)  # camera motion, px/frame (x, y): the background moves by -pan
    zoom: float = 0.0  # camera zoom per frame (0.005 = the view shrinks 0.5% per frame: zooming in)
    rotate: float = 0.0  # camera roll, degrees/frame
    speed: tuple[float, float] = (3.0, 0.8)  # object motion relative to the frame, px/frame (x, y)
    wobble: float = 6.0  # amplitude (px) of a sinusoidal vertical wobble added to the object path
    spin: float = 0.0  # object rotation, degrees/frame
    breathe: float = 0.0  # relative amplitude of a sinusoidal change of the object's size (non-rigid)
    object_size: float = 0.22  # object ellipse semi-axis as a fraction of the short side
    detail: float = 1.0  # texture contrast of the finer octaves (0 = smooth blobs only)
    seed: int = 0


@dataclass
class SyntheticClip:
    frames: np.ndarray  # T, H, W, 3 uint8 RGB
    masks: np.ndarray  # T, H, W bool, true foreground
    flow: np.ndarray  # T-1, H, W, 2 float32 px, true forward flow (frame t -> t+1)
    camera: np.ndarray  # T, 2, 3 float64: frame px -> background texture px (affine)
    centers: np.ndarray  # T, 2 float32, object centre in each frame (px)


def _rot(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _apply(m: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a 2x3 affine map to pixel coordinates."""
    return m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]


def _inverse(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.c_[a, -a @ m[:, 2]]


def noise_texture(height: int, width: int, rng: np.random.Generator, detail: float = 1.0) -> np.ndarray:
    """Smooth multi-octave colour noise with some sharper detail.

    Returns:
        H, W, 3 float32 in [0,1].
    """
    out = np.zeros((height, width, 3), np.float32)
    for octave, amp in ((4, 1.0), (12, 0.6), (32, 0.45 * detail), (80, 0.3 * detail), (160, 0.15 * detail)):
        gh, gw = max(2, height * octave // 400), max(2, width * octave // 400)
        small = rng.random((gh, gw, 3), dtype=np.float32)
        out += amp * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    out -= out.min(axis=(0, 1), keepdims=True)
    out /= out.max(axis=(0, 1), keepdims=True) + 1e-6
    return np.clip(0.08 + 0.84 * out, 0.0, 1.0)


def make_clip(
    cfg: SyntheticConfig = SyntheticConfig(),
    background: np.ndarray | None = None,
    texture: np.ndarray | None = None,
) -> SyntheticClip:
    """Render a clip: a camera panning (zooming, rolling) over a large background texture and an
    elliptical textured object moving (spinning, breathing) over it. Hard-edged, so the true mask is
    exact; the true flow follows from the known affine motions of both.

    Args:
        background, texture: optional photos (H, W, 3 uint8) for the background and the object
            instead of noise; they are stretched to the sizes needed.
    """
    rng = np.random.default_rng(cfg.seed)
    T, H, W = cfg.frames, cfg.height, cfg.width
    ctr = np.array([(W - 1) / 2, (H - 1) / 2])
    pan = np.asarray(cfg.pan, np.float64)
    cams = []
    for t in range(T):
        a = _rot(cfg.rotate * t) / (1 + cfg.zoom) ** t
        cams.append(np.c_[a, ctr + pan * t - a @ ctr])  # frame px -> texture px (before the margin)
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H]], np.float64)
    seen = np.concatenate([np.stack(_apply(c, corners[:, 0], corners[:, 1]), -1) for c in cams])
    lo, hi = seen.min(0) - 8, seen.max(0) + 8
    for c in cams:
        c[:, 2] -= lo
    camera = np.stack(cams)
    bh, bw = int(hi[1] - lo[1]) + 1, int(hi[0] - lo[0]) + 1
    if background is None:
        background = noise_texture(bh, bw, rng, cfg.detail)
    else:
        background = cv2.resize(background.astype(np.float32) / 255, (bw, bh), interpolation=cv2.INTER_AREA)

    radius = cfg.object_size * min(H, W)
    ry, rx = radius, 1.3 * radius
    grow = 1 + abs(cfg.breathe)
    side = int(2 * rx * grow) + 4
    if texture is None:
        obj = noise_texture(side, side, rng, cfg.detail)
        obj = 1.0 - obj[..., ::-1]  # a different palette from the background
    else:
        obj = cv2.resize(texture.astype(np.float32) / 255, (side, side), interpolation=cv2.INTER_AREA)
    speed = np.asarray(cfg.speed, np.float64)
    start = np.array([W * 0.5, H * 0.5]) - speed * (T - 1) / 2
    centers = np.stack(
        [start + speed * t + [0.0, cfg.wobble * np.sin(2 * np.pi * t / max(T, 2))] for t in range(T)]
    )
    objs = []  # frame px -> object-local px (centred, unscaled)
    for t in range(T):
        a = _rot(-cfg.spin * t) / (1 + cfg.breathe * np.sin(2 * np.pi * t / max(T, 2)))
        objs.append(np.c_[a, -a @ (centers[t] - 0.5)])

    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    frames = np.empty((T, H, W, 3), np.uint8)
    masks = np.empty((T, H, W), bool)
    for t in range(T):
        bx, by = _apply(camera[t], xs, ys)
        img = cv2.remap(background, bx.astype(np.float32), by.astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        dx, dy = _apply(objs[t], xs, ys)
        inside = (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0
        ox, oy = dx + obj.shape[1] / 2 - 0.5, dy + obj.shape[0] / 2 - 0.5
        fg = cv2.remap(obj, ox.astype(np.float32), oy.astype(np.float32), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        img[inside] = fg[inside]
        frames[t] = np.round(img * 255).astype(np.uint8)
        masks[t] = inside

    flow = np.empty((max(T - 1, 0), H, W, 2), np.float32)
    for t in range(T - 1):
        for maps, where in ((camera, ~masks[t]), (objs, masks[t])):
            nx, ny = _apply(_inverse(maps[t + 1]), *_apply(maps[t], xs[where], ys[where]))
            flow[t][where] = np.stack([nx - xs[where], ny - ys[where]], -1)
    return SyntheticClip(
        frames=frames, masks=masks, flow=flow, camera=camera, centers=centers.astype(np.float32)
    )
