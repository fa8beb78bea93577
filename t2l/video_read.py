"""Video in: decode a clip (or a folder of frames) to uint8 RGB arrays, or an alpha video to RGBA.

Decoding applies the container's display rotation (FFmpeg reports it but never applies it for us) and
keeps per-frame timestamps, so variable-frame-rate phone clips survive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2l.errors import InputError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_FPS = Fraction(30)  # a folder of frames carries no rate; we assume 30 fps


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
    header_frames: int | None = None  # frames the container announces (None: it does not say)
    # source frames that could be decoded, when decoding reached the end of the stream before the
    # requested frames were read (None: it stopped at max_frames, the rest was not looked at)
    decoded_frames: int | None = None
    decode_error: str | None = None  # why decoding stopped early (a damaged or truncated file)

    def short_of_header(self) -> int:
        """How many announced frames could not be decoded (0 when none are missing or it is unknown).

        A container's count can be an estimate from its duration, so one missing frame is tolerated
        unless decoding failed.
        """
        if self.decoded_frames is None or self.header_frames is None:
            return 0
        missing = self.header_frames - self.decoded_frames
        return missing if missing > (0 if self.decode_error else 1) else 0


def read_video(
    path: str | Path,
    start: int = 0,
    max_frames: int | None = None,
    stride: int = 1,
    long_side: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, VideoInfo]:
    """Decode a video file or a folder of images.

    Args:
        path: mp4/mov/avi/webm/mkv... or a folder of images (sorted naturally: 2.png before 10.png).
        start: first source frame to keep (0-based).
        max_frames: keep at most this many frames (None: all).
        stride: keep every `stride`-th frame from `start`.
        long_side: if given and smaller than the source's longer side, resize (area filter) so
            max(H, W) == long_side.
        progress: called with the number of frames kept so far after each kept frame.

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
        frames, info = _read_folder(path, start, max_frames, stride, long_side, progress)
    else:
        frames, info = _read_file(path, start, max_frames, stride, long_side, progress)
    if not frames:
        what = "no frames" if start == 0 else f"no frames from frame {start} on"
        raise InputError(f"{path}: {what}", "check the file, or lower --start")
    return np.stack(frames), info  # T, H, W, 3


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


def natural_key(p: Path) -> list:
    """Sort key for file names with numbers in them: frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=natural_key,
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


def _read_folder(
    folder: Path, start: int, max_frames: int | None, stride: int, long_side: int | None, progress=None
) -> tuple[list, VideoInfo]:
    """Frames resized one by one as they are read (memory: working size, not source size)."""
    frames, indices = [], []
    h, w = 0, 0  # source size
    for i, f in _select(enumerate(_folder_images(folder)), start, max_frames, stride):
        img = _load_image(f)
        if frames and img.shape[:2] != (h, w):
            raise InputError(
                f"frame {f.name} is {img.shape[1]}x{img.shape[0]} but earlier frames are {w}x{h}",
                "give all frames the same size",
            )
        h, w = img.shape[:2]
        frames.append(resize_long_side(img, long_side))
        indices.append(i)
        if progress is not None:
            progress(len(frames))
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


def _decode(container, stream, path: Path, status: dict | None = None) -> Iterator:
    """Decoded frames. A decoding error after some frames ends the stream quietly when `status` is
    given (its "error" says why: a truncated file still gives its first frames); before any frame, or
    without `status`, it raises InputError."""
    import av

    n = 0
    try:
        for frame in container.decode(stream):
            n += 1
            yield frame
    except av.error.FFmpegError as e:
        if status is None or n == 0:
            raise InputError(
                f"cannot decode {path}: {e}", "the file looks corrupt; re-export or re-download it"
            ) from None
        status["error"] = f"{type(e).__name__} after frame {n - 1}: {e}"


def _header_frames(container, stream, fps: Fraction | None) -> int | None:
    """Frame count the container announces: the stream's own count, else duration x rate."""
    if stream.frames:
        return int(stream.frames)
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000  # microseconds
    if duration and fps:
        return int(round(duration * float(fps)))
    return None


def _rotation(frame) -> int:
    """Counter-clockwise display rotation in degrees, snapped to a multiple of 90."""
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(rot / 90.0)) * 90 % 360


def _to_rgb(frame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")  # H, W, 3
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def _read_file(
    path: Path, start: int, max_frames: int | None, stride: int, long_side: int | None, progress=None
) -> tuple[list, VideoInfo]:
    """Frames resized one by one as they are decoded (memory: working size, not source size)."""
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames, times, indices = [], [], []
        rotation = 0
        h, w = 0, 0  # source size, after rotation
        status, seen = {}, [0]

        def counted():
            for i, frame in enumerate(_decode(container, stream, path, status)):
                seen[0] = i + 1
                yield i, frame

        for i, frame in _select(counted(), start, max_frames, stride):
            if not frames:
                rotation = _rotation(frame)
            rgb = _to_rgb(frame, rotation)
            if frames and rgb.shape[:2] != (h, w):  # the stream changed resolution mid-way
                raise InputError(
                    f"{path}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]} but earlier frames are {w}x{h}",
                    "re-encode the clip at one size (e.g. ffmpeg -i IN -vf scale=W:H OUT.mp4)",
                )
            h, w = rgb.shape[:2]
            frames.append(resize_long_side(rgb, long_side))
            times.append(frame.time)
            indices.append(i)
            if progress is not None:
                progress(len(frames))
        header = _header_frames(container, stream, Fraction(rate) if rate else None)
    finally:
        container.close()
    reached_end = max_frames is None or len(frames) < max_frames or bool(status)
    fps = Fraction(rate) if rate else _rate_from_times(times, stride)
    if fps <= 0:
        fps = FOLDER_FPS
    # Frames without a timestamp (rare raw streams) get one from the nominal rate.
    times = [float(t) if t is not None else float(i / fps) for t, i in zip(times, indices, strict=True)]
    info = VideoInfo(
        path=str(path),
        width=w,
        height=h,
        fps=fps,
        rotation=rotation,
        timestamps=tuple(times),
        is_folder=False,
        frame_indices=tuple(indices),
        header_frames=header,
        decoded_frames=seen[0] if reached_end else None,
        decode_error=status.get("error"),
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
