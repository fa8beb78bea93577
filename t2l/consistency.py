"""How well a video edit sticks to the video: the consistency report of `t2l video` (docs/consistency.md).

Four measures, none needing pretrained weights (../shared/reference/video-facts.md):

- warp error (Lai et al. 2018): frame t+k is warped back to frame t along the SOURCE video's optical
  flow (composed over k steps), and the squared difference is averaged over the pixels whose whole flow
  chain passes the forward-backward check. Computed for the edit layer (premultiplied RGBA), the final
  video and the source video itself (the baseline: an edit glued to the atlas adds ~nothing to it);
- leakage: the share of the edit's alpha that falls outside its layer;
- preservation: PSNR of the final video against the source where the edit layer is transparent;
- atlas spread: each frame's edit splatted back into the atlas through its uv map; the weighted
  variance of the values landing on one texel, ~0 when the edit is glued.

`warp_error` returns Lai's E_warp: a mean squared error in [0, 1] colour units. The report converts it
to an RMSE in 8-bit levels, 255 * sqrt(E_warp) ("the edit flickers by N grey levels"), and the same for
the atlas spread. Pure numpy/torch on the CPU; never prints.

Example: a still 4 x 8 clip (zero flow) with a red 2 x 2 edit glued in place, half of it outside the
foreground. In the real pipeline video and layer come from render_edit(data, {"fg": edit}) and
source, flow and fg_alpha from the atlas folder (data.frames, data.flow, data.alpha).
    >>> import numpy as np
    >>> source = np.full((3, 4, 8, 3), 100, np.uint8)
    >>> flow = {"forward": np.zeros((2, 4, 8, 2), np.float32), "forward_valid": np.ones((2, 4, 8), bool)}
    >>> layer = np.zeros((3, 4, 8, 4), np.uint8); layer[:, :2, 3:5] = (255, 0, 0, 255)
    >>> video = source.copy(); video[:, :2, 3:5] = (255, 0, 0)
    >>> fg_alpha = np.zeros((3, 4, 8)); fg_alpha[:, :2, :4] = 1.0
    >>> report = consistency_report(source, video, layer, flow, fg_alpha, layer[..., 3] / 255, "fg")
    >>> print("\\n".join(format_report(report)))
    warp error, stride 1 (RMSE, 0-255): edit layer 0.00 (on the edit 0.00), video 0.00 vs source 0.00  [100% of pixels trusted]
    warp error, stride 8: n/a (3 frames)
    leakage: 50.0% of the edit's alpha outside the foreground
    preservation: exact (identical to the source on 88% of pixels)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

REPORT_VERSION = 1
LONG_STRIDE = 8  # the "drift" stride of the report (video-facts.md)
_CHUNK_PIXELS = 4_000_000  # start frames per chunk * H * W: bounds memory on long clips
_FLOW_KEYS = ("forward", "forward_valid")
# "The edit is here": alpha above half an 8-bit level, so float rounding in a bilinear read of a warped
# alpha edge (weights of 1e-5) does not widen the region by a pixel.
_EDGE = 0.5 / 255.0


# ---- input checks ------------------------------------------------------------------------------------


def _shape(x) -> list[int]:
    return list(np.shape(x))


def _check_frames(frames: np.ndarray, name: str, channels: tuple[int, ...]) -> tuple[int, int, int]:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] not in channels:
        want = "|".join(str(c) for c in channels)
        raise ValueError(f"{name} has shape {_shape(frames)}, expected [T, H, W, {want}]")
    return frames.shape[:3]


def _check_flow(flow: dict, t: int, h: int, w: int) -> None:
    if not isinstance(flow, dict) or any(k not in flow for k in _FLOW_KEYS):
        got = sorted(flow) if isinstance(flow, dict) else type(flow).__name__
        raise ValueError(f"flow needs keys {list(_FLOW_KEYS)} (the atlas folder's flow.npz), got {got}")
    n = max(t - 1, 0)
    if _shape(flow["forward"]) != [n, h, w, 2]:
        raise ValueError(f"flow['forward'] has shape {_shape(flow['forward'])}, expected [{n}, {h}, {w}, 2]")
    if _shape(flow["forward_valid"]) != [n, h, w]:
        raise ValueError(
            f"flow['forward_valid'] has shape {_shape(flow['forward_valid'])}, expected [{n}, {h}, {w}]"
        )


def _check_alpha(alpha: np.ndarray | None, name: str, thw: tuple[int, int, int]) -> None:
    if alpha is not None and _shape(alpha) != list(thw):
        raise ValueError(f"{name} has shape {_shape(alpha)}, expected {list(thw)} (T, H, W)")


# ---- flow chains and warping -------------------------------------------------------------------------


def _unit(x: np.ndarray) -> torch.Tensor:
    """uint8 (0-255) or float ([0, 1]) array -> float32 tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().mul_(1.0 / 255.0) if x.dtype == np.uint8 else t.float()


def _as_colour(frames: np.ndarray, alpha: np.ndarray | None, idx: slice) -> torch.Tensor:
    """Frames idx -> N, C, H, W float in [0, 1]; RGBA (or RGB + alpha) is premultiplied: colour*a, a."""
    x = _unit(frames[idx]).permute(0, 3, 1, 2)  # N, C, H, W (a view)
    if alpha is not None:
        x = torch.cat([x, _unit(alpha[idx])[:, None]], 1)
    if x.shape[1] == 4:
        x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
    return x.contiguous()


def _sample(img: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear read of img [N, C, H, W] at grid [N, H, W, 2] (grid_sample units, align_corners=True)."""
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _px_scale(h: int, w: int) -> torch.Tensor:
    """Pixels -> grid units (align_corners=True: pixel centre 0 is -1, pixel centre W-1 is +1)."""
    return torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])


def _inside(grid: torch.Tensor) -> torch.Tensor:
    # 1e-4 grid units of slack (< 0.01 px on any real frame) absorb rounding at the last pixel centre.
    return (grid.abs() <= 1.0 + 1e-4).all(-1)


def _chain(flow: dict, starts: range, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """flow_chain in grid units: (grid [N, H, W, 2], valid [N, H, W])."""
    fwd, ok = flow["forward"], flow["forward_valid"]
    h, w = fwd.shape[1:3]
    t0 = np.asarray(starts)
    scale = _px_scale(h, w)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    grid = torch.stack([xs, ys], -1) * scale - 1.0  # H, W, 2
    # Flows t0 .. t_last + stride - 1 once, scaled to grid units, with their trust as a third channel.
    span = slice(int(t0[0]), int(t0[-1]) + stride) if len(t0) else slice(0, 0)
    f = torch.from_numpy(np.ascontiguousarray(fwd[span], dtype=np.float32))  # M, H, W, 2 px
    trusted = torch.from_numpy(np.ascontiguousarray(ok[span])) & torch.isfinite(f).all(-1)  # M, H, W
    # Untrusted vectors read as 0, so a NaN or huge one cannot leak into its neighbours' bilinear reads.
    f = torch.where(trusted[..., None], f * scale, torch.zeros(()))
    both = torch.cat([f.permute(0, 3, 1, 2), trusted[:, None].float()], 1)  # M, 3, H, W
    n = len(t0)
    grid, valid = grid + f[:n], trusted[:n]  # step 0 at the pixel centres themselves: no interpolation
    for i in range(1, stride):
        read = _sample(both[i : i + n], grid)
        valid = valid & _inside(grid) & (read[:, 2] > 1.0 - 1e-4)  # all bilinear neighbours trusted
        grid = grid + read[:, :2].permute(0, 2, 3, 1)
    return grid, valid & _inside(grid)


def flow_chain(flow: dict, starts: range, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Follow the forward flow `stride` steps from every pixel of the frames `starts`.

    Step i reads flow t+i -> t+i+1 bilinearly at the current position (the first step reads it exactly
    at the pixel). A pixel stays valid while every step starts inside the frame on trusted vectors (all
    bilinear neighbours pass the forward-backward check and are finite) and the chain ends inside the
    frame (pixel centres 0..W-1, 0..H-1).

    Returns:
        pos [N, H, W, 2] float32: where pixel (x, y) of frame t sits in frame t+stride (pixels);
        valid [N, H, W] bool.
    """
    grid, valid = _chain(flow, starts, stride)
    h, w = flow["forward"].shape[1:3]
    return (grid + 1.0) / _px_scale(h, w), valid


def _chunks(n: int, h: int, w: int) -> list[range]:
    size = max(1, _CHUNK_PIXELS // max(h * w, 1))
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def _warp_sums(
    series: dict[str, tuple[np.ndarray, np.ndarray | None]],
    flow: dict,
    stride: int,
    in_edit: dict[str, str] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per start frame: sum of squared differences and value count, for each named series.

    series: name -> (frames [T, H, W, C], optional extra alpha [T, H, W]); all share one flow chain.
    in_edit: extra name -> the name of an RGBA series: that series again, counting only the pixels
        where its alpha at t or its warped alpha from t+stride is > _EDGE (the edit is in either frame).
    Returns name -> (sse [N] float64, count [N] int64) over channels x pixels, N = T - stride.
    """
    in_edit = in_edit or {}
    t, h, w = next(iter(series.values()))[0].shape[:3]
    n = max(t - stride, 0)
    out = {k: (np.zeros(n), np.zeros(n, np.int64)) for k in [*series, *in_edit]}
    for chunk in _chunks(n, h, w):
        grid, valid = _chain(flow, chunk, stride)
        n_c = len(chunk)
        masks, sq = {}, {}
        for name, (frames, alpha) in series.items():
            x = _as_colour(frames, alpha, slice(chunk.start, chunk.stop + stride))  # N + stride, C, H, W
            warped = _sample(x[stride:], grid)
            sq[name] = (x[:n_c] - warped).square_().sum(1)  # N, H, W
            masks[name] = valid
            for extra in (e for e, of in in_edit.items() if of == name):
                here = (x[:n_c, -1] > _EDGE) | (warped[:, -1] > _EDGE)  # the alpha channel, t or t+k
                sq[extra], masks[extra] = sq[name], valid & here
        for name, mask in masks.items():
            sse, cnt = out[name]
            channels = (series[in_edit.get(name, name)][0].shape[3]) + (
                series[in_edit.get(name, name)][1] is not None
            )
            sse[chunk.start : chunk.stop] = torch.where(mask, sq[name], 0.0).sum((1, 2)).double().numpy()
            cnt[chunk.start : chunk.stop] = mask.sum((1, 2)).numpy() * channels
    return out


def _mean_of_pairs(sse: np.ndarray, cnt: np.ndarray) -> float:
    """Lai's E_warp: mean over frame pairs (those with any valid pixel) of the masked MSE; nan if none."""
    used = cnt > 0
    return float(np.mean(sse[used] / cnt[used])) if used.any() else math.nan


def warp_error(
    frames: np.ndarray, flow: dict, stride: int = 1, premultiplied_alpha: np.ndarray | None = None
) -> float:
    """Warp error E_warp (Lai et al. 2018) of a clip along a (source) flow, in [0, 1]^2 colour units.

    E_warp = mean over t of  sum_p M_t(p) |O_t(p) - O_{t+k}(p_k)|^2 / (C * sum_p M_t(p)),
    p_k = p followed k = stride steps along flow["forward"] (bilinear), M_t = the chain stays in the
    frame on vectors that pass the forward-backward check (see flow_chain). Pairs without any valid
    pixel are left out of the mean; nan when no pair has one.

    Args:
        frames: [T, H, W, C] uint8 (0-255) or float ([0, 1]). C = 3 (RGB) or 4 (RGBA, straight alpha:
            compared premultiplied, so colour under alpha 0 does not count).
        flow: the atlas folder's flow dict; "forward" [T-1, H, W, 2] px (frame t -> t+1) and
            "forward_valid" [T-1, H, W] bool are used.
        stride: k >= 1; compare frame t with frame t+k.
        premultiplied_alpha: optional [T, H, W] straight alpha (uint8 or [0, 1]) for C = 3 frames: they
            are then compared as premultiplied RGBA (colour * alpha, alpha), the same as passing C = 4.

    Example: a ramp moving 1 px right per frame, and the flow that says so; then the middle frame
    brightened by 51 levels (0.2): both pairs differ by 0.2, E_warp = 0.2**2.
        >>> import numpy as np
        >>> frames = np.zeros((3, 4, 8, 3), np.uint8)
        >>> for t in range(3):
        ...     frames[t] = (100 + 10 * np.arange(8) - 10 * t)[None, :, None]
        >>> flow = {"forward": np.zeros((2, 4, 8, 2), np.float32), "forward_valid": np.ones((2, 4, 8), bool)}
        >>> flow["forward"][..., 0] = 1.0                 # every pixel moves 1 px right
        >>> round(warp_error(frames, flow), 6)
        0.0
        >>> frames[1] += 51
        >>> round(warp_error(frames, flow), 6)
        0.04
    """
    t, h, w = _check_frames(frames, "frames", (3, 4))
    _check_flow(flow, t, h, w)
    if premultiplied_alpha is not None and frames.shape[3] == 4:
        raise ValueError("premultiplied_alpha is for RGB frames; these are RGBA already (use their A)")
    _check_alpha(premultiplied_alpha, "premultiplied_alpha", (t, h, w))
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    if t <= stride:
        return math.nan
    sse, cnt = _warp_sums({"x": (frames, premultiplied_alpha)}, flow, stride)["x"]
    return _mean_of_pairs(sse, cnt)


# ---- atlas spread -------------------------------------------------------------------------------------


def atlas_spread(
    uv_px: np.ndarray, values: np.ndarray, atlas_size: tuple[int, int], weights: np.ndarray | None = None
) -> dict:
    """Splat every frame's values into the atlas (nearest texel) and measure how much they disagree.

    spread = sum_texel sum_{samples s on it} w_s |v_s - mean_texel|^2 / (C * sum_s w_s), with
    mean_texel the w-weighted mean of that texel's samples: the within-texel weighted variance, in
    [0, 1]^2 colour units. ~0 when the edit is glued to the atlas (every frame shows the same value
    there); bilinear sampling of sharp edit detail leaves a small floor.

    Args:
        uv_px: [T, H, W, 2] continuous atlas-image pixels (x, y) of each frame pixel (uv_to_pixels;
            texel (i, j) covers [j, j+1) x [i, i+1)). Samples outside the atlas are skipped.
        values: [T, H, W, C] uint8 or float in [0, 1], e.g. the edit's premultiplied RGBA per frame.
        atlas_size: (Ha, Wa).
        weights: [T, H, W] >= 0 (e.g. the layer's opacity); default 1. Zero-weight samples do not count.
    Returns:
        {"spread": E (nan if nothing landed), "texels": texels hit by >= 2 weighted samples,
         "samples": weighted samples used}
    """
    t, h, w = _check_frames(values, "values", tuple(range(1, 65)))
    if _shape(uv_px) != [t, h, w, 2]:
        raise ValueError(f"uv_px has shape {_shape(uv_px)}, expected [{t}, {h}, {w}, 2]")
    _check_alpha(weights, "weights", (t, h, w))
    ha, wa = atlas_size
    j = np.floor(uv_px[..., 0]).astype(np.int64).ravel()
    i = np.floor(uv_px[..., 1]).astype(np.int64).ravel()
    v = values.reshape(-1, values.shape[3]).astype(np.float64)
    if values.dtype == np.uint8:
        v /= 255.0
    wt = np.ones(len(v)) if weights is None else np.asarray(weights, np.float64).ravel()
    keep = (i >= 0) & (i < ha) & (j >= 0) & (j < wa) & (wt > 0)
    idx, v, wt = i[keep] * wa + j[keep], v[keep], wt[keep]
    sw = np.bincount(idx, wt, ha * wa)
    n = np.bincount(idx, minlength=ha * wa)
    shared = n[idx] >= 2  # texels hit once have no spread to measure
    idx, v, wt = idx[shared], v[shared], wt[shared]
    if len(idx) == 0:
        return {"spread": math.nan, "texels": 0, "samples": 0}
    # sum w (v - m)^2 = sum w v^2 - (sum w v)^2 / sum w, per texel and channel
    swv = np.stack([np.bincount(idx, wt * v[:, c], ha * wa) for c in range(v.shape[1])], 1)
    swv2 = np.stack([np.bincount(idx, wt * v[:, c] ** 2, ha * wa) for c in range(v.shape[1])], 1)
    hit = sw > 0
    within = np.maximum(swv2[hit] - swv[hit] ** 2 / sw[hit, None], 0).sum()
    spread = float(within / (v.shape[1] * wt.sum()))
    return {"spread": spread, "texels": int((n >= 2).sum()), "samples": int(len(idx))}


# ---- the report -------------------------------------------------------------------------------------


def _rmse255(e: float) -> float | None:
    """E_warp ([0, 1]^2) -> RMSE in 8-bit levels; None for nan (nothing measured)."""
    return None if not math.isfinite(e) else round(255.0 * math.sqrt(e), 4)


def _leakage(edit_alpha, fg_alpha, layer_name: str) -> dict:
    where = "outside the foreground" if layer_name == "fg" else "inside the foreground (hidden)"
    if edit_alpha is None or fg_alpha is None:
        return {"share": None, "where": where, "edit_alpha_sum": None}
    e = np.asarray(edit_alpha, np.float64)
    fg = np.asarray(fg_alpha, np.float64)
    total = float(e.sum())
    off = e * (1.0 - fg) if layer_name == "fg" else e * fg
    share = float(off.sum() / total) if total > 0 else None
    return {"share": None if share is None else round(share, 6), "where": where, "edit_alpha_sum": total}


def _preservation(source: np.ndarray, video: np.ndarray, layer: np.ndarray) -> dict:
    keep = layer[..., 3] == 0  # A < 1/255: the edit is absent there
    n = int(keep.sum())
    out = {
        "psnr_db": None,
        "exact": None,
        "max_abs_diff": None,
        "pixels": n,
        "share": round(n / max(keep.size, 1), 6),
    }
    if n == 0:
        return out
    d = np.abs(source.astype(np.int16) - video.astype(np.int16))  # T, H, W, 3 in 0-255
    d[~keep] = 0
    mse = float(np.square(d, dtype=np.int32).sum(dtype=np.int64)) / (3 * n)
    out["max_abs_diff"] = int(d.max())
    out["exact"] = mse == 0.0
    out["psnr_db"] = None if mse == 0.0 else round(10.0 * math.log10(255.0**2 / mse), 3)
    return out


def consistency_report(
    source: np.ndarray,
    video: np.ndarray,
    layer: np.ndarray,
    flow: dict,
    fg_alpha: np.ndarray | None,
    edit_alpha: np.ndarray | None,
    layer_name: str,
    *,
    uv_px: np.ndarray | None = None,
    atlas_size: tuple[int, int] | None = None,
) -> dict:
    """The consistency report of an edited video: JSON-ready dict (docs/consistency.md has every key).

    Args:
        source: [T, H, W, 3] uint8, the original frames.
        video: [T, H, W, 3] uint8, the edited frames (render over the original).
        layer: [T, H, W, 4] uint8, the rendered edit layer (straight alpha, A = coverage in the frame).
        flow: the atlas folder's flow dict (frame t -> t+1 and its forward-backward check).
        fg_alpha: [T, H, W] in [0, 1], the atlas's foreground opacity; None for one-layer atlases.
        edit_alpha: [T, H, W] in [0, 1], the edit's own alpha sampled through the layer's mapping,
            before weighting by the layer's opacity; None if unknown.
        layer_name: "fg" or "bg", the edited layer.
        uv_px, atlas_size: optional [T, H, W, 2] atlas-image pixels of the edited layer and its (Ha, Wa):
            adds the atlas spread of the edit (colour premultiplied by edit_alpha, edit_alpha), weighted
            by the layer's opacity. Needs edit_alpha.
    Warp errors are RMSE in 8-bit levels (255 * sqrt(E_warp)); None where not measurable.
    """
    t, h, w = _check_frames(source, "source", (3,))
    for name, arr, c in (("video", video, 3), ("layer", layer, 4)):
        _check_frames(arr, name, (c,))
        if arr.shape[:3] != (t, h, w):
            raise ValueError(f"{name} has shape {_shape(arr)}, expected [{t}, {h}, {w}, {c}] (as source)")
    _check_flow(flow, t, h, w)
    _check_alpha(fg_alpha, "fg_alpha", (t, h, w))
    _check_alpha(edit_alpha, "edit_alpha", (t, h, w))
    if layer_name not in ("fg", "bg"):
        raise ValueError(f"layer_name must be 'fg' or 'bg', got {layer_name!r}")

    series = {"layer": (layer, None), "video": (video, None), "source": (source, None)}
    names = [*series, "layer_in_edit"]
    warp: dict[str, dict | None] = {}
    for k in (1, LONG_STRIDE):
        if t <= k:
            warp[f"stride_{k}"] = None
            continue
        sums = _warp_sums(series, flow, k, in_edit={"layer_in_edit": "layer"})
        pixels = int(sums["source"][1].sum() // 3)
        warp[f"stride_{k}"] = {
            **{name: _rmse255(_mean_of_pairs(*sums[name])) for name in names},
            "pairs": int((sums["source"][1] > 0).sum()),
            "valid_share": round(pixels / ((t - k) * h * w), 6),
            "edit_pixels": int(sums["layer_in_edit"][1].sum() // 4),
        }

    report = {
        "version": REPORT_VERSION,
        "layer": layer_name,
        "frames": t,
        "height": h,
        "width": w,
        "units": {
            "warp": "RMSE in 8-bit levels (0-255) = 255*sqrt(E_warp), Lai et al. 2018, source flow",
            "atlas_spread": "RMS in 8-bit levels = 255*sqrt(weighted within-texel variance)",
            "leakage": "share of the edit's alpha, 0-1",
            "preservation": "PSNR dB of video vs source where the edit layer's alpha < 1/255",
        },
        "warp": warp,
        "leakage": _leakage(edit_alpha, fg_alpha, layer_name),
        "preservation": _preservation(source, video, layer),
        "atlas_spread": None,
    }
    if uv_px is not None and edit_alpha is not None and atlas_size is not None:
        ea = np.asarray(edit_alpha, np.float32)
        vals = np.concatenate([layer[..., :3].astype(np.float32) / 255.0 * ea[..., None], ea[..., None]], -1)
        weight = None if fg_alpha is None else (fg_alpha if layer_name == "fg" else 1.0 - fg_alpha)
        s = atlas_spread(uv_px, vals, atlas_size, weight)
        report["atlas_spread"] = {
            "rms": _rmse255(s["spread"]),
            "texels": s["texels"],
            "samples": s["samples"],
        }
    return report


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def format_report(report: dict) -> list[str]:
    """A few short lines for the terminal (what `t2l video` prints at the end)."""
    lines = []
    for k in (1, LONG_STRIDE):
        s = report["warp"].get(f"stride_{k}")
        if s is None:
            lines.append(f"warp error, stride {k}: n/a ({report['frames']} frames)")
            continue
        lines.append(
            f"warp error, stride {k} (RMSE, 0-255): edit layer {_fmt(s['layer'])} "
            f"(on the edit {_fmt(s['layer_in_edit'])}), video {_fmt(s['video'])} vs source {_fmt(s['source'])}"
            f"  [{s['valid_share']:.0%} of pixels trusted]"
        )
    leak = report["leakage"]
    if leak["share"] is not None:
        lines.append(f"leakage: {leak['share']:.1%} of the edit's alpha {leak['where']}")
    p = report["preservation"]
    if p["pixels"] == 0:
        lines.append("preservation: n/a (the edit covers every pixel)")
    elif p["exact"]:
        lines.append(f"preservation: exact (identical to the source on {p['share']:.0%} of pixels)")
    else:
        lines.append(
            f"preservation: {p['psnr_db']:.1f} dB PSNR on the {p['share']:.0%} of pixels outside the edit"
        )
    spread = report.get("atlas_spread")
    if spread is not None and spread["rms"] is not None:
        lines.append(f"atlas spread (RMS, 0-255): {spread['rms']:.2f} over {spread['texels']} texels")
    return lines
