"""Foreground separation without weights: what a background layer cannot explain, and a user's box.

Motion masks (t2l/atlas/masks.py) find pixels whose flow disagrees with the camera. On real footage
that is not enough: flow is arbitrary on textureless walls (blobs where nothing moves), and a slowly
moving or briefly still object has almost no flow of its own. Two more cues, both cheap:

- **Median background.** The frames are aligned on the camera motion (chained RANSAC homographies)
  and the per-pixel temporal median of the aligned frames is the background wherever the object
  uncovers it at least half of the time. Where the medians of the clip's thirds disagree (an object
  stood there for a third or more, then left), the third whose median looks like its surroundings
  is. A pixel that differs from it (after the frame's exposure gain, and with a few pixels of slack
  for registration error: the "envelope" of a 5x5 min/max) is foreground. Plain walls match the
  median, so they never fire.
- **Texture gate.** Flow residuals only count where the image has structure (smallest eigenvalue of
  the structure tensor), i.e. where flow can be trusted at all.

And a hint when automatic separation fails: `box_masks` takes a box on one frame, refines it with
OpenCV's grabCut (colour models of inside and outside; what moves against the camera inside the box
is certain foreground) and carries it along the flow to every other frame, re-running grabCut
around each carried mask so it follows shape changes (never keeping much less than it carried).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SeparationConfig:
    residual: float = (
        28.0  # colour difference (0-255, max over channels) from the median that is foreground ...
    )
    residual_scale: float = 4.0  # ... and at least this many times the frame's median difference
    slack_px: int = 2  # registration slack: compare against the median's min/max over (2r+1)^2 px
    median_frames: int = 31  # frames (evenly spaced) the median is taken over
    max_atlas_scale: float = 9.0  # skip the median when the aligned frames span more than this x the frame
    # structure-tensor min eigenvalue (cv2.cornerMinEigenVal, 7x7, its normalised units) below which flow
    # is ignored: sensor noise of std 2 grey levels gives ~5e-5, real texture 1e-3 (median of a frame)
    texture: float = 3e-4
    # the median is also taken over this many consecutive parts of the frames (1: not): where they
    # disagree, the part whose median looks like the surroundings (a fill from the texels where they
    # agree) is the background (an object that stood still most of the clip before it moved is not)
    windows: int = 3
    windows_agree: float = 0.7  # ... used only when the parts agree on this share of the texels at least


def textured(frame: np.ndarray, cfg: SeparationConfig = SeparationConfig()) -> np.ndarray:
    """Where flow can be trusted: H, W, 3 uint8 RGB -> H, W bool (enough structure in a 7x7 window)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.cornerMinEigenVal(grey, blockSize=7, ksize=3) > cfg.texture


def chain_homographies(homs: np.ndarray) -> np.ndarray:
    """Per-pair camera maps frame t px -> frame t+1 px (T-1, 3, 3) -> frame t px -> frame 0 px (T, 3, 3)."""
    out = [np.eye(3)]
    for h in homs:
        out.append(out[-1] @ np.linalg.inv(h))
    return np.stack(out)


def median_background(
    frames: np.ndarray, homs: np.ndarray, cfg: SeparationConfig = SeparationConfig(),
    exclude: np.ndarray | None = None, upto: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """The robust background in frame-0 coordinates; `exclude` (T, H, W bool: pixels known to be
    foreground) are left out of the median; with `upto`, only frames 0..upto are taken into it.

    Returns:
        (median RGB float32 Ha, Wa, 3; to_ref T, 3, 3 maps frame t px -> median px), or None when the
        camera moves so far that the aligned frames span more than max_atlas_scale frames.
    """
    T, H, W = frames.shape[:3]
    chain = chain_homographies(homs)
    corners = np.array([[0, 0, 1], [W, 0, 1], [0, H, 1], [W, H, 1]], np.float64)
    pts = np.einsum("tij,kj->tki", chain, corners)
    if (pts[..., 2] <= 1e-6).any():
        return None
    xy = pts[..., :2] / pts[..., 2:]
    x0, y0 = np.floor(xy.reshape(-1, 2).min(0))
    x1, y1 = np.ceil(xy.reshape(-1, 2).max(0))
    Wa, Ha = int(x1 - x0), int(y1 - y0)
    if Wa * Ha > cfg.max_atlas_scale * W * H:
        return None
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    to_ref = np.stack([shift @ g for g in chain])
    last = T - 1 if upto is None else min(upto, T - 1)
    picks = np.unique(np.linspace(0, last, min(last + 1, cfg.median_frames)).round().astype(int))
    stack = np.full((len(picks), Ha, Wa, 3), np.nan, np.float32)
    for k, t in enumerate(picks):
        warped = cv2.warpPerspective(frames[t], to_ref[t], (Wa, Ha), flags=cv2.INTER_LINEAR)
        keep = np.ones((H, W), np.uint8) if exclude is None else (~exclude[t]).astype(np.uint8)
        cover = cv2.warpPerspective(keep, to_ref[t], (Wa, Ha), flags=cv2.INTER_NEAREST)
        stack[k][cover > 0] = warped[cover > 0]
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN texels: never covered
            med = np.nanmedian(stack, axis=0)
            split = np.array_split(stack, cfg.windows) if cfg.windows > 1 else []
            parts = [np.nanmedian(p, axis=0) for p in split if len(p)]
    med = np.nan_to_num(med, nan=0.0)
    if len(parts) > 1:
        med = _pick_background(med, parts, cfg)
    return med, to_ref


def _pick_background(med: np.ndarray, parts: list[np.ndarray], cfg: SeparationConfig) -> np.ndarray:
    """Where the medians of the clip's parts (thirds) disagree, something stood there for a while and
    then left (or came): of the parts' medians, the background is the one closest to what the pixels
    around show in every part (the agreeing texels' average, from ever coarser levels: a push-pull
    fill, so a large region is filled from its surroundings too). A hand held still for
    2/3 of the clip is the whole clip's median; the wall it uncovers later is what the wall around it
    looks like. med: Ha, Wa, 3 float32; parts: the same with NaN where a part never saw the texel (a
    moving camera). Returns Ha, Wa, 3 float32."""
    stack = np.stack(parts)  # K, Ha, Wa, 3
    seen = ~np.isnan(stack[..., 0])  # K, Ha, Wa
    every = seen.all(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # texels no part saw
        spread = np.nan_to_num((np.nanmax(stack, 0) - np.nanmin(stack, 0)).max(-1), nan=0.0)
    # a texel some part never saw uncovered (an object masked there all that part) is judged too
    agree = (spread <= cfg.residual) & every
    share = agree.sum() / max(every.sum(), 1)  # of the texels every part saw
    if not (seen.any(0) & ~agree).any() or share < cfg.windows_agree:  # nothing stood anywhere for a
        return med  # while; or the parts disagree on much of the view: a moving camera's parallax
    from t2l.atlas.init import fill_holes  # init imports masks, which imports this module

    w = agree.astype(np.float32)
    fill = fill_holes((med * w[..., None]).transpose(2, 0, 1), w, med.mean((0, 1))).transpose(1, 2, 0)
    values = np.nan_to_num(stack)
    dist = np.where(seen, np.abs(values - fill[None]).max(-1), np.inf)  # K, Ha, Wa
    best = np.take_along_axis(values, dist.argmin(0)[None, ..., None], 0)[0]  # no part saw it: 0, as med
    return np.where(agree[..., None], med, best).astype(np.float32)


def residual_masks(
    frames: np.ndarray, homs: np.ndarray, cfg: SeparationConfig = SeparationConfig(),
    exclude: np.ndarray | None = None, upto: int | None = None, seen: np.ndarray | None = None,
) -> np.ndarray | None:  # fmt: skip
    """Foreground where a frame differs from the median background (T, H, W bool), or None (see
    median_background; `exclude`: foreground already known, left out of the median; `upto`: the
    median of frames 0..upto only). Raw: the caller cleans them (masks.clean_mask). seen: a T, H, W
    bool array filled with where the median has a background to compare with (elsewhere the
    result says nothing: False, not "background")."""
    got = median_background(frames, homs, cfg, exclude, upto)
    if got is None:
        return None
    med, to_ref = got
    T, H, W = frames.shape[:3]
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * cfg.slack_px + 1,) * 2)
    out = np.zeros((T, H, W), bool)
    if seen is not None:
        seen[:] = False
    for t in range(T):
        # WARP_INVERSE_MAP: bg(p) = med(to_ref p)
        bg = cv2.warpPerspective(med, to_ref[t], (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        f = frames[t].astype(np.float32)
        ok = bg.max(-1) > 0
        if ok.sum() < 100:
            continue
        if seen is not None:
            seen[t] = ok
        # exposure: the frame's gain against the background, per channel, on the pixels that agree
        gain = np.median(f[ok] + 1, axis=0) / np.median(bg[ok] + 1, axis=0)
        bgg = bg * gain
        lo, hi = cv2.erode(bgg, k), cv2.dilate(bgg, k)
        diff = np.maximum(np.maximum(lo - f, f - hi), 0).max(-1)  # outside the envelope, max over RGB
        diff = cv2.GaussianBlur(diff, (5, 5), 0)
        thr = max(cfg.residual, cfg.residual_scale * float(np.median(diff[ok])))
        out[t] = (diff > thr) & ok
    return out


def _possible_fg(labels: np.ndarray) -> np.ndarray:
    """cv2.GC_* labels -> H, W bool: definite or probable foreground."""
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _grabcut(frame: np.ndarray, init: np.ndarray, iters: int = 3) -> np.ndarray:
    """grabCut from a mask of cv2.GC_* labels; returns H, W bool (definite or probable foreground)."""
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    lab = init.copy()
    # its colour models start from k-means on OpenCV's global RNG: same input, same cut (this resets
    # the calling thread's OpenCV RNG: a caller's own cv2 random calls repeat after a box_masks)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), lab, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # one of the two classes is empty
        return _possible_fg(init)
    return _possible_fg(lab)


def _warp_along(mask: np.ndarray, flow_back: np.ndarray) -> np.ndarray:
    """Carry a mask of frame t to frame t+1: out(p) = mask(p + flow_{t+1 -> t}(p))."""
    H, W = mask.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    return cv2.remap(mask.astype(np.uint8), xs + flow_back[..., 0], ys + flow_back[..., 1], cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)  # fmt: skip


def _looks_as_before(
    frames: np.ndarray, flows: dict[str, np.ndarray], box: tuple[int, int, int, int], frame: int,
    cut: np.ndarray, new_share: float, new_inside: float,
) -> np.ndarray | None:  # fmt: skip
    """For a box drawn on a later `frame` around an object that came in late: T, H, W bool, what looks
    as the camera-aligned median of frames 0..frame does, where that median saw the scene (probable
    background); None when the box holds nothing new.

    A box also holds the background the object came in front of, and grabCut alone keeps background of
    the object's colours (tree.avi's backlit hand and the overexposed sky around it); carried back to
    the frames before the object came it would stay there (grabCut in its band finds nothing to cut).
    It applies when at least `new_share` of the box differs from the median (after 5x5 speckle
    removal) and at least `new_inside` of that lies in `cut`, the box's plain grabCut: an object that
    stood in the box and then moved on is in the median, and what differs is mostly the background it
    uncovered, outside the cut. The camera is fitted outside the box (not on the object).
    """
    from t2l.atlas.masks import camera_homography  # masks imports this module

    T, H, W = frames.shape[:3]
    x0, y0, x1, y1 = box
    outside = np.ones((H, W), bool)
    outside[y0:y1, x0:x1] = False
    fwd, valid = flows["forward"], flows["forward_valid"]
    homs = np.stack([camera_homography(fwd[t], valid[t] & outside) for t in range(T - 1)])
    seen = np.zeros((T, H, W), bool)
    new = residual_masks(frames, homs, upto=frame, seen=seen)
    if new is None:
        return None
    k5 = np.ones((5, 5), np.uint8)
    new = np.stack([cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, k5) > 0 for m in new])
    in_box = np.zeros((H, W), bool)
    in_box[y0:y1, x0:x1] = new[frame, y0:y1, x0:x1]
    if in_box.sum() < new_share * (x1 - x0) * (y1 - y0) or (in_box & cut).sum() < new_inside * in_box.sum():
        return None
    return ~new & seen


def box_masks(
    frames: np.ndarray, flows: dict[str, np.ndarray], box: tuple[int, int, int, int], frame: int = 0,
    band_px: int = 6, min_keep: float = 0.15, seeds: float = 0.05, keep_carried: float = 0.8,
    max_joined: int = 3, before: int = 8, new_share: float = 0.1, new_inside: float = 0.7,
) -> np.ndarray:  # fmt: skip
    """Masks of the object inside `box` on frame `frame`, for every frame.

    Args:
        frames: T, H, W, 3 uint8 RGB. flows: compute_flows output. box: (x0, y0, x1, y1) frame px at
            working resolution, x1/y1 exclusive. band_px: the band around a carried mask that grabCut
            may re-decide in the next frame. min_keep: if grabCut keeps less than this share of the
            box on frame `frame`, the box itself is that frame's mask. seeds: when at least this share
            of the box moves against the camera on that frame, those pixels are certain foreground for
            grabCut (a box holds the object and whatever is behind it: a grey character before a dark
            burrow, grey rocks outside the box, and grabCut alone takes the burrow). keep_carried: a
            frame's grabCut that keeps less than this share of the mask carried from the frame before
            (or after, carrying back from `frame`) is joined with the carried mask (a cut that keeps
            only the certain core shrinks the mask by the band every frame, until it is gone), for at
            most `max_joined` frames in a row (then the cut stands: an object that left or is hidden
            is not kept forever). before, new_share, new_inside: when at least `before` frames come
            before `frame`, what looks as they did is probable background in every frame's cut
            (_looks_as_before: an object that came in late).
    Returns:
        T, H, W bool.
    """
    T, H, W = frames.shape[:3]
    x0, y0, x1, y1 = box
    init = np.full((H, W), cv2.GC_BGD, np.uint8)
    init[y0:y1, x0:x1] = cv2.GC_PR_FGD
    from t2l.atlas.masks import moving_in_frame  # masks imports this module

    moving = np.zeros((H, W), bool)  # what moves against the camera inside the box, speckle opened away
    moving[y0:y1, x0:x1] = moving_in_frame(flows, frame, tex=textured(frames[frame]))[y0:y1, x0:x1]
    moving = cv2.morphologyEx(moving.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    if moving.sum() >= seeds * (x1 - x0) * (y1 - y0):
        init[moving] = cv2.GC_FGD
    out = np.zeros((T, H, W), bool)
    out[frame] = _grabcut(frames[frame], init, iters=5)
    same = None  # T, H, W: what looks as the frames before `frame` did (probable background)
    if frame >= before:
        same = _looks_as_before(frames, flows, box, frame, out[frame], new_share, new_inside)
    if same is not None:
        init[same[frame] & (init == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
        out[frame] = _grabcut(frames[frame], init, iters=5)
    if out[frame].sum() < min_keep * (x1 - x0) * (y1 - y0):  # grabCut lost the object (e.g. dark on
        # dark, bigbuckbunny: 0.02% of the frame kept): the user's box is the mask, or for an object
        # that came in late what in it is new or moves
        out[frame] = _possible_fg(init)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1,) * 2)

    def refine(t: int, carried: np.ndarray) -> np.ndarray:
        if not carried.any():
            return carried
        m = carried.astype(np.uint8)
        lab = np.full((H, W), cv2.GC_BGD, np.uint8)
        lab[cv2.dilate(m, k) > 0] = cv2.GC_PR_BGD
        lab[m > 0] = cv2.GC_PR_FGD
        lab[cv2.erode(m, k) > 0] = cv2.GC_FGD
        if same is not None:
            lab[same[t] & (lab != cv2.GC_BGD)] = cv2.GC_PR_BGD
        return _grabcut(frames[t], lab, iters=2)

    # forward: frame t-1 -> t along the backward flow of pair t-1; backward: t+1 -> t along the forward
    # flow of pair t. A cut keeping too little of the carried mask is joined with it, a few frames in a
    # row only (an object that leaves or is hidden is let go)
    for order, step, way in ((range(frame + 1, T), -1, "backward"), (range(frame - 1, -1, -1), 1, "forward")):
        joined = 0
        for t in order:
            carried = _warp_along(out[t + step], flows[way][min(t, t + step)])
            out[t] = refine(t, carried)
            joined = joined + 1 if (out[t] & carried).sum() < keep_carried * carried.sum() else 0
            if 0 < joined <= max_joined:
                out[t] |= carried
    return out
