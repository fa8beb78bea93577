"""Import a pretrained Neural Layered Atlases (NLA, Kasten et al. 2021) checkpoint as an atlas folder.

NLA checkpoints (what Text2LIVE's video examples ship) hold four MLP state dicts; we rebuild the
MLPs, evaluate them on every pixel of the clip's frames and rasterise the atlases, so the result is an
ordinary AtlasData that `t2l render` and `t2l video` use like a fitted one.

Architecture (docs/atlas-format.md; from the NLA paper and public code; depth, width, frequencies and
re-injection points are inferred from the state dict itself so other NLA configurations load too):
    every MLP: Linear layers `hidden.{i}` (ReLU between, tanh after the last), width 256
    fg mapping  model_F_mapping1_state_dict  (x, y, t) -> uv   6 layers, no positional encoding
    bg mapping  model_F_mapping2_state_dict  (x, y, t) -> uv   4 layers, no positional encoding
    atlas       F_atlas_state_dict           uv -> RGB         8 layers, 10 frequencies, encoding
                                                               re-injected before layers 4 and 7
    alpha       model_F_alpha_state_dict     (x, y, t) -> a    8 layers, 5 frequencies
Positional encoding of a [N, d] input with frequencies b_k = 2^k * pi, k < F: for each k in turn,
sin(b_k x_1..d) then cos(b_k x_1..d), i.e. 2*d*F features ordered frequency-major.
Coordinates: x/(D/2) - 1, y/(D/2) - 1, f/(T/2) - 1 with D the longer frame side and T the frame
count the model was trained on; fg samples the atlas at uv*0.5 + 0.5, bg at uv*0.5 - 0.5;
alpha = 0.99 * (tanh + 1)/2 + 0.001; RGB = (tanh + 1)/2.

The layout was read in the public NLA code; the import was never run on a real NLA checkpoint (none
is available offline): the tests build checkpoints of the documented shapes with random weights.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from t2l.atlas.coords import texel_centres, texel_index
from t2l.atlas.folder import AtlasData, AtlasLayer, save_atlas
from t2l.errors import InputError, UsageError
from t2l.video_read import VideoInfo

NLA_KEYS = {  # our name -> checkpoint key
    "fg_mapping": "model_F_mapping1_state_dict",
    "bg_mapping": "model_F_mapping2_state_dict",
    "atlas": "F_atlas_state_dict",
    "alpha": "model_F_alpha_state_dict",
}
# What the original NLA uses: (inputs, outputs, layers, frequencies, skip layers); documented defaults
NLA_DEFAULTS = {
    "fg_mapping": (3, 2, 6, 0, ()),
    "bg_mapping": (3, 2, 4, 0, ()),
    "atlas": (2, 3, 8, 10, (4, 7)),
    "alpha": (3, 1, 8, 5, ()),
}


@dataclass(frozen=True)
class MLPSpec:
    inputs: int  # d: coordinate dimensions (2 for uv, 3 for x, y, t)
    outputs: int
    width: int = 256  # hidden features
    layers: int = 8  # Linear layers, the last one included
    freqs: int = 0  # positional-encoding frequencies (0: raw coordinates)
    skips: tuple[int, ...] = ()  # layers whose input is [hidden, encoding]

    @property
    def encoding_dim(self) -> int:
        return 2 * self.inputs * self.freqs if self.freqs else self.inputs


def build_mlp(spec: MLPSpec):
    """The NLA implicit MLP for `spec` (a torch.nn.Module; input [N, d] in [-1, 1], output [N, outputs]
    in [-1, 1] after tanh)."""
    import torch
    from torch import nn

    class ImplicitMLP(nn.Module):
        def __init__(self, spec: MLPSpec):
            super().__init__()
            self.spec = spec
            enc = spec.encoding_dim
            dims_in = [enc] + [spec.width + (enc if i in spec.skips else 0) for i in range(1, spec.layers)]
            dims_out = [spec.width] * (spec.layers - 1) + [spec.outputs]
            self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
            freqs = torch.tensor([(2.0**k) * math.pi for k in range(spec.freqs)])
            self.register_buffer("b", freqs, persistent=False)  # not in NLA's state dicts

        def encode(self, x: torch.Tensor) -> torch.Tensor:  # N, d -> N, 2*d*F
            if not self.spec.freqs:
                return x
            proj = x[:, :, None] * self.b  # N, d, F
            feats = torch.cat([proj.sin(), proj.cos()], 1)  # N, 2d, F
            return feats.transpose(1, 2).reshape(x.shape[0], -1)  # frequency-major

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            enc = self.encode(x)
            h = enc
            for i, layer in enumerate(self.hidden):
                if i > 0:
                    h = torch.relu(h)
                if i in self.spec.skips:
                    h = torch.cat([h, enc], 1)
                h = layer(h)
            return torch.tanh(h)

    return ImplicitMLP(spec)


def infer_spec(name: str, state: dict) -> MLPSpec:
    """Read an NLA MLP's shape from its state dict; InputError naming the key if it is not one."""
    inputs, outputs = NLA_DEFAULTS[name][:2]
    key = NLA_KEYS[name]
    idx = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"hidden\.(\d+)\.weight", k))})
    if not idx or idx != list(range(len(idx))):
        raise InputError(
            f"{key} has no hidden.0..N Linear layers (keys: {', '.join(list(state)[:6])}...)",
            "pass a checkpoint saved by the NLA code (layered-neural-atlases)",
        )
    w = [tuple(state[f"hidden.{i}.weight"].shape) for i in idx]
    width, first_in = w[0]
    if first_in == inputs:
        freqs = 0
    elif first_in % (2 * inputs) == 0:
        freqs = first_in // (2 * inputs)
    else:
        raise InputError(
            f"{key}: first layer takes {first_in} features; expected {inputs} coordinates or 2*{inputs}*F encodings",
            "this is not an NLA checkpoint of the documented layout (docs/atlas-format.md)",
        )
    skips = tuple(i for i in range(1, len(w)) if w[i][1] == width + first_in)
    spec = MLPSpec(inputs, outputs, width, len(w), freqs, skips)
    _check_shapes(name, spec, state)
    return spec


def _check_shapes(name: str, spec: MLPSpec, state: dict) -> None:
    expected = {k: tuple(v.shape) for k, v in build_mlp(spec).state_dict().items()}
    for k, shape in expected.items():
        got = tuple(state[k].shape) if k in state else None
        if got != shape:
            raise InputError(
                f"{NLA_KEYS[name]}: {k} is {list(got) if got else 'missing'}, expected {list(shape)} for the assumed "
                f"NLA layout ({spec.layers} layers, width {spec.width}, {spec.freqs} frequencies, skips {list(spec.skips)})",
                "see docs/atlas-format.md; the checkpoint may come from a modified NLA",
            )
    extra = set(state) - set(expected) - {"b"}
    if extra:
        raise InputError(
            f"{NLA_KEYS[name]} has unexpected keys {sorted(extra)[:4]}", "see docs/atlas-format.md"
        )


def load_nla(checkpoint: str | Path) -> tuple[dict, dict]:
    """Rebuild the four NLA MLPs from a checkpoint: ({name: module in eval mode}, info dict)."""
    import pickle

    import torch

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"NLA checkpoint not found: {checkpoint}", "check the path")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{checkpoint} holds more than tensors and plain values ({str(e).splitlines()[0]})",
            "re-save it with only the state dicts; t2l never unpickles arbitrary objects",
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise InputError(
            f"cannot read NLA checkpoint {checkpoint}: {e}", "check that the file is complete"
        ) from None
    if not isinstance(ckpt, dict):
        raise InputError(
            f"{checkpoint} is not an NLA checkpoint (not a dict)", "pass NLA's 'checkpoint' file"
        )
    missing = [k for k in NLA_KEYS.values() if k not in ckpt]
    if missing:
        raise InputError(
            f"{checkpoint} lacks {', '.join(missing)}",
            "pass the checkpoint NLA writes (with F_atlas_state_dict and model_F_*_state_dict)",
        )
    models, specs = {}, {}
    for name, key in NLA_KEYS.items():
        state = ckpt[key]
        spec = infer_spec(name, state)
        model = build_mlp(spec)
        model.load_state_dict({k: v for k, v in state.items() if k != "b"})
        models[name] = model.eval()
        specs[name] = {**asdict(spec), "skips": list(spec.skips)}  # JSON-ready
    iteration = ckpt.get("iteration")
    return models, {"iteration": int(iteration) if iteration is not None else None, "architecture": specs}


def _run(model, x, batch: int, device):
    """Evaluate `model` on [N, d] numpy coordinates in batches -> [N, outputs] float32 numpy."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch]).to(device)
            out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.spec.outputs), np.float32)


def import_nla(
    checkpoint: str | Path,
    frames_path: str | Path | np.ndarray,
    out: str | Path | VideoInfo | None = None,
    *,
    info: VideoInfo | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    atlas_size: int = 1000,
    device: str = "cpu",
    batch: int = 65536,
    progress: Callable[[str, int, int], None] | None = None,
) -> AtlasData:
    """Turn an NLA checkpoint plus the frames it was trained on into AtlasData (saved to `out` if given).

    Args:
        checkpoint: NLA's torch file (F_atlas_state_dict, model_F_mapping1/2_state_dict,
            model_F_alpha_state_dict, iteration).
        frames_path: the video or frame folder the model was trained on: same frames, same order.
            The frame count T and the longer side D enter the coordinate normalisation. Frames already
            decoded (uint8 [T, H, W, 3]) are accepted too, with their VideoInfo as `info` (or in the
            place of `out`: import_nla(ckpt, frames, info)).
        out: atlas folder to write (None: only return the data).
        max_frames: use only the first frames. T in the time normalisation is the number of frames
            used, so pass the count the model was trained on (NLA trains on the first frames of a clip).
        size: (width, height) to resize the frames to, e.g. (768, 432) as NLA trains.
        atlas_size: side of both atlas images in px (fg over [0,1]^2; bg over the square bounding box
            of the used background uv).
        progress: called as progress(stage, done, total) for "frames" and "atlas" stages.

    Returns:
        AtlasData with layers bg and fg, alpha, reconstruction and per-frame PSNR; model_state None
        (NLA weights are not a t2l fitting state); meta records the source and the architecture.
    """
    import torch

    from t2l.device import resolve_device
    from t2l.video_read import read_video

    t0 = time.perf_counter()
    dev = resolve_device(device)
    models, nla_info = load_nla(checkpoint)
    for m in models.values():
        m.to(dev)
    if isinstance(out, VideoInfo):
        info, out = out, None
    if isinstance(frames_path, np.ndarray):
        if info is None:
            raise UsageError("import_nla got decoded frames without their VideoInfo", "pass info=...")
        frames = frames_path[:max_frames] if max_frames else frames_path
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UsageError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    else:
        # decode already shrunk (frame by frame) so memory follows `size`, not the source resolution
        frames, info = read_video(frames_path, max_frames=max_frames, long_side=max(size) if size else None)
    if size is not None:
        import cv2

        frames = np.stack([cv2.resize(f, tuple(size), interpolation=cv2.INTER_AREA) for f in frames])
    t_count, h, w = frames.shape[:3]
    d = max(h, w)
    report = progress or (lambda *_: None)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    uv_fg = np.zeros((t_count, h, w, 2), np.float32)
    uv_bg = np.zeros((t_count, h, w, 2), np.float32)
    alpha = np.zeros((t_count, h, w), np.float32)
    recon = np.zeros((t_count, h, w, 3), np.uint8)
    psnr = []
    for t in range(t_count):
        # NLA's normalisation: pixel indices (column x, row y) and frame index f
        xyt = np.stack(
            [xs / (d / 2) - 1, ys / (d / 2) - 1, np.full_like(xs, t / (t_count / 2) - 1)], -1
        ).reshape(-1, 3)
        fg = _run(models["fg_mapping"], xyt, batch, dev)  # HW, 2 in [-1, 1]
        bg = _run(models["bg_mapping"], xyt, batch, dev)
        a = 0.99 * (_run(models["alpha"], xyt, batch, dev)[:, 0] + 1) * 0.5 + 0.001  # HW
        rgb_fg = (_run(models["atlas"], fg * 0.5 + 0.5, batch, dev) + 1) * 0.5  # HW, 3 in [0, 1]
        rgb_bg = (_run(models["atlas"], bg * 0.5 - 0.5, batch, dev) + 1) * 0.5
        rec = a[:, None] * rgb_fg + (1 - a[:, None]) * rgb_bg
        uv_fg[t], uv_bg[t] = fg.reshape(h, w, 2), bg.reshape(h, w, 2)
        alpha[t] = a.reshape(h, w)
        recon[t] = np.round(np.clip(rec, 0, 1) * 255).reshape(h, w, 3).astype(np.uint8)
        mse = float(np.mean((rec.reshape(h, w, 3) - frames[t] / 255.0) ** 2))
        psnr.append(10 * math.log10(1 / max(mse, 1e-10)))
        report("frames", t + 1, t_count)

    n = int(atlas_size)
    # fg atlas: sample space [0, 1]^2 = uv*0.5 + 0.5 -> pixel = 0.5*n*u + 0.5*n
    fg_px = (0.5 * n, 0.5 * n, 0.5 * n, 0.5 * n)
    # bg atlas: square bounding box (origin lo, side s) of the used sample space uv*0.5 - 0.5
    used = uv_bg.reshape(-1, 2) * 0.5 - 0.5
    lo, hi = used.min(0), used.max(0)
    side = float(max(hi - lo)) or 1e-3
    centre = (lo + hi) / 2
    lo = centre - side / 2
    k = n / side
    bg_px = (0.5 * k, (-0.5 - float(lo[0])) * k, 0.5 * k, (-0.5 - float(lo[1])) * k)

    textures = {}
    for i, (name, px, shift) in enumerate((("fg", fg_px, 0.5), ("bg", bg_px, -0.5))):
        # the atlas MLP at every texel centre, in its sample space uv*0.5 +- 0.5
        samples = (texel_centres((n, n), px).reshape(-1, 2) * 0.5 + shift).astype(np.float32)
        rgb = (_run(models["atlas"], samples, batch, dev) + 1) * 0.5
        textures[name] = np.round(np.clip(rgb, 0, 1) * 255).reshape(n, n, 3).astype(np.uint8)
        report("atlas", i + 1, 2)

    layers = []
    for name, uv, px, weight in (("bg", uv_bg, bg_px, 1 - alpha), ("fg", uv_fg, fg_px, alpha)):
        cover = _coverage(uv, px, weight, n)
        tex = np.concatenate([textures[name], np.round(cover * 255).astype(np.uint8)[..., None]], -1)
        layers.append(AtlasLayer(name, uv, tex, px))

    mean_psnr = float(np.mean(psnr))
    meta = {
        "source": "nla",
        "checkpoint": str(Path(checkpoint).absolute()),
        "iteration": nla_info["iteration"],
        "architecture": nla_info["architecture"],
        "atlas_size": n,
        "device": str(dev),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if mean_psnr < 20:
        meta["warning"] = (
            f"reconstruction PSNR is {mean_psnr:.1f} dB: the frames may not be the ones the model was trained on "
            "(count, order or size; NLA trains at 768x432)"
        )
    data = AtlasData(
        frames=frames,
        info=info,
        layers=layers,
        alpha=alpha,
        reconstruction=recon,
        psnr=psnr,
        masks=None,
        flow=None,
        model_state=None,
        meta=meta,
    )
    if out is not None:
        save_atlas(out, data)
    return data


def _coverage(uv: np.ndarray, uv_to_px, weight: np.ndarray, n: int) -> np.ndarray:
    """Max of `weight` [T, H, W] over the frame pixels landing in each atlas pixel -> [n, n] in [0, 1]."""
    xy = texel_index(uv, uv_to_px)  # T, H, W, 2
    px, py = xy[..., 0].ravel(), xy[..., 1].ravel()
    ok = (px >= 0) & (px < n) & (py >= 0) & (py < n)
    cover = np.zeros(n * n, np.float32)
    np.maximum.at(cover, py[ok] * n + px[ok], weight.ravel()[ok].astype(np.float32))
    return cover.reshape(n, n)
