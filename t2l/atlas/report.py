"""Quality report of a fitted atlas: the figures a user needs to trust it, and warnings to act on.

PSNR alone hides most failures (an empty foreground layer reconstructs perfectly: the background
simply keeps the object), so the report also says how much of the video each layer holds, whether
the fitted opacity still agrees with the masks it was bootstrapped from, and whether the source
decoded short of what its header announced. It is printed by `t2l atlas` and stored in
atlas.json `meta.quality`.

Each warning is {"code", "message"}: the message names values (frames, dB, shares), not command-line
options; the CLI adds the fix in its own terms.

Example: three 4 x 4 frames, one reconstructed poorly, and a foreground layer that lost the object
its masks show:
    >>> import numpy as np
    >>> alpha = np.zeros((3, 4, 4))                              # fitted opacity: empty
    >>> masks = np.zeros((3, 4, 4), bool); masks[:, 1:3, 1:3] = True
    >>> rep = quality_report([31.2, 24.04, 33.0], alpha, masks)   # PSNR per frame, dB
    >>> rep["psnr_min"], rep["low_frames"], [w["code"] for w in rep["warnings"]]
    (24.04, [1], ['low_psnr', 'empty_fg'])
"""

from __future__ import annotations

import numpy as np

from t2l.video_read import VideoInfo

LOW_PSNR_DB = 25.0  # a frame below this shows visible errors (ghosts, smear) in the reconstruction
EMPTY_FG_SHARE = 0.001  # a frame whose foreground holds less than this share of its pixels is empty
MASK_IOU_MIN = 0.5  # masks and fitted opacity (> 0.5) overlapping less than this disagree


def _ranges(frames: list[int], step: int = 1) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"; with step 2, [4, 6, 8, 12] -> "4-8, 12"."""
    out, start = [], None
    for i, f in enumerate(frames):
        if start is None:
            start = f
        if i + 1 == len(frames) or frames[i + 1] != f + step:
            out.append(str(start) if start == f else f"{start}-{f}")
            start = None
    return ", ".join(out)


def quality_report(
    psnr: list[float],
    alpha: np.ndarray | None,
    masks: np.ndarray | None,
    info: VideoInfo | None = None,
    gain: np.ndarray | None = None,
    masks_given: bool = False,
) -> dict:
    """Figures and warnings of a fit.

    Args:
        psnr: per frame, dB. alpha: T, H, W float in [0, 1] (None: one layer). masks: T, H, W bool
            used to bootstrap alpha (None: none). info: the source (for frames decoded short of the
            header, and the source frame numbers). gain: T, 3 per-frame colour gain of the fit (None:
            not modelled). masks_given: the masks are the user's (a box, a mask folder), so a frame
            whose mask is empty is meant to have an empty foreground and is not counted as one that
            lost it (automatic masks miss objects that stand still: there it is counted).
    Returns:
        a JSON-ready dict: psnr_mean, psnr_min, worst (frame, source_frame, psnr), low_frames,
        fg_share / bg_share (mean share of frame pixels on each layer), fg_empty_frames,
        mask_iou (with masks), gain_range, decoded_frames / header_frames, warnings [{code, message}].
        Lists of frames are indices among the fitted frames (the folder's PNG numbers); messages
        name source frame numbers (what --start and a video player count), the same when the fit
        starts at frame 0 with every frame.
    """
    p = np.asarray(psnr, np.float64)
    T = len(p)
    src = list(info.frame_indices) if info is not None and len(info.frame_indices) == T else list(range(T))
    steps = {b - a for a, b in zip(src, src[1:], strict=False)}
    step = steps.pop() if len(steps) == 1 else 1

    def frames(idx: list[int]) -> str:  # fitted indices -> source frame numbers, in ranges
        return _ranges([int(src[i]) for i in idx], step)

    order = np.argsort(p)
    rep: dict = {
        "psnr_mean": round(float(p.mean()), 2),
        "psnr_min": round(float(p.min()), 2),
        "worst": [
            {"frame": int(i), "source_frame": int(src[i]), "psnr": round(float(p[i]), 2)} for i in order[:3]
        ],
    }
    warnings = []
    low = [int(i) for i in np.nonzero(p < LOW_PSNR_DB)[0]]
    rep["low_frames"] = low
    if low:
        warnings.append({"code": "low_psnr", "message": (
            f"the reconstruction is poor in {len(low)} of {T} frames ({frames(low)}; worst "
            f"{p.min():.1f} dB at frame {src[int(order[0])]}): edits will not stick to the content there")})  # fmt: skip
    if alpha is not None:
        fg = alpha > 0.5  # T, H, W
        share = fg.reshape(T, -1).mean(1)  # T
        rep["fg_share"] = round(float(alpha.mean()), 4)
        rep["bg_share"] = round(1 - float(alpha.mean()), 4)
        empty = [int(i) for i in np.nonzero(share < EMPTY_FG_SHARE)[0]]
        rep["fg_empty_frames"] = empty
        marked = list(range(T))  # the frames that should hold a foreground
        if masks_given and masks is not None:
            marked = [int(i) for i in np.nonzero(masks.reshape(T, -1).any(1))[0]]
        lost = sorted(set(empty) & set(marked))
        of = f"{len(marked)} frames" if len(marked) == T else f"the {len(marked)} frames its masks mark"
        if marked and len(lost) == len(marked):
            warnings.append({"code": "empty_fg", "message": (
                "the foreground layer is empty (the background holds everything): "
                "a foreground edit will not show in any frame")})  # fmt: skip
        elif len(lost) > len(marked) // 4:
            warnings.append({"code": "sparse_fg", "message": (
                f"the foreground layer is empty in {len(lost)} of {of} ({frames(lost)}): "
                "a foreground edit will not show there")})  # fmt: skip
        if masks is not None and masks.any():
            inter = (fg & masks).reshape(T, -1).sum(1)
            union = (fg | masks).reshape(T, -1).sum(1)
            per = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
            # a frame both leave empty agrees, stray opacity specks (< EMPTY_FG_SHARE) or not
            per[(share < EMPTY_FG_SHARE) & ~masks.reshape(T, -1).any(1)] = 1.0
            rep["mask_iou"] = round(float(per.mean()), 3)
            if per.mean() < MASK_IOU_MIN and len(empty) < T:
                bad = [int(src[i]) for i in np.argsort(per)[:3]]
                warnings.append({"code": "masks_disagree", "message": (
                    f"the fitted opacity overlaps the masks by only {per.mean():.2f} IoU (worst frames "
                    f"{', '.join(map(str, bad))}): the foreground drifted from the masks, or the masks "
                    "are wrong; compare masks/ and alpha/")})  # fmt: skip
    else:
        rep["bg_share"] = 1.0
    if gain is not None:
        g = np.asarray(gain).mean(-1)
        rep["gain_range"] = [round(float(g.min()), 3), round(float(g.max()), 3)]
    if info is not None and not info.is_folder:
        rep["header_frames"] = info.header_frames
        rep["decoded_frames"] = info.decoded_frames
        missing = info.short_of_header()
        if missing:
            why = f" (decoding failed: {info.decode_error})" if info.decode_error else ""
            warnings.append({"code": "truncated", "message": (
                f"{info.path} decodes only {info.decoded_frames} of the {info.header_frames} frames its "
                f"header announces{why}: the file looks truncated or damaged, so the last "
                f"{missing} frames are missing")})  # fmt: skip
    rep["warnings"] = warnings
    return rep
