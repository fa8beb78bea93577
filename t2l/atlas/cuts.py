"""Scene cuts: where one shot ends and another begins, so one atlas never spans two shots.

An atlas maps every frame onto the same surfaces; across a hard cut there are none in common and
every frame becomes a double exposure of the two shots. A cut is a pair of consecutive frames that
differ both in structure and in colour distribution:

- structure: the normalised cross-correlation of small (64 px) grey thumbnails is low. It ignores
  exposure and fades (gain and offset cancel) but also drops for fast motion,
- colour: the Bhattacharyya distance of hue/saturation histograms is high. It ignores motion (the
  same things are in view) but also rises during fades,

so each alone misfires and both together do not. Measured on real footage (bikes.mp4, cityCC0.mpg,
benchmarks/atlas_real.py): cuts have correlation <= 0.4 and distance >= 0.4; fast motion goes down
to 0.55 correlation at distance 0.1. Flat frames (black or one colour: fades) have no structure and
are skipped: the frames on either side of them are compared instead.

Example: two shots, a red horizontal ramp and a blue vertical one, with a black frame in between
(flat: skipped, so the cut is found at the first blue frame):
    >>> import numpy as np
    >>> ramp = np.linspace(0, 255, 16).astype(np.uint8)
    >>> red = np.zeros((16, 16, 3), np.uint8); red[..., 0] = ramp[None, :]
    >>> blue = np.zeros((16, 16, 3), np.uint8); blue[..., 2] = ramp[:, None]
    >>> black = np.zeros_like(red)
    >>> find_cuts(np.stack([red, red, black, blue, blue]))  # frames T, H, W, 3 uint8
    [3]
    >>> find_cuts(np.stack([red, red, blue, blue, red]))    # frames 2 and 4 start new shots
    [2, 4]
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CutConfig:
    max_correlation: float = 0.5  # thumbnails correlate less than this ...
    min_distance: float = 0.25  # ... and their hue/saturation histograms differ more than this
    flat_std: float = 3.0  # grey std (0-255) below which a frame is flat (black, fading): not compared
    thumb: int = 64  # thumbnail long side (px)


def _features(frame: np.ndarray, cfg: CutConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """(zero-mean unit-std grey thumbnail or None for a flat frame, normalised H/S histogram)."""
    h, w = frame.shape[:2]
    s = cfg.thumb / max(h, w)
    small = cv2.resize(frame, (max(2, round(w * s)), max(2, round(h * s))), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    std = float(grey.std())
    norm = (grey - grey.mean()) / std if std >= cfg.flat_std else None
    hist = cv2.calcHist([cv2.cvtColor(small, cv2.COLOR_RGB2HSV)], [0, 1], None, [16, 8], [0, 180, 0, 256])
    return norm, hist


def find_cuts(frames: np.ndarray, cfg: CutConfig = CutConfig()) -> list[int]:
    """Indices of the frames that start a new shot (never 0).

    Args:
        frames: T, H, W, 3 uint8 RGB (any size; thumbnails are compared).
    Returns:
        sorted frame indices i (1 <= i < T) where frame i belongs to another shot than frame i - 1
        (after a run of flat frames, the first frame that is not flat).
    """
    cuts = []
    prev = None  # features of the last frame that was not flat
    for i, frame in enumerate(frames):
        norm, hist = _features(frame, cfg)
        if norm is None:
            continue
        if prev is not None:
            corr = float((prev[0] * norm).mean())
            dist = float(cv2.compareHist(prev[1], hist, cv2.HISTCMP_BHATTACHARYYA))
            if corr < cfg.max_correlation and dist > cfg.min_distance:
                cuts.append(i)
        prev = (norm, hist)
    return cuts
