"""Video in and out: decode a clip (or a folder of frames) to uint8 RGB arrays; encode MP4, ProRes 4444,
VP9-alpha WebM and PNG sequences.

Decoding applies the container's display rotation (FFmpeg reports it but never applies it for us) and
keeps per-frame timestamps, so variable-frame-rate phone clips survive. Every write is atomic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2l.errors import InputError, UsageError
from t2l.files import atomic_path, save_image_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_FPS = Fraction(30)  # a folder of frames carries no rate; we assume 30 fps

# format name -> (encoder, container suffix, pixel format); what `t2l render --format` can write
ENCODERS = {
    "mp4": ("libx264", ".mp4", "yuv420p"),
    "prores": ("prores_ks", ".mov", "yuva444p10le"),
    "webm": ("libvpx-vp9", ".webm", "yuva420p"),
}
_ALTERNATIVE = {"mp4": "png", "prores": "png (or webm)", "webm": "png (or prores)"}


@dataclass(frozen=True)
class VideoInfo:
    """Where frames came from and how to map them back to time."""

    path: str  # the video file or frame folder, as given (absolute)
    width: int  # displayed source width, after rotation, before any resize
    height: int  # displayed source height
    fps: Fraction  # nominal rate (average rate of the stream; FOLDER_FPS for folders)
    rotation: int  # degrees counter-clockwise as stored in the file (already applied to frames)
    timestamps: tuple[float, ...]  # seconds, one per decoded frame (variable-frame-rate safe)
    is_folder: bool
    frame_indices: tuple[int, ...] = ()  # source frame number of each decoded frame (start/stride)


# ---- decoding ------------------------------------------------------------------------------------


def read_video(
    path: str | Path,
    start: int = 0,
    max_frames: int | None = None,
    stride: int = 1,
    long_side: int | None = None,
) -> tuple[np.ndarray, VideoInfo]:
    """Decode a video file or a folder of images.

    Args:
        path: mp4/mov/avi/webm/mkv... or a folder of images (sorted naturally: 2.png before 10.png).
        start: first source frame to keep (0-based).
        max_frames: keep at most this many frames (None: all).
        stride: keep every `stride`-th frame from `start`.
        long_side: if given and smaller than the source's longer side, resize (area filter) so
            max(H, W) == long_side.

    Returns:
        frames uint8 [T, H, W, 3] RGB and the VideoInfo of the source.

    Raises:
        InputError: missing, corrupt, without a video stream, or no frame in the requested range.
        UsageError: start < 0, stride < 1, max_frames < 1 or long_side < 2.
    """
    _check_range(start, max_frames, stride, long_side)
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise InputError(f"video not found: {path}", "check the path")
    if path.is_dir():
        frames, info = _read_folder(path, start, max_frames, stride)
    else:
        frames, info = _read_file(path, start, max_frames, stride)
    if not frames:
        what = "no frames" if start == 0 else f"no frames from frame {start} on"
        raise InputError(f"{path}: {what}", "check the file, or lower --start")
    arr = np.stack([resize_long_side(f, long_side) for f in frames])  # T, H, W, 3
    return arr, info


def iter_video(
    path: str | Path, start: int = 0, max_frames: int | None = None, stride: int = 1
) -> Iterator[np.ndarray]:
    """Yield frames uint8 [H, W, 3] RGB one at a time (same selection rules as read_video, no resize)."""
    _check_range(start, max_frames, stride, None)
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise InputError(f"video not found: {path}", "check the path")
    if path.is_dir():
        for _, f in _select(enumerate(_folder_images(path)), start, max_frames, stride):
            yield _load_image(f)
        return
    container, stream = _open(path)
    try:
        rotation = None
        for _, frame in _select(enumerate(_decode(container, stream, path)), start, max_frames, stride):
            if rotation is None:
                rotation = _rotation(frame)
            yield _to_rgb(frame, rotation)
    finally:
        container.close()


def _check_range(start: int, max_frames: int | None, stride: int, long_side: int | None) -> None:
    if start < 0:
        raise UsageError(f"start frame must be >= 0, got {start}")
    if stride < 1:
        raise UsageError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"max frames must be >= 1, got {max_frames}")
    if long_side is not None and long_side < 2:
        raise UsageError(f"long side must be >= 2 px, got {long_side}")


def _select(items: Iterable, start: int, max_frames: int | None, stride: int) -> Iterator:
    """Keep (index, item) pairs with index >= start, every stride-th, at most max_frames; stop early."""
    kept = 0
    for i, item in items:
        if i < start or (i - start) % stride:
            continue
        yield i, item
        kept += 1
        if max_frames is not None and kept >= max_frames:
            return


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=_natural_key,
    )
    if not files:
        raise InputError(f"no images in folder {folder}", f"put frames there as {'/'.join(IMAGE_SUFFIXES)}")
    return files


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read frame {path}: {e}", "replace or remove that file") from None


def _read_folder(folder: Path, start: int, max_frames: int | None, stride: int) -> tuple[list, VideoInfo]:
    frames, indices = [], []
    for i, f in _select(enumerate(_folder_images(folder)), start, max_frames, stride):
        img = _load_image(f)
        if frames and img.shape != frames[0].shape:
            raise InputError(
                f"frame {f.name} is {img.shape[1]}x{img.shape[0]} but earlier frames are "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}",
                "give all frames the same size",
            )
        frames.append(img)
        indices.append(i)
    h, w = frames[0].shape[:2] if frames else (0, 0)
    info = VideoInfo(
        path=str(folder),
        width=w,
        height=h,
        fps=FOLDER_FPS,
        rotation=0,
        timestamps=tuple(float(i / FOLDER_FPS) for i in indices),
        is_folder=True,
        frame_indices=tuple(indices),
    )
    return frames, info


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(
            f"cannot open video {path}: {e}", "check that it is a video file and not truncated"
        ) from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream", "pass a video file or a folder of frames")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _decode(container, stream, path: Path) -> Iterator:
    import av

    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as e:
        raise InputError(
            f"cannot decode {path}: {e}", "the file looks corrupt; re-export or re-download it"
        ) from None


def _rotation(frame) -> int:
    """Counter-clockwise display rotation in degrees, snapped to a multiple of 90."""
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(rot / 90.0)) * 90 % 360


def _to_rgb(frame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")  # H, W, 3
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def _read_file(path: Path, start: int, max_frames: int | None, stride: int) -> tuple[list, VideoInfo]:
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames, times, indices = [], [], []
        rotation = 0
        for i, frame in _select(enumerate(_decode(container, stream, path)), start, max_frames, stride):
            if not frames:
                rotation = _rotation(frame)
            frames.append(_to_rgb(frame, rotation))
            times.append(frame.time)
            indices.append(i)
    finally:
        container.close()
    fps = Fraction(rate) if rate else _rate_from_times(times, stride)
    if fps <= 0:
        fps = FOLDER_FPS
    # Frames without a timestamp (rare raw streams) get one from the nominal rate.
    times = [float(t) if t is not None else float(i / fps) for t, i in zip(times, indices, strict=True)]
    h, w = frames[0].shape[:2] if frames else (0, 0)
    info = VideoInfo(
        path=str(path),
        width=w,
        height=h,
        fps=fps,
        rotation=rotation,
        timestamps=tuple(times),
        is_folder=False,
        frame_indices=tuple(indices),
    )
    return frames, info


def _rate_from_times(times: list, stride: int) -> Fraction:
    t = [x for x in times if x is not None]
    if len(t) < 2 or t[-1] <= t[0]:
        return FOLDER_FPS
    return Fraction((len(t) - 1) * stride / (t[-1] - t[0])).limit_denominator(1001)


def resize_long_side(frame: np.ndarray, long_side: int | None) -> np.ndarray:
    """Resize [H, W, C] uint8 so max(H, W) == long_side (area filter); unchanged if already smaller."""
    h, w = frame.shape[:2]
    if long_side is None or max(h, w) <= long_side:
        return frame
    import cv2

    s = long_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def read_rgba_video(path: str | Path) -> tuple[np.ndarray, Fraction]:
    """Decode a video keeping its alpha channel: uint8 [T, H, W, 4] RGBA (straight alpha) and its fps.

    VP9 WebM is decoded with an explicit libvpx-vp9 decoder: FFmpeg's native VP9 decoder drops alpha.
    Files without alpha come back with A = 255.
    """
    import av

    path = Path(path)
    container, stream = _open(path)
    try:
        fps = Fraction(stream.average_rate or stream.guessed_rate or FOLDER_FPS)
        if stream.codec_context.name in ("vp9", "libvpx-vp9"):
            ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
            # demux() ends with an empty packet, which flushes the decoder
            frames = (f for pkt in container.demux(stream) for f in ctx.decode(pkt))
        else:
            frames = _decode(container, stream, path)
        out = []
        for f in frames:
            rgba = _frame_rgba(f)
            rot = _rotation(f)
            out.append(np.ascontiguousarray(np.rot90(rgba, k=rot // 90)) if rot else rgba)
    finally:
        container.close()
    if not out:
        raise InputError(f"{path}: no frames", "check the file")
    return np.stack(out), fps


def _frame_rgba(frame) -> np.ndarray:
    """uint8 [H, W, 4] RGBA of a decoded frame.

    The alpha plane is read directly: FFmpeg 8's yuva->rgba conversion intermittently returned an
    opaque alpha for correctly decoded frames (about 1 frame in 800 here), colour conversion is fine.
    """
    rgb = frame.to_ndarray(format="rgb24")  # H, W, 3
    comps = frame.format.components
    if not (len(comps) == 4 and comps[3].is_alpha and frame.format.name.startswith("yuva")):
        if any(c.is_alpha for c in comps):  # packed RGBA-like formats: no plane to read
            return frame.to_ndarray(format="rgba")
        return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], -1)
    bits = comps[3].bits
    plane = frame.planes[3]
    dtype = np.dtype(np.uint8) if bits <= 8 else np.dtype("<u2")
    raw = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // dtype.itemsize)
    raw = raw[:, : plane.width]  # drop the row padding
    if bits > 8:  # ProRes decodes to 12-bit alpha
        raw = np.round(raw.astype(np.float32) * (255.0 / ((1 << bits) - 1))).astype(np.uint8)
    alpha = raw
    return np.concatenate([rgb, alpha[..., None]], -1)


# ---- encoding ------------------------------------------------------------------------------------


def available_encoders() -> dict[str, bool]:
    """Which output formats this PyAV/FFmpeg build can write: {"mp4", "prores", "webm", "png"} -> bool."""
    import av

    found = {}
    for fmt, (codec, _, _) in ENCODERS.items():
        try:
            av.codec.Codec(codec, "w")
            found[fmt] = True
        except (av.codec.codec.UnknownCodecError, ValueError):
            found[fmt] = False
    found["png"] = True  # written with Pillow
    return found


def require_encoder(fmt: str) -> None:
    """Raise InputError naming the missing encoder and the alternative if `fmt` cannot be written."""
    if fmt not in ENCODERS:
        if fmt == "png":
            return
        raise UsageError(f"unknown video format {fmt!r}", f"use one of {', '.join([*ENCODERS, 'png'])}")
    if not available_encoders()[fmt]:
        raise InputError(
            f"this FFmpeg build has no {ENCODERS[fmt][0]} encoder (needed for {fmt})",
            f"use --format {_ALTERNATIVE[fmt]}, or install a PyAV wheel that includes it",
        )


def _as_fraction(fps) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    # A float rate would be rejected by PyAV; 29.97 -> 30000/1001.
    return Fraction(fps).limit_denominator(1001)


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad [H, W, C] by repeating the last row/column so both sides are even (4:2:0 needs it)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _check_frame(frame: np.ndarray, channels: int, i: int) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != channels:
        raise UsageError(f"frame {i} must be uint8 [H, W, {channels}], got {frame.dtype} {list(frame.shape)}")
    return np.ascontiguousarray(frame)


# per format: (channels in, encoder options); crf with b:v 0 is libvpx's constant-quality mode
_FORMAT_SETTINGS = {
    "mp4": (3, {"preset": "medium"}),
    "prores": (4, {"profile": "4444", "vendor": "apl0"}),
    "webm": (4, {"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}),
}
_DEFAULT_CRF = {"mp4": 18, "prores": None, "webm": 24}


class VideoWriter:
    """Encode frames one at a time into an MP4 / ProRes 4444 .mov / VP9-alpha .webm, atomically.

    The file appears at `path` only when the writer closes without an error:

        with VideoWriter("edit.mov", Fraction(30), "prores") as w:
            for rgba in frames:       # uint8 [H, W, 4] straight alpha ("mp4": [H, W, 3] RGB)
                w.write(rgba)

    Odd sizes are padded by one edge pixel (4:2:0 needs even sides). crf: quality for mp4 (0-51,
    default 18) and webm (0-63, default 24); ProRes has none.
    """

    def __init__(self, path: str | Path, fps: Fraction, fmt: str, crf: int | None = None):
        require_encoder(fmt)
        if fmt not in ENCODERS:
            raise UsageError(f"{fmt} is not a video format", "use mp4, prores or webm")
        if crf is not None and not 0 <= crf <= (51 if fmt == "mp4" else 63):
            raise UsageError(
                f"crf must be in 0..{51 if fmt == 'mp4' else 63}, got {crf}", "17-23 is the usual range"
            )
        self.path, self.fmt, self.fps = Path(path), fmt, _as_fraction(fps)
        self.channels, self._options = _FORMAT_SETTINGS[fmt]
        self._crf = crf if crf is not None else _DEFAULT_CRF[fmt]
        self._atomic = None
        self._container = self._stream = self._size = None
        self.count = 0

    def __enter__(self) -> VideoWriter:
        import av

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        opts = {"movflags": "+faststart"} if self.fmt == "mp4" else {}
        try:
            self._container = av.open(
                str(tmp), "w", format={"mp4": "mp4", "prores": "mov", "webm": "webm"}[self.fmt], options=opts
            )
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = _even(_check_frame(frame, self.channels, self.count))
        if self._stream is None:
            codec, _, pix_fmt = ENCODERS[self.fmt]
            self._stream = self._container.add_stream(codec, rate=self.fps)
            self._stream.height, self._stream.width = self._size = frame.shape[:2]
            self._stream.pix_fmt = pix_fmt
            opts = dict(self._options)
            if self._crf is not None:
                opts["crf"] = str(self._crf)
            self._stream.options = opts
        elif frame.shape[:2] != self._size:
            raise UsageError(
                f"frame {self.count} is {frame.shape[1]}x{frame.shape[0]}, earlier ones {self._size[1]}x{self._size[0]}"
            )
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24" if self.channels == 3 else "rgba")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        error = exc
        try:
            if exc is None:
                if self._stream is None:
                    raise UsageError(f"no frames to write to {self.path}")
                for packet in self._stream.encode():  # flush delayed frames
                    self._container.mux(packet)
        except BaseException as e:
            error = e
        finally:
            self._container.close()
        if error is None:
            self._atomic.__exit__(None, None, None)  # rename into place
            return False
        self._atomic.__exit__(type(error), error, error.__traceback__)  # removes the temporary file
        if error is not exc:
            raise error
        return False


def write_mp4(
    path: str | Path, frames: Iterable[np.ndarray] | np.ndarray, fps: Fraction, crf: int = 18
) -> None:
    """Encode uint8 [H, W, 3] RGB frames as H.264 MP4 (yuv420p, +faststart), atomically.

    Odd sizes are padded by one edge pixel (H.264 4:2:0 needs even sides). crf 0-51, lower is better;
    17-23 is visually lossless to good.
    """
    with VideoWriter(path, fps, "mp4", crf) as w:
        for frame in frames:
            w.write(frame)


def write_alpha_video(
    path: str | Path, frames_rgba: Iterable[np.ndarray] | np.ndarray, fps: Fraction, kind: str
) -> None:
    """Encode uint8 [H, W, 4] RGBA frames (straight alpha) with alpha kept, atomically.

    kind "prores": ProRes 4444 .mov (prores_ks, yuva444p10le) for editing software;
    kind "webm": VP9 .webm (libvpx-vp9, yuva420p) for the web. Odd sizes are padded by one pixel.
    """
    if kind not in ("prores", "webm"):
        raise UsageError(f"unknown alpha video kind {kind!r}", "use prores or webm")
    with VideoWriter(path, fps, kind) as w:
        for frame in frames_rgba:
            w.write(frame)


def write_png_sequence(folder: str | Path, frames: Iterable[np.ndarray] | np.ndarray) -> list[Path]:
    """Write frames (uint8 [H, W, 3] RGB or [H, W, 4] RGBA, straight alpha) as folder/00000.png ...

    Each file is written atomically. Returns the paths in order.
    """
    return [save_png_frame(folder, i, frame) for i, frame in enumerate(frames)]


def save_png_frame(folder: str | Path, index: int, frame: np.ndarray) -> Path:
    """Write one frame of a PNG sequence, folder/{index:05d}.png (RGB or RGBA straight alpha), atomically."""
    from PIL import Image

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise UsageError(f"frame {index} must be uint8 [H, W, 3|4], got {frame.dtype} {list(frame.shape)}")
    path = Path(folder) / f"{index:05d}.png"
    mode = "RGBA" if frame.shape[2] == 4 else "RGB"
    save_image_atomic(Image.fromarray(np.ascontiguousarray(frame), mode), path, compress_level=1)
    return path
