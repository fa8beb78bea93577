"""Reading and writing still images: validate inputs at the boundary, write rounded 8-bit PNGs.

Inputs are never modified. EXIF orientation is applied; animated, CMYK, 16-bit, greyscale and
transparent inputs are converted to 8-bit RGB with a one-line note saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from t2l.errors import InputError
from t2l.files import save_image_atomic

Image.MAX_IMAGE_PIXELS = 200_000_000  # large photos are fine; decompression bombs are not


def read_image(path: str | Path) -> tuple[Image.Image, list[str]]:
    """Open an image file as 8-bit RGB (EXIF orientation applied). Returns (image, conversion notes)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist", "check the path")
    if path.is_dir():
        raise InputError(f"input {path} is a folder, not an image", "pass an image file (PNG, JPEG, ...)")
    notes: list[str] = []
    try:
        im = _open_first_frame(path, notes)
    except UnidentifiedImageError:
        raise InputError(
            f"input {path} is not an image Pillow can read", "pass a PNG, JPEG, WebP or TIFF"
        ) from None
    except PermissionError:
        raise InputError(
            f"input {path} is not readable (permission denied)", "check its permissions"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(
            f"input {path} is corrupt or truncated ({e})", "re-export or re-download it"
        ) from None
    return _to_rgb8(im, path.name, notes), notes


def _open_first_frame(path: Path, notes: list[str]) -> Image.Image:
    """The first frame, loaded and EXIF-oriented; a file that fails to load is closed, not left to GC
    (a batch over many broken files would hold them all open)."""
    im = Image.open(path)
    try:
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"{path.name} is animated ({im.n_frames} frames); using the first frame")
            im.seek(0)
        im.load()
        out = ImageOps.exif_transpose(im)  # a copy: the source (an animated one keeps its file open) can go
    except BaseException:
        im.close()
        raise
    if out is not im:
        im.close()
    return out


def _to_rgb8(im: Image.Image, name: str, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode == "F":
            scale = 1.0 if a.max() <= 1.0 else 255.0
        a8 = np.clip(np.round(a / scale * 255.0), 0, 255).astype(np.uint8)
        notes.append(f"{name} is {'16-bit' if scale == 65535.0 else mode} greyscale; converted to 8-bit RGB")
        return Image.fromarray(a8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        notes.append(f"{name} has an alpha channel; flattened onto white")
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append(f"{name} is CMYK; converted to RGB")
    elif mode in ("L", "1"):
        notes.append(f"{name} is greyscale; converted to RGB")
    elif mode not in ("RGB", "P"):
        notes.append(f"{name} is {mode}; converted to RGB")
    return im.convert("RGB")


def resize_short(im: Image.Image, short: int) -> Image.Image:
    """Resize so the shorter side is `short` (PIL bilinear, antialiased); aspect kept."""
    w, h = im.size
    s = short / min(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return im if size == im.size else im.resize(size, Image.BILINEAR)


def pil_to_tensor(im: Image.Image):
    """PIL RGB -> float tensor [1,3,H,W] in [0,1]."""
    import torch

    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # H, W, 3
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def to_uint8(x) -> np.ndarray:
    """Tensor [C,H,W] or [1,C,H,W] in [0,1] -> uint8 array [H,W,C], ROUNDED (not truncated)."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    return np.clip(np.round(x.permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path, compress_level: int | None = None) -> Path:
    """Write an 8-bit array [H,W] (L), [H,W,3] (RGB) or [H,W,4] (RGBA, straight alpha) atomically.

    compress_level: zlib level 0-9 (None: Pillow's default); 1 for bulk frames (fast, larger files).
    """
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.shape[2] if array.ndim == 3 else 2]
    kwargs = {} if compress_level is None else {"compress_level": compress_level}
    save_image_atomic(Image.fromarray(np.ascontiguousarray(array), mode), path, **kwargs)
    return Path(path)


def composite_uint8(edit_rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Straight-alpha composite in 8-bit: round((a*e + (255-a)*bg) / 255); equals bg exactly where a == 0."""
    a = edit_rgba[..., 3:4].astype(np.uint32)
    out = (a * edit_rgba[..., :3] + (255 - a) * background[..., :3].astype(np.uint32) + 127) // 255
    return out.astype(np.uint8)
