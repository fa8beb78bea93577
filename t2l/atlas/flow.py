"""Optical flow between consecutive frames (OpenCV DIS, both directions) and which of it to trust.

A forward vector is trusted when following it and then the backward flow comes back within
`max_error` pixels (forward-backward consistency, as NLA does with RAFT) and it lands inside the
frame. DIS needs no downloaded weights and runs in milliseconds per pair on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class FlowConfig:
    preset: str = "medium"  # DIS preset: ultrafast | fast | medium (slower, more accurate)
    max_error: float = 1.0  # forward-backward round-trip error (px) below which a vector is trusted


def to_gray(frame: np.ndarray) -> np.ndarray:
    """H, W, 3 uint8 RGB -> H, W uint8."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def dis_flow(a: np.ndarray, b: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Dense flow from gray frame `a` to gray frame `b` (H, W uint8).

    Returns:
        H, W, 2 float32: pixel (x, y) of `a` moves to (x + f[...,0], y + f[...,1]) in `b`.
    """
    dis = cv2.DISOpticalFlow_create(_PRESETS[preset])
    return dis.calc(a, b, None)


def sample(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinearly sample an H, W[, C] float32 field at pixel positions x, y (H, W), edge-clamped."""
    return cv2.remap(
        field, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def consistency(forward: np.ndarray, backward: np.ndarray, max_error: float = 1.0) -> np.ndarray:
    """Which forward vectors survive the round trip.

    Args:
        forward: H, W, 2 flow a -> b (px). backward: H, W, 2 flow b -> a (px).
    Returns:
        H, W bool: |forward(p) + backward(p + forward(p))| < max_error and p + forward(p) inside the frame.
    """
    H, W = forward.shape[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    qx, qy = xs + forward[..., 0], ys + forward[..., 1]
    back = sample(backward, qx, qy)
    err = np.linalg.norm(forward + back, axis=-1)
    inside = (qx >= 0) & (qx <= W - 1) & (qy >= 0) & (qy <= H - 1)
    return (err < max_error) & inside


def compute_flows(
    frames: np.ndarray, cfg: FlowConfig = FlowConfig(), progress: Callable[[int, int], None] | None = None
) -> dict[str, np.ndarray]:
    """Forward and backward flow between consecutive frames, with their trust masks.

    Args:
        frames: T, H, W, 3 uint8 RGB, T >= 2. progress: called with (pairs done, pairs) after each pair.
    Returns:
        {"forward": T-1,H,W,2 float32 (t -> t+1), "backward": T-1,H,W,2 float32 (t+1 -> t),
         "forward_valid": T-1,H,W bool, "backward_valid": T-1,H,W bool}
    """
    if cfg.preset not in _PRESETS:
        raise ValueError(f"unknown DIS preset {cfg.preset!r}")
    gray = [to_gray(f) for f in frames]
    fwd, bwd, fval, bval = [], [], [], []
    for a, b in zip(gray[:-1], gray[1:], strict=True):
        f, g = dis_flow(a, b, cfg.preset), dis_flow(b, a, cfg.preset)
        fwd.append(f)
        bwd.append(g)
        fval.append(consistency(f, g, cfg.max_error))
        bval.append(consistency(g, f, cfg.max_error))
        if progress is not None:
            progress(len(fwd), len(gray) - 1)
    H, W = frames.shape[1:3]
    empty = np.zeros((0, H, W, 2), np.float32)
    return {
        "forward": np.stack(fwd) if fwd else empty,
        "backward": np.stack(bwd) if bwd else empty,
        "forward_valid": np.stack(fval) if fval else np.zeros((0, H, W), bool),
        "backward_valid": np.stack(bval) if bval else np.zeros((0, H, W), bool),
    }


def endpoint_error(flow: np.ndarray, true_flow: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean end-point error (px) of `flow` against `true_flow` (..., 2), optionally over a bool mask."""
    err = np.linalg.norm(flow - true_flow, axis=-1)
    return float(err[where].mean() if where is not None else err.mean())
