"""The atlas folder: what `t2l atlas` writes and `t2l render` / `t2l video` read (docs/atlas-format.md).

A folder is valid once atlas.json exists: it is written last (and removed first when a folder is
rewritten), so a crash halfway leaves a folder that load_atlas refuses instead of a mix of two runs.

Layout (format_version 1):
    atlas.json                 index: sizes, fps, source info, layers, files, meta
    frames/00000.png ...       original frames at working resolution (RGB)
    layers/<name>/uv.npy       float32 [T, H, W, 2] atlas coordinates of each frame pixel
    layers/<name>/atlas.png    RGBA atlas image; A = coverage
    alpha.npy                  float32 [T, H, W] foreground opacity (two-layer atlases)
    alpha/00000.png ...        the same as 8-bit greyscale, for viewing
    masks/00000.png ...        masks used for fitting (white = foreground)
    flow.npz                   forward/backward flow float16 px and validity masks
    model.pt                   fitted model state (to resume or refine)
    metrics.json               per-frame and mean reconstruction PSNR
    reconstruction/00000.png   the model's reconstruction (exact)
    reconstruction.mp4, checkerboard.mp4   previews to watch, written by the producer AFTER save_atlas
                               (t2l/atlas/previews.py) and listed in atlas.json once written
"""

from __future__ import annotations

import io
import re
import shutil
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2l import __version__
from t2l.errors import InputError
from t2l.files import atomic_path, torch_save_atomic, write_bytes_atomic, write_json_atomic
from t2l.video_read import VideoInfo

FORMAT_VERSION = 1


@dataclass
class AtlasLayer:
    name: str  # "bg" or "fg"
    uv: np.ndarray  # T, H, W, 2 float32: this layer's atlas coordinates per frame pixel
    texture: np.ndarray  # Ha, Wa, 4 uint8 RGBA atlas image; A = coverage (max alpha landing there)
    # (sx, ox, sy, oy): atlas-image pixel x = sx*u + ox, y = sy*v + oy. Continuous pixel coordinates:
    # pixel (i, j) covers [j, j+1) x [i, i+1), as grid_sample(align_corners=False) reads them.
    uv_to_px: tuple[float, float, float, float]


@dataclass
class AtlasData:
    frames: np.ndarray  # T, H, W, 3 uint8 original frames at working resolution
    info: VideoInfo  # source video (path, size, fps, rotation, timestamps)
    layers: list[AtlasLayer]  # ["bg"] or ["bg", "fg"]
    alpha: np.ndarray | None  # T, H, W float32 in [0,1] foreground opacity; None with 1 layer
    reconstruction: np.ndarray  # T, H, W, 3 uint8, the model's reconstruction
    psnr: list[float]  # per frame, dB
    masks: np.ndarray | None = None  # T, H, W bool, masks used (given or automatic)
    # "forward"/"backward": T-1, H, W, 2 float16 px; "forward_valid"/"backward_valid": T-1, H, W bool
    flow: dict[str, np.ndarray] | None = None
    model_state: dict | None = None  # fitted model state + its config, saved as model.pt
    meta: dict = field(default_factory=dict)  # fitting config, preset, seed, timings, versions
    gain: np.ndarray | None = None  # T, 3 float32 per-frame RGB exposure gain of the fit (None: all 1)

    def layer(self, name: str) -> AtlasLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)


def working_fps(info: VideoInfo) -> Fraction:
    """Rate of the decoded frames: the source rate divided by the stride they were taken with."""
    idx = info.frame_indices
    stride = idx[1] - idx[0] if len(idx) > 1 and idx[1] > idx[0] else 1
    return Fraction(info.fps) / stride


# ---- saving --------------------------------------------------------------------------------------


def save_atlas(folder: str | Path, data: AtlasData) -> None:
    """Write `data` into `folder` (created if needed). Every file is atomic; atlas.json comes last."""
    folder = Path(folder)
    _validate(data, where="AtlasData")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "atlas.json").unlink(missing_ok=True)  # the folder is invalid until we finish
    t, h, w = data.frames.shape[:3]
    files: dict[str, str] = {}
    _write_numbered(folder / "frames", data.frames, t)
    files["frames"] = "frames/"

    layers_json = []
    for lay in data.layers:
        base = Path("layers") / lay.name
        _save_npy(folder / base / "uv.npy", lay.uv.astype(np.float32, copy=False))
        _save_png(folder / base / "atlas.png", lay.texture)
        layers_json.append(
            {
                "name": lay.name,
                "uv": f"{base.as_posix()}/uv.npy",
                "texture": f"{base.as_posix()}/atlas.png",
                "texture_width": int(lay.texture.shape[1]),
                "texture_height": int(lay.texture.shape[0]),
                "uv_to_px": [float(v) for v in lay.uv_to_px],
            }
        )
    for stale in (folder / "layers").iterdir():
        if stale.is_dir() and stale.name not in {lay.name for lay in data.layers}:
            shutil.rmtree(stale)

    if data.alpha is not None:
        _save_npy(folder / "alpha.npy", data.alpha.astype(np.float32, copy=False))
        _write_numbered(folder / "alpha", np.round(np.clip(data.alpha, 0, 1) * 255).astype(np.uint8), t)
        files.update(alpha="alpha.npy", alpha_png="alpha/")
    else:
        _remove(folder / "alpha.npy", folder / "alpha")
    if data.masks is not None:
        _write_numbered(folder / "masks", data.masks.astype(np.uint8) * 255, t)
        files["masks"] = "masks/"
    else:
        _remove(folder / "masks")
    if data.flow is not None:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in data.flow.items()})
        write_bytes_atomic(folder / "flow.npz", buf.getvalue())
        files["flow"] = "flow.npz"
    else:
        _remove(folder / "flow.npz")
    if data.model_state is not None:
        torch_save_atomic(data.model_state, folder / "model.pt")
        files["model"] = "model.pt"
    else:
        _remove(folder / "model.pt")

    psnr = [float(p) for p in data.psnr]
    mean_psnr = float(np.mean(psnr)) if psnr else None
    metrics = {"psnr": psnr, "psnr_mean": mean_psnr}
    if data.gain is not None:
        metrics["gain"] = [[round(float(v), 5) for v in g] for g in data.gain]
    write_json_atomic(folder / "metrics.json", metrics)
    files["metrics"] = "metrics.json"

    fps = working_fps(data.info)
    _write_numbered(folder / "reconstruction", data.reconstruction, t)  # exact copy
    files["reconstruction"] = "reconstruction/"
    # previews (reconstruction.mp4, checkerboard.mp4) are the producer's, after this: t2l/atlas/previews.py
    _remove(folder / "reconstruction.mp4", folder / "checkerboard.mp4")  # stale ones would show another fit

    index = {
        "format_version": FORMAT_VERSION,
        "t2l_version": __version__,
        "frames": int(t),
        "width": int(w),
        "height": int(h),
        "fps": _fraction_str(fps),
        "source": _info_to_json(data.info),
        "layers": layers_json,
        "files": files,
        "psnr_mean": mean_psnr,
        "meta": data.meta,
    }
    write_json_atomic(folder / "atlas.json", index)


def _validate(data: AtlasData, where: str) -> None:
    if data.frames.ndim != 4 or data.frames.shape[-1] != 3 or data.frames.dtype != np.uint8:
        raise InputError(
            f"{where}: frames must be uint8 [T, H, W, 3], got {data.frames.dtype} {list(data.frames.shape)}"
        )
    t, h, w = data.frames.shape[:3]
    names = [lay.name for lay in data.layers]
    if names not in (["bg"], ["bg", "fg"]):
        raise InputError(f"{where}: layers must be ['bg'] or ['bg', 'fg'], got {names}")
    for lay in data.layers:
        if lay.uv.shape != (t, h, w, 2):
            raise InputError(f"{where}: layer {lay.name} uv is {list(lay.uv.shape)}, expected {[t, h, w, 2]}")
        if lay.texture.ndim != 3 or lay.texture.shape[2] != 4 or lay.texture.dtype != np.uint8:
            raise InputError(
                f"{where}: layer {lay.name} texture must be uint8 [Ha, Wa, 4], got {list(lay.texture.shape)}"
            )
    if (data.alpha is None) != (len(data.layers) == 1):
        raise InputError(f"{where}: alpha must be given exactly when there is a foreground layer")
    if data.alpha is not None and data.alpha.shape != (t, h, w):
        raise InputError(f"{where}: alpha is {list(data.alpha.shape)}, expected {[t, h, w]}")
    if data.reconstruction.shape != (t, h, w, 3):
        raise InputError(
            f"{where}: reconstruction is {list(data.reconstruction.shape)}, expected {[t, h, w, 3]}"
        )
    if data.masks is not None and data.masks.shape != (t, h, w):
        raise InputError(f"{where}: masks are {list(data.masks.shape)}, expected {[t, h, w]}")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from t2l.imageio import save_png

    save_png(arr, path, compress_level=1)


def _write_numbered(folder: Path, frames: np.ndarray, count: int) -> None:
    """folder/00000.png ... (RGB, RGBA or greyscale), removing numbered files left by a longer clip."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _save_png(folder / f"{i:05d}.png", frames[i])
    remove_numbered_after(folder, count)


def remove_numbered_after(folder: Path, count: int) -> None:
    """Delete 00042.png-style frames numbered >= count (left by an earlier, longer clip or render)."""
    for p in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
        if int(p.stem) >= count:
            p.unlink()


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _fraction_str(x: Fraction) -> str:
    x = Fraction(x)
    return f"{x.numerator}/{x.denominator}"


def _info_to_json(info: VideoInfo) -> dict:
    d = asdict(info)
    d["fps"] = _fraction_str(info.fps)
    d["timestamps"] = [float(t) for t in info.timestamps]
    d["frame_indices"] = [int(i) for i in info.frame_indices]
    return d


def _info_from_json(d: dict) -> VideoInfo:
    return VideoInfo(
        path=str(d["path"]),
        width=int(d["width"]),
        height=int(d["height"]),
        fps=Fraction(d["fps"]),
        rotation=int(d.get("rotation", 0)),
        timestamps=tuple(float(t) for t in d.get("timestamps", ())),
        is_folder=bool(d.get("is_folder", False)),
        frame_indices=tuple(int(i) for i in d.get("frame_indices", ())),
    )


# ---- loading -------------------------------------------------------------------------------------


def load_atlas(folder: str | Path, with_frames: bool = True) -> AtlasData:
    """Read an atlas folder written by save_atlas.

    with_frames=False skips reading frames/ and reconstruction/ (the slow part): both come back
    as empty arrays of shape [0, H, W, 3].

    Raises:
        InputError naming the missing or wrong-shaped file and the fix (re-run `t2l atlas`).
    """
    import json

    folder = Path(folder)
    index_path = folder / "atlas.json"
    if not index_path.is_file():
        raise InputError(
            f"{folder} is not an atlas folder (no atlas.json)", "create one with: t2l atlas VIDEO -o DIR"
        )
    try:
        index = json.loads(index_path.read_text())
        version = int(index["format_version"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{index_path} is unreadable ({e})", _redo(index_path.parent)) from None
    if version != FORMAT_VERSION:
        raise InputError(
            f"{index_path} has format_version {version}; this t2l reads {FORMAT_VERSION}",
            "re-run t2l atlas with this version, or use the t2l version that wrote it",
        )
    try:
        t, h, w = int(index["frames"]), int(index["height"]), int(index["width"])
        info = _info_from_json(index["source"])
        files = index["files"]
        layer_entries = index["layers"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{index_path} lacks field {e}", _redo(folder)) from None

    layers = []
    for entry in layer_entries:
        uv = _load_npy(folder, entry["uv"], (t, h, w, 2))
        tex = _load_png(
            folder / entry["texture"], (int(entry["texture_height"]), int(entry["texture_width"]), 4)
        )
        layers.append(AtlasLayer(entry["name"], uv, tex, tuple(float(v) for v in entry["uv_to_px"])))
    alpha = _load_npy(folder, files["alpha"], (t, h, w)) if "alpha" in files else None
    masks = None
    if "masks" in files:
        masks = np.stack(
            [_load_png(folder / files["masks"] / f"{i:05d}.png", (h, w)) > 127 for i in range(t)]
        )
    flow = None
    if "flow" in files:
        flow = _load_flow(folder / files["flow"], (t - 1, h, w))
    model_state = load_model_state(folder / files["model"]) if "model" in files else None
    metrics = _load_json(folder / files.get("metrics", "metrics.json"))
    psnr = [float(p) for p in metrics.get("psnr", [])]
    gain = None
    if metrics.get("gain") is not None:
        gain = np.asarray(metrics["gain"], np.float32)
        if gain.shape != (t, 3) or not np.isfinite(gain).all():
            raise InputError(f"{folder / 'metrics.json'} has a gain that is not {t} finite RGB triples",
                             _redo(folder))  # fmt: skip
        gain = np.maximum(gain, 0)

    if with_frames:
        frames = np.stack([_load_png(folder / files["frames"] / f"{i:05d}.png", (h, w, 3)) for i in range(t)])
        recon = np.stack(
            [_load_png(folder / files["reconstruction"] / f"{i:05d}.png", (h, w, 3)) for i in range(t)]
        )
    else:
        frames = np.zeros((0, h, w, 3), np.uint8)
        recon = np.zeros((0, h, w, 3), np.uint8)
    return AtlasData(
        frames=frames,
        info=info,
        layers=layers,
        alpha=alpha,
        reconstruction=recon,
        psnr=psnr,
        masks=masks,
        flow=flow,
        model_state=model_state,
        meta=dict(index.get("meta") or {}),
        gain=gain,
    )


def _redo(folder: Path) -> str:
    return f"re-run: t2l atlas VIDEO -o {folder} --overwrite"


def _missing(path: Path) -> InputError:
    return InputError(f"atlas file missing: {path}", _redo(_atlas_root(path)))


def _atlas_root(path: Path) -> Path:
    for p in path.parents:
        if (p / "atlas.json").exists():
            return p
    return path.parent


def _wrong_shape(path: Path, got, expected) -> InputError:
    return InputError(f"{path} has shape {list(got)}, expected {list(expected)}", _redo(_atlas_root(path)))


def _load_npy(folder: Path, rel: str, shape: tuple) -> np.ndarray:
    path = folder / rel
    if not path.is_file():
        raise _missing(path)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read {path}: {e}", _redo(folder)) from None
    if arr.shape != shape:
        raise _wrong_shape(path, arr.shape, shape)
    return np.array(arr, dtype=np.float32)  # a writable copy in memory


def _load_png(path: Path, shape: tuple) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise _missing(path)
    try:
        with Image.open(path) as im:
            mode = "L" if len(shape) == 2 else {3: "RGB", 4: "RGBA"}[shape[2]]
            arr = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read {path}: {e}", _redo(_atlas_root(path))) from None
    if arr.shape != shape:
        raise _wrong_shape(path, arr.shape, shape)
    return arr


def _load_flow(path: Path, shape: tuple) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise _missing(path)
    with np.load(path) as z:
        flow = {k: z[k] for k in z.files}
    for k, v in flow.items():
        if v.shape[:3] != shape:
            raise InputError(
                f"{path}: {k} has shape {list(v.shape)}, expected {list(shape)} first",
                _redo(_atlas_root(path)),
            )
    return flow


def load_model_state(path: Path) -> dict:
    """model.pt (the fit state) without unpickling anything but tensors, numpy arrays and plain values."""
    import pickle

    import torch

    if not path.is_file():
        raise _missing(path)
    # An atlas folder may come from someone else: never unpickle arbitrary objects. Beyond tensors and
    # plain values, t2l's fit state holds numpy arrays (the packed masks), so allow exactly those.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever numpy keeps it
    arrays = [reconstruct, np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"}]
    try:
        with torch.serialization.safe_globals(arrays):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise InputError(
            f"{path} holds objects other than tensors, arrays and plain values"
            + (f" ({found.group(1)})" if found else "")
            + "; t2l does not unpickle them",
            "delete model.pt (only --resume needs it) if the rest of the atlas is fine, or "
            + _redo(_atlas_root(path)),
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise InputError(f"cannot read {path}: {e}", _redo(_atlas_root(path))) from None


def _load_json(path: Path) -> dict:
    import json

    if not path.is_file():
        raise _missing(path)
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"cannot read {path}: {e}", _redo(_atlas_root(path))) from None
