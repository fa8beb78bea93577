"""Foreground masks: read the user's (--masks DIR) or find moving objects automatically.

Automatic masks need no weights: the dominant (camera) motion between two frames is fitted to the
trusted optical flow with a RANSAC homography; pixels whose flow disagrees with it by more than a
threshold move on their own. The raw masks are cleaned with morphology, hole filling, small-blob
removal and a 3-frame vote along the flow. They only bootstrap the foreground opacity: the fit
refines it from the colours. Masks are saved in the atlas folder (masks/) for inspection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path

import cv2
import numpy as np

from t2l.atlas.flow import consistency, dis_flow, sample, to_gray
from t2l.atlas.separate import residual_masks, textured
from t2l.errors import InputError
from t2l.video_read import IMAGE_SUFFIXES, natural_key


@dataclass(frozen=True)
class MaskConfig:
    residual_px: float = 1.0  # flow disagreement with the camera motion (px) that counts as moving, at least
    residual_scale: float = 4.0  # ... and at least this many times the median disagreement of the frame
    ransac_px: float = 1.0  # RANSAC inlier threshold for the camera homography (px)
    open_px: int = 2  # opening radius (removes speckle)
    close_px: int = 6  # closing radius (joins the parts of one object)
    min_area: float = 0.002  # drop blobs smaller than this fraction of the frame
    vote: bool = True  # 3-frame majority vote along the flow
    band_px: int = 8  # boundary band (px) re-decided by colour: camera motion vs the object's own motion
    texture_gate: bool = True  # (with frames) flow residuals count only where the image has structure
    median: bool = True  # (with frames) also foreground: what differs from the median background
    # carry the motion masks along the flow to every frame (forward and back): an object that is still
    # for a while (a cup held before it swings) stays foreground in those frames
    propagate: bool = True
    carry_colour: float = 24.0  # a carried pixel matches its source in colour (0-255, max over RGB) ...
    carry_share: float = 0.9  # ... and a blob is carried when this share of its pixels match,
    carry_px: float = 1.0  # ... those of its pixels that move with it (px from its similarity)
    # (with frames) also flow between frames this far apart: an object moving a fraction of a pixel
    # per frame (a box held in a hand) moves several pixels against the camera over that gap
    long_gap: int = 8
    long_px: float = 2.0  # disagreement (px) over the long gap that counts as moving, at least
    # ... used only where the camera moves less than this (median px over the gap): a moving camera's
    # parallax grows with the gap, and a slow object is then told from it by the short gaps only
    long_static_px: float = 0.5
    # ... and only where the colour changed over the gap (RGB sum, 5x5 mean): DIS smears an object's
    # motion a few px onto the still background around it, whose colour stays
    long_colour: float = 30.0


def camera_homography(
    flow: np.ndarray, valid: np.ndarray, ransac_px: float = 1.0, step: int = 4, affine: bool = False
) -> np.ndarray:
    """The dominant motion of a flow field as a 3x3 homography (affine map with `affine`) from frame-a px to frame-b px.

    Args:
        flow: H, W, 2 float32 px. valid: H, W bool, which vectors to use.
    Returns:
        3, 3 float64 (a pure translation by the median flow when too few vectors are trusted).
    """
    H, W = flow.shape[:2]
    ys, xs = np.mgrid[0:H:step, 0:W:step]
    keep = valid[ys, xs]
    src = np.stack([xs[keep], ys[keep]], -1).astype(np.float32)
    dst = src + flow[ys[keep], xs[keep]]
    if len(src) >= 12:
        if affine:
            m, _ = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px)
            h = None if m is None else np.vstack([m, [0, 0, 1]])
        else:
            h, _ = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px, maxIters=2000, confidence=0.995)
        if h is not None and np.isfinite(h).all():
            return h
    shift = np.median(flow.reshape(-1, 2), axis=0) if len(src) == 0 else np.median(dst - src, axis=0)
    return np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]], np.float64)


def similarity(flow: np.ndarray, where: np.ndarray, ransac_px: float = 1.0) -> np.ndarray | None:
    """A 3x3 similarity mapping frame-a px to frame-b px fitted (RANSAC) to the flow at `where`
    (H, W bool; at most ~4000 of its pixels are used), or None with fewer than 20 pixels."""
    ys, xs = np.nonzero(where)
    if len(xs) < 20:
        return None
    step = max(1, len(xs) // 4000)
    src = np.stack([xs[::step], ys[::step]], -1).astype(np.float32)
    dst = src + flow[ys[::step], xs[::step]]
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px)
    return None if m is None else np.vstack([m, [0, 0, 1]])


def apply_homography(h: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel coordinates (any shape) through a 3x3 homography."""
    w = h[2, 0] * xs + h[2, 1] * ys + h[2, 2]
    w = np.where(np.abs(w) < 1e-8, 1e-8, w)
    return (h[0, 0] * xs + h[0, 1] * ys + h[0, 2]) / w, (h[1, 0] * xs + h[1, 1] * ys + h[1, 2]) / w


def motion_residual(flow: np.ndarray, h: np.ndarray) -> np.ndarray:
    """|p + flow(p) - h(p)| per pixel (px): H, W float32."""
    H, W = flow.shape[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    hx, hy = apply_homography(h, xs, ys)
    return np.hypot(xs + flow[..., 0] - hx, ys + flow[..., 1] - hy).astype(np.float32)


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def clean_mask(mask: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """Open, close, fill holes, drop small blobs. H, W bool -> H, W bool."""
    m = mask.astype(np.uint8)
    if cfg.open_px > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(cfg.open_px))
    if cfg.close_px > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(cfg.close_px))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(m)
    min_px = cfg.min_area * m.size
    for c in contours:
        if cv2.contourArea(c) >= min_px:
            cv2.drawContours(out, [c], -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def _warp_mask(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pull a neighbour's mask into this frame: out(p) = mask(p + flow(p)) (flow: this -> neighbour)."""
    H, W = mask.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    return cv2.remap(
        mask.astype(np.uint8),
        xs + flow[..., 0],
        ys + flow[..., 1],
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    ).astype(bool)


def propagate_masks(masks: np.ndarray, flows: dict[str, np.ndarray], frames: np.ndarray | None,
                    cfg: MaskConfig = MaskConfig()) -> np.ndarray:  # fmt: skip
    """Carry each mask blob along the flow to the frames after and before it: one pass forward (frame t
    gains frame t-1's blobs pulled along the backward flow), one back. A blob is carried only if at
    least `carry_share` of its pulled pixels have trusted flow (forward-backward consistent) and, with
    `frames`, the colour of the pixel they come from; of those, the pixels that move with the blob
    (within `carry_px` of a similarity fitted to their flow) are added, closed and hole-filled inside
    the blob. Motion only shows an object while it moves; carried, its mask also covers the frames
    where it stands still (a cup held before it swings), where a median background or a static atlas
    would otherwise hold it. The background a blob's margin covered does not move with the object and
    the pavement a walker leaves does not match its colour: no trails. A false blob on a still
    background is carried to every frame just the same. T, H, W bool -> T, H, W bool."""
    out = masks.copy()
    n = len(flows["forward"])
    ys, xs = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]].astype(np.float32)

    def carry(dst: int, src: int, flow: np.ndarray, valid: np.ndarray) -> None:
        if not out[src].any():
            return
        moved = _warp_mask(out[src], flow)  # frame src's blobs where the flow puts them in frame dst
        ok = moved & valid
        if frames is not None:
            pulled = sample(frames[src], xs + flow[..., 0], ys + flow[..., 1])
            ok &= np.abs(frames[dst].astype(np.int16) - pulled.astype(np.int16)).max(-1) <= cfg.carry_colour
        count, labels = cv2.connectedComponents(moved.astype(np.uint8))
        for c in range(1, count):
            blob = labels == c
            if ok[blob].mean() < cfg.carry_share:
                continue
            # only the pixels that move with the blob (a similarity fitted to its flow): the background
            # a mask's margin covered stays behind when the object moves on
            sim = similarity(flow, blob & ok, cfg.carry_px)
            if sim is None:
                continue
            by, bx = np.nonzero(blob & ok)
            sx, sy = apply_homography(sim, bx, by)
            keep = np.hypot(bx + flow[by, bx, 0] - sx, by + flow[by, bx, 1] - sy) <= cfg.carry_px
            got = np.zeros_like(blob)
            got[by[keep], bx[keep]] = True
            # closed and hole-filled within the blob: pixels lost to flow noise come back, a still
            # object's mask does not wear away over many frames
            out[dst] |= clean_mask(got, replace(cfg, open_px=0, min_area=0.0)) & blob

    for t in range(1, n + 1):  # forward: frame t from t-1 (backward flow t -> t-1)
        carry(t, t - 1, np.asarray(flows["backward"][t - 1], np.float32), flows["backward_valid"][t - 1])
    for t in range(n - 1, -1, -1):  # back: frame t from t+1 (forward flow t -> t+1)
        carry(t, t + 1, np.asarray(flows["forward"][t], np.float32), flows["forward_valid"][t])
    return np.stack([clean_mask(m, cfg) for m in out])


def _photometric_error(frame: np.ndarray, other: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per-pixel colour difference (box-filtered) between `frame` and `other` pulled back through h."""
    H, W = frame.shape[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    hx, hy = apply_homography(h, xs, ys)
    warped = cv2.remap(
        other, hx.astype(np.float32), hy.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    err = np.abs(frame.astype(np.float32) - warped.astype(np.float32)).sum(-1)
    return cv2.blur(err, (5, 5))


def _object_homography(
    flow: np.ndarray, valid: np.ndarray, mask: np.ndarray, cfg: MaskConfig
) -> np.ndarray | None:
    inner = cv2.erode(mask.astype(np.uint8), _disk(max(1, cfg.band_px // 2))).astype(bool)
    if (inner & valid).sum() < 30:
        return None
    return camera_homography(flow, inner & valid, cfg.ransac_px, step=2)


def refine_boundaries(
    frames: np.ndarray,
    masks: np.ndarray,
    flows: dict[str, np.ndarray],
    homs: np.ndarray,
    cfg: MaskConfig = MaskConfig(),
) -> np.ndarray:
    """Re-decide a band around each mask boundary by which motion explains the colours better.

    Flow smears an object's motion a few pixels onto the background; in the band each pixel goes to
    the layer (camera homography vs the object's own homography) whose warp of the neighbouring frames
    matches its colour better. T,H,W bool -> T,H,W bool.
    """
    fwd, bwd, fval, bval = (
        flows["forward"],
        flows["backward"],
        flows["forward_valid"],
        flows["backward_valid"],
    )
    n = len(fwd)
    out = masks.copy()
    for t in range(n + 1):
        if not masks[t].any():
            continue
        # min over the two neighbours: a background pixel about to be covered is still seen in the other
        e_bg = np.full(masks.shape[1:], np.inf, np.float32)
        e_fg = np.full_like(e_bg, np.inf)
        used, still = 0, False
        for s, flow, valid, h_cam in (
            (t + 1, fwd[t] if t < n else None, fval[t] if t < n else None, homs[t] if t < n else None),
            (
                t - 1,
                bwd[t - 1] if t > 0 else None,
                bval[t - 1] if t > 0 else None,
                np.linalg.inv(homs[t - 1]) if t > 0 else None,
            ),
        ):
            if flow is None:
                continue
            h_obj = _object_homography(flow, valid, masks[t], cfg)
            if h_obj is None:
                continue
            ys, xs = np.nonzero(masks[t])
            (ox, oy), (cx, cy) = apply_homography(h_obj, xs, ys), apply_homography(h_cam, xs, ys)
            still |= float(np.median(np.hypot(ox - cx, oy - cy))) <= 0.5  # px, object vs camera
            if still:  # the object stands still next to a neighbour: both motions explain the band alike
                break
            e_bg = np.minimum(e_bg, _photometric_error(frames[t], frames[s], h_cam))
            e_fg = np.minimum(e_fg, _photometric_error(frames[t], frames[s], h_obj))
            used += 1
        if not used or still:
            continue
        m = masks[t].astype(np.uint8)
        band = cv2.dilate(m, _disk(cfg.band_px)).astype(bool) & ~cv2.erode(m, _disk(cfg.band_px)).astype(bool)
        decided = e_fg < e_bg
        out[t] = np.where(band, decided, masks[t])
        out[t] = clean_mask(out[t], MaskConfig(open_px=1, close_px=2, min_area=cfg.min_area))
    return out


def _moving(flow: np.ndarray, valid: np.ndarray, h: np.ndarray, floor_px: float, scale: float,
            tex: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """Trusted (and, with `tex`, textured) pixels whose flow disagrees with the camera homography h by
    more than max(floor_px, scale x the frame's median disagreement): H, W bool."""
    res = motion_residual(flow, h)
    thr = max(floor_px, scale * float(np.median(res[valid])) if valid.any() else 0.0)
    return (res > thr) & valid & (tex if tex is not None else True)


def moving_in_frame(flows: dict[str, np.ndarray], t: int, cfg: MaskConfig = MaskConfig(),
                    tex: np.ndarray | None = None, forward_h: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Pixels of frame t whose flow to the next frame or from it to the previous one disagrees with
    the camera's (`_moving`; with `tex`, textured pixels only): H, W bool. forward_h: the camera
    homography of the forward pair t, when already fitted."""
    n = len(flows["forward"])
    out = np.zeros(flows["forward"].shape[1:3], bool)
    pairs = ([("forward", t, forward_h)] if t < n else []) + ([("backward", t - 1, None)] if t > 0 else [])
    for way, i, h in pairs:
        flow, valid = flows[way][i], flows[f"{way}_valid"][i]
        if h is None:
            h = camera_homography(flow, valid, cfg.ransac_px)
        out |= _moving(flow, valid, h, cfg.residual_px, cfg.residual_scale, tex)
    return out


def _camera_shift(h: np.ndarray, shape: tuple[int, int]) -> float:
    """Median displacement (px) of a homography over a 16 px grid of an H, W frame."""
    ys, xs = np.mgrid[0 : shape[0] : 16, 0 : shape[1] : 16].astype(np.float64)
    hx, hy = apply_homography(h, xs, ys)
    return float(np.median(np.hypot(hx - xs, hy - ys)))


def _new_blobs(found: np.ndarray, known: np.ndarray, share: float = 0.5) -> np.ndarray:
    """The blobs of `found` (T, H, W bool) of which less than `share` lies on `known`: objects the
    long gap adds; where the short gaps already see an object its (smeared) long-gap mask is left out."""
    out = np.zeros_like(found)
    for t in range(len(found)):
        n, labels = cv2.connectedComponents(found[t].astype(np.uint8))
        for i in range(1, n):
            blob = labels == i
            if (blob & known[t]).sum() < share * blob.sum():
                out[t] |= blob
    return out


def _slow_motion(frames: np.ndarray, cfg: MaskConfig, tex: np.ndarray | None, homs: np.ndarray | None = None,
                 tick: Callable[[], None] | None = None) -> np.ndarray:  # fmt: skip
    """Pixels that move against the camera over `long_gap` frames (T, H, W bool): DIS flow from frame
    s to s + gap and to s - gap, forward-backward checked, against a RANSAC homography of it. A pixel
    counts where its colour changed towards both (the background a moving object is about to cover
    changed towards one only, and DIS smears the object's motion onto it); frames within a gap of the
    ends are left to the carrying. Only for a still camera: `homs` (T-1, 3, 3, frame t px -> t+1 px)
    chained over the gap must move less than 4x long_static_px before the two long flows are computed
    (a panning camera is skipped cheaply), and the long flow's own homography less than long_static_px.
    `tick` is called once per gap pair."""
    gray = [to_gray(f) for f in frames]
    T, k = len(frames), cfg.long_gap
    moved = np.zeros((2,) + frames.shape[:3], bool)  # [0]: towards s + k, [1]: towards s - k
    changed = np.zeros_like(moved)
    for t in range(T - k):
        if tick is not None:
            tick()
        if homs is not None:  # frame t px -> frame t + k px: h_{t+k-1} ... h_t
            gap = reduce(lambda acc, h: h @ acc, homs[t : t + k], np.eye(3))
            if _camera_shift(gap, frames.shape[1:3]) > 4 * cfg.long_static_px:
                continue
        f, g = dis_flow(gray[t], gray[t + k]), dis_flow(gray[t + k], gray[t])
        for side, s, o, flow, valid in (
            (0, t, t + k, f, consistency(f, g)),
            (1, t + k, t, g, consistency(g, f)),
        ):
            h = camera_homography(flow, valid, cfg.ransac_px)
            if _camera_shift(h, flow.shape[:2]) > cfg.long_static_px:  # parallax grows with the gap
                continue
            moved[side, s] = _moving(
                flow, valid, h, cfg.long_px, cfg.residual_scale, tex[s] if tex is not None else None
            )
            changed[side, s] = _photometric_error(frames[s], frames[o], h) > cfg.long_colour
    return (moved[0] | moved[1]) & changed[0] & changed[1]


def motion_masks(
    flows: dict[str, np.ndarray], cfg: MaskConfig = MaskConfig(), frames: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Automatic foreground masks from the flow of compute_flows (T >= 2); with `frames` (T,H,W,3
    uint8) the boundaries are refined by colour (refine_boundaries). progress: called with (steps
    done, steps) as the frames and the later stages are done.

    Returns:
        (masks T,H,W bool, camera homographies T-1,3,3 float64: frame t px -> frame t+1 px)
    """
    fwd, bwd = flows["forward"], flows["backward"]
    fval = flows["forward_valid"]
    n, H, W = fwd.shape[:3]
    slow = frames is not None and cfg.long_gap > 1 and n >= 2 * cfg.long_gap
    total, done = (n + 1) + (n + 1 - cfg.long_gap if slow else 0) + 3, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    homs = np.stack([camera_homography(fwd[t], fval[t], cfg.ransac_px) for t in range(n)])
    raw = np.zeros((n + 1, H, W), bool)
    tex = None
    if frames is not None and cfg.texture_gate:  # flow on a plain wall is noise, not motion
        tex = np.stack([textured(f) for f in frames])
    for t in range(n + 1):
        raw[t] = moving_in_frame(
            flows, t, cfg, tex[t] if tex is not None else None, homs[t] if t < n else None
        )
        tick()
    masks = np.stack([clean_mask(m, cfg) for m in raw])
    if slow:
        found = _slow_motion(frames, cfg, tex, homs, tick)
        masks |= _new_blobs(np.stack([clean_mask(m, cfg) for m in found]), masks)
    if cfg.vote and n >= 1:
        voted = np.empty_like(masks)
        for t in range(n + 1):
            votes = [masks[t].astype(np.int8)]
            if t > 0:
                votes.append(_warp_mask(masks[t - 1], bwd[t - 1]))
            if t < n:
                votes.append(_warp_mask(masks[t + 1], fwd[t]))
            voted[t] = np.mean(votes, axis=0) > 0.5 if len(votes) == 3 else masks[t]
        masks = np.stack([clean_mask(m, cfg) for m in voted])
    if cfg.propagate:
        masks = propagate_masks(masks, flows, frames, cfg)
    tick()
    if frames is not None and cfg.median:
        # the median of what the motion masks leave: where the object stood still, the background
        # behind it comes from the frames it has moved away in, not from the object itself
        res_masks = residual_masks(frames, homs, exclude=masks)
        if res_masks is not None:
            masks = masks | np.stack([clean_mask(m, cfg) for m in res_masks])
            if cfg.propagate:  # what the median found where the object moved, carried to where it stood
                masks = propagate_masks(masks, flows, frames, cfg)
    tick()
    if frames is not None and cfg.band_px > 0:
        masks = refine_boundaries(frames, masks, flows, homs, cfg)
    tick()
    return masks, homs


def read_masks(folder: str | Path, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    """Read user masks (one image per frame, sorted naturally; white or opaque = foreground).

    Args:
        folder: a folder of images. indices: source frame numbers used (after --start/--stride); the
            folder may hold one mask per used frame or one per source frame. size: (H, W) to resize to.
    Returns:
        T, H, W bool.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"mask folder {folder} does not exist", "pass a folder of PNG masks, one per frame")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if len(files) == len(indices):
        chosen = files
    elif files and len(files) > max(indices):
        chosen = [files[i] for i in indices]
    else:
        raise InputError(
            f"mask folder {folder} has {len(files)} images but {len(indices)} frames are used",
            "give one mask per video frame (or per used frame), named in frame order",
        )
    from PIL import Image

    H, W = size
    out = np.empty((len(chosen), H, W), bool)
    for i, path in enumerate(chosen):
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "PA") and im.getchannel("A").getextrema()[0] < 255:
                    arr = np.asarray(im.getchannel("A"))
                else:
                    arr = np.asarray(im.convert("L"))
        except OSError as e:
            raise InputError(f"cannot read mask {path}: {e}", "masks must be PNG/JPEG images") from None
        out[i] = cv2.resize((arr > 127).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(
            bool
        )
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame intersection over union of two T,H,W bool arrays (frames where both are empty count 1)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())
