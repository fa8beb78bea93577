"""Video out: encode MP4, ProRes 4444, VP9-alpha WebM and PNG sequences. Every write is atomic."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2l.errors import InputError, UsageError
from t2l.files import atomic_path

# format name -> (encoder, container suffix, pixel format); what `t2l render --format` can write
ENCODERS = {
    "mp4": ("libx264", ".mp4", "yuv420p"),
    "prores": ("prores_ks", ".mov", "yuva444p10le"),
    "webm": ("libvpx-vp9", ".webm", "yuva420p"),
}
_ALTERNATIVE = {"mp4": "png", "prores": "png (or webm)", "webm": "png (or prores)"}


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
        try:
            self._container.close()  # writes the trailer: can fail too (disk full)
        except BaseException as e:
            error = error or e
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
    from t2l.imageio import save_png

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise UsageError(f"frame {index} must be uint8 [H, W, 3|4], got {frame.dtype} {list(frame.shape)}")
    return save_png(frame, Path(folder) / f"{index:05d}.png", compress_level=1)
