"""Map atlas edits back to the video (NLA Eq. 15/16) over the ORIGINAL frames.

Each layer's RGBA edit is sampled at the pixel's atlas coordinate (bilinear, premultiplied so that
transparent edit pixels do not bleed their colour), then

    c_layer' = a_e * c_e + (1 - a_e) * I          (I = original frame, not the reconstruction)
    output   = alpha * c_fg' + (1 - alpha) * c_bg'

which is I + alpha*(P_fg - a_fg*I) + (1 - alpha)*(P_bg - a_bg*I) with P = a_e*c_e. We compute it in
0-255 units and only touch pixels whose sampled edit alpha is > 0, so a blank edit gives back the
original frames bit for bit.

Usage (needs a fitted atlas folder; load_atlas is in t2l.atlas.folder):

    data = load_atlas("clip.atlas")
    edit = np.array(Image.open("fg.png").convert("RGBA"))      # fg atlas.png size
    video, layer = render_edit(data, {"fg": edit})
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from t2l.atlas.coords import premultiply, sample_atlas
from t2l.atlas.folder import AtlasData, AtlasLayer, remove_numbered_after
from t2l.errors import InputError, UsageError

# Checkerboard preview colours (RGB) per layer: background blue/white, foreground red/yellow.
_CHECKER_COLOURS = {"bg": ((40, 90, 220), (235, 235, 235)), "fg": ((220, 40, 40), (250, 210, 40))}


def check_edit(layer: AtlasLayer, edit: np.ndarray, source: str = "edit") -> np.ndarray:
    """Validate an RGBA edit for `layer`: uint8 [Ha, Wa, 4] of the layer's atlas.png size."""
    ha, wa = layer.texture.shape[:2]
    if edit.ndim != 3 or edit.shape[2] != 4:
        got = f"{edit.shape[2]} channels" if edit.ndim == 3 else f"shape {list(edit.shape)}"
        raise InputError(
            f"{source} for layer {layer.name} has {got}, needs RGBA (an alpha channel)", "save it as RGBA PNG"
        )
    if edit.shape[:2] != (ha, wa):
        raise InputError(
            f"{source} for layer {layer.name} is {edit.shape[1]}x{edit.shape[0]}, expected {wa}x{ha} (the atlas size)",
            f"paint over layers/{layer.name}/atlas.png and keep its size",
        )
    if edit.dtype != np.uint8:
        raise InputError(f"{source} for layer {layer.name} is {edit.dtype}, expected uint8")
    return edit


def render_edit(
    data: AtlasData, edits: dict[str, np.ndarray], frames: np.ndarray | None = None, first: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Composite atlas edits into the video.

    Args:
        data: the atlas (uv per layer, alpha, frames at working resolution).
        edits: layer name -> RGBA uint8 [Ha, Wa, 4] image of that layer's atlas.png size, straight alpha.
            Layers without an edit keep the original pixels exactly.
        frames: original frames to composite over, uint8 [T, H2, W2, 3]; default data.frames. At another
            size (e.g. the source resolution) uv and alpha are upsampled bilinearly.
        first: the atlas frame index of frames[0] (render a few frames from the middle).

    Returns:
        (frames uint8 [T, H2, W2, 3] with the edit, edit layer uint8 [T, H2, W2, 4] RGBA with straight
        alpha: colour where the edit is, A = its effective coverage in the frame).
    """
    frames = data.frames if frames is None else frames
    outs, layers = zip(*iter_render(data, edits, frames, first), strict=True) if len(frames) else ((), ())
    h, w = frames.shape[1:3]
    if not outs:
        return np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h, w, 4), np.uint8)
    return np.stack(outs), np.stack(layers)


def iter_render(
    data: AtlasData, edits: dict[str, np.ndarray], frames: Iterable[np.ndarray], first: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Like render_edit, one frame at a time: yields (frame uint8 [H2, W2, 3], layer uint8 [H2, W2, 4]).
    frames are the atlas frames first, first + 1, ..."""
    import torch

    unknown = set(edits) - {lay.name for lay in data.layers}
    if unknown:
        raise UsageError(
            f"no layer named {sorted(unknown)} in this atlas", f"layers: {[lay.name for lay in data.layers]}"
        )
    sampled = []  # (layer, premultiplied edit [1, 4, Ha, Wa] in 0-255)
    for lay in data.layers:
        if lay.name in edits:
            e = torch.from_numpy(check_edit(lay, edits[lay.name]).astype(np.float32)).permute(2, 0, 1)[None]
            straight = torch.cat([e[:, :3], e[:, 3:] / 255.0], 1)  # 1, 4, Ha, Wa: RGB 0-255, alpha [0,1]
            sampled.append((lay, premultiply(straight)))  # premultiplied once, sampled every frame

    t_count = data.layers[0].uv.shape[0]
    for t, frame in enumerate(frames, start=first):
        if t >= t_count:
            raise UsageError(f"got more frames than the atlas has ({t_count})")
        yield _render_frame(data, t, sampled, frame)


def _render_frame(data: AtlasData, t: int, sampled: list, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    h2, w2 = frame.shape[:2]
    h, w = data.layers[0].uv.shape[1:3]
    resize = (h2, w2) != (h, w)
    image = torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1)  # 3, H2, W2 in 0-255

    def upsample(x: torch.Tensor) -> torch.Tensor:  # C, H, W -> C, H2, W2
        return F.interpolate(x[None], size=(h2, w2), mode="bilinear", align_corners=False)[0] if resize else x

    fg_alpha = None  # 1, H2, W2
    if data.alpha is not None:
        fg_alpha = upsample(torch.from_numpy(np.ascontiguousarray(data.alpha[t], dtype=np.float32))[None])

    # the edit is lit like the footage: a fade or an exposure change of the fit (gain) dims it too
    gain = (
        None if data.gain is None else torch.from_numpy(np.asarray(data.gain[t], np.float32))[:, None, None]
    )
    premul = torch.zeros(3, h2, w2)  # sum over layers of weight * a_e * c_e (0-255)
    cover = torch.zeros(1, h2, w2)  # sum over layers of weight * a_e, in [0,1]
    for lay, edit in sampled:
        uv = torch.from_numpy(np.ascontiguousarray(lay.uv[t], dtype=np.float32)).permute(2, 0, 1)
        uv = upsample(uv).permute(1, 2, 0)[None]  # 1, H2, W2, 2
        s = sample_atlas(edit, uv, lay.uv_to_px, premultiplied=False)  # already premultiplied
        s = s[0]  # 4, H2, W2: premultiplied RGB (0-255), alpha
        weight = 1.0 if fg_alpha is None else (fg_alpha if lay.name == "fg" else 1.0 - fg_alpha)
        premul += weight * s[:3]
        cover += weight * s[3:]

    if gain is not None:
        premul = premul * gain
    touched = cover > 0  # 1, H2, W2
    # I + sum_l w_l (P_l - a_l I)  ==  A*c + (1-A)*I  with A = cover, c = premul / A
    out = image + premul - cover * image
    out = torch.where(touched, out.clamp(0, 255).round(), image).to(torch.uint8).permute(1, 2, 0).numpy()

    a = cover.clamp(0, 1)
    colour = torch.where(touched, premul / a.clamp_min(1e-8), torch.zeros(())).clamp(0, 255).round()
    layer = torch.cat([colour, (a * 255).round()], 0).to(torch.uint8).permute(1, 2, 0).numpy()  # H2, W2, 4
    return out, layer


def checkerboard_edit(layer: AtlasLayer, cells: int = 16) -> np.ndarray:
    """An opaque RGBA grid covering the layer's atlas image (cells squares along the longer side).

    Rendered through the mapping it shows how the atlas sticks to the video: cells should move with
    the content and keep their shape.
    """
    ha, wa = layer.texture.shape[:2]
    size = max(ha, wa) / max(1, cells)
    yy, xx = np.mgrid[0:ha, 0:wa]
    odd = ((xx // size).astype(int) + (yy // size).astype(int)) % 2 == 1
    c0, c1 = _CHECKER_COLOURS.get(layer.name, _CHECKER_COLOURS["bg"])
    rgb = np.where(odd[..., None], np.array(c1, np.uint8), np.array(c0, np.uint8))
    return np.concatenate([rgb, np.full((ha, wa, 1), 255, np.uint8)], -1)


def source_frames(data: AtlasData) -> Iterator[np.ndarray]:
    """Decode the atlas's frames again from the source video at source resolution (uint8 [H, W, 3]).

    Raises:
        InputError if the source is gone or its frames no longer match.
    """
    from t2l.video_read import iter_video

    info = data.info
    if not Path(info.path).exists():
        raise InputError(
            f"source video {info.path} is gone", "render at --resolution working, or put the file back"
        )
    idx = info.frame_indices or tuple(range(data.layers[0].uv.shape[0]))
    stride = idx[1] - idx[0] if len(idx) > 1 else 1
    count = 0
    for frame in iter_video(info.path, start=idx[0], max_frames=len(idx), stride=stride):
        if frame.shape[:2] != (info.height, info.width):
            raise InputError(
                f"source video {info.path} is now {frame.shape[1]}x{frame.shape[0]}, the atlas was made from "
                f"{info.width}x{info.height}",
                "render at --resolution working",
            )
        count += 1
        yield frame
    if count != len(idx):
        raise InputError(
            f"source video {info.path} has fewer frames than the atlas ({count} < {len(idx)})",
            "render at --resolution working",
        )


# ---- files in, files out (what `t2l render DIR` runs) ---------------------------------------------

VIDEO_OUTPUTS = ("mp4", "prores", "webm", "greenscreen")  # mp4: composited video; prores/webm: the RGBA
# edit layer; greenscreen: the edit layer over the green-screen colour (H.264 preview)
_GREEN_255 = np.array((0, 177, 64), np.float32)  # t2l.losses.GREEN in 8-bit


def over_green(layer: np.ndarray) -> np.ndarray:
    """RGBA uint8 [H, W, 4] (straight alpha) over the green-screen colour -> RGB uint8 [H, W, 3]."""
    a = layer[..., 3:].astype(np.float32) / 255
    return np.round(layer[..., :3] * a + _GREEN_255 * (1 - a)).astype(np.uint8)


def load_edit(path: str | Path, layer: AtlasLayer) -> np.ndarray:
    """Read an RGBA edit PNG for `layer` (uint8 [Ha, Wa, 4], straight alpha); InputError if unusable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"edit image not found: {path}", "check the path")
    try:
        with Image.open(path) as im:
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA")) if has_alpha else np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read edit image {path}: {e}", "save it as an RGBA PNG") from None
    return check_edit(layer, arr, source=str(path))


_CODEC = {"greenscreen": "mp4"}  # output format -> VideoWriter format, where they differ


def render_to_files(
    data: AtlasData,
    edits: dict[str, np.ndarray],
    outputs: dict[str, Path],
    resolution: str = "working",
    crf: int = 18,
    frames_dir: Path | None = None,
) -> Iterator[int]:
    """Render edits and write them; yields the number of frames done after each frame.

    Args:
        outputs: format -> path. "mp4" gets the composited video; "prores" (.mov) and "webm" get the
            RGBA edit layer (straight alpha) for compositing software; "greenscreen" (.mp4) the edit
            layer over the green-screen colour; "png" is a folder of RGBA edit-layer frames.
        resolution: "working" (the atlas frames) or "source" (decode the source video again; uv and
            alpha are upsampled bilinearly).
        frames_dir: if given, also write the composited frames there as PNG.
    """
    import contextlib

    from t2l.atlas.folder import working_fps
    from t2l.video_write import VideoWriter, require_encoder, save_png_frame

    if resolution not in ("working", "source"):
        raise UsageError(f"unknown resolution {resolution!r}", "use working or source")
    for fmt in outputs:
        require_encoder(_CODEC.get(fmt, fmt))
    frames = data.frames if resolution == "working" else source_frames(data)
    if resolution == "working" and len(data.frames) == 0:
        raise UsageError("the atlas was loaded without frames", "load it with with_frames=True")
    fps = working_fps(data.info)
    with contextlib.ExitStack() as stack:
        writers = {
            fmt: stack.enter_context(
                VideoWriter(path, fps, _CODEC.get(fmt, fmt), crf if fmt in _CODEC or fmt == "mp4" else None)
            )
            for fmt, path in outputs.items()
            if fmt in VIDEO_OUTPUTS
        }
        t = -1
        for t, (out, layer) in enumerate(iter_render(data, edits, frames)):
            for fmt, w in writers.items():
                w.write(out if fmt == "mp4" else over_green(layer) if fmt == "greenscreen" else layer)
            if "png" in outputs:
                save_png_frame(outputs["png"], t, layer)
            if frames_dir is not None:
                save_png_frame(frames_dir, t, out)
            yield t + 1
    for folder in (outputs.get("png"), frames_dir):
        if folder is not None:
            remove_numbered_after(Path(folder), t + 1)
