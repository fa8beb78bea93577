"""Augmentations: the internal dataset (one random crop of the input per step) and CLIP views.

All randomness comes from a CPU `torch.Generator` passed in, so a seed fixes every draw and the
generator's state can be checkpointed. Ops are torch-only, batched and differentiable (the CLIP
views of the generator's output are back-propagated through): every view's crop, flip, affine and
perspective are composed into one 3x3 homography and applied with one `grid_sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))  # RGB -> YIQ rows

# Constants that every step would otherwise rebuild (and, on a GPU, copy to the device): built once
# per (dtype, device) or view size. Small tensors; never part of a graph.
_colour_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_grid_cache: dict[tuple, torch.Tensor] = {}


def _colour_consts(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(luma weights [1,3,1,1], YIQ matrix [3,3], its inverse [3,3]) as dtype on device, built once."""
    key = (dtype, device)
    if key not in _colour_cache:
        with torch.inference_mode(False), torch.no_grad():
            m = torch.tensor(_YIQ, dtype=dtype, device=device)
            gray = torch.tensor(_GRAY, dtype=dtype, device=device).view(1, 3, 1, 1)
            _colour_cache[key] = (gray, m, torch.linalg.inv(m))
    return _colour_cache[key]


def _pixel_centres(vh: int, vw: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Homogeneous normalised pixel centres of a vh x vw view, [vh*vw, 3] (x, y, 1), row-major."""
    key = (vh, vw, dtype, device)
    if key not in _grid_cache:
        with torch.inference_mode(False), torch.no_grad():
            ys = (torch.arange(vh, device=device, dtype=dtype) + 0.5) / vh * 2 - 1
            xs = (torch.arange(vw, device=device, dtype=dtype) + 0.5) / vw * 2 - 1
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            _grid_cache[key] = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(-1, 3)  # hw, 3
    return _grid_cache[key]


# ---- internal dataset: one augmented crop of the input per step ------------------------------


@dataclass(frozen=True)
class CropConfig:
    jitter_p: float = 0.1  # probability of colour jitter on the crop
    jitter: float = 0.1  # brightness/contrast/saturation/hue strength
    flip_p: float = 0.5  # horizontal flip probability
    scale: tuple[float, float] = (0.8, 1.2)  # aspect-preserving rescale factor range
    crop: tuple[float, float] = (0.85, 1.0)  # crop side fraction range (same for both sides)


@dataclass(frozen=True)
class CropParams:
    """Where one training crop comes from: rescale to (sh, sw), flip, then crop [top:top+h, left:left+w]."""

    sh: int
    sw: int
    flip: bool
    top: int
    left: int
    h: int
    w: int
    jitter: tuple[float, float, float, float] | None  # brightness, contrast, saturation, hue or None


def _uniform(g: torch.Generator, lo: float, hi: float, n: int | None = None) -> torch.Tensor | float:
    r = torch.rand(n if n is not None else 1, generator=g, dtype=torch.float64) * (hi - lo) + lo
    return r if n is not None else float(r[0])


def _jitter_factors(g: torch.Generator, strength: float) -> tuple[float, float, float, float]:
    s = strength
    return (
        _uniform(g, 1 - s, 1 + s),
        _uniform(g, 1 - s, 1 + s),
        _uniform(g, 1 - s, 1 + s),
        _uniform(g, -s, s),
    )


def sample_crop(g: torch.Generator, H: int, W: int, cfg: CropConfig, min_side: int) -> CropParams:
    """Draw one crop of an H x W image; both crop sides stay >= min_side (the generator's minimum)."""
    jitter = _jitter_factors(g, cfg.jitter) if _uniform(g, 0, 1) < cfg.jitter_p else None
    flip = _uniform(g, 0, 1) < cfg.flip_p
    s = _uniform(g, *cfg.scale)
    s = max(s, min_side / min(H, W))  # never rescale below what the generator accepts
    sh, sw = max(min_side, round(H * s)), max(min_side, round(W * s))
    f = _uniform(g, *cfg.crop)
    h, w = min(sh, max(min_side, round(sh * f))), min(sw, max(min_side, round(sw * f)))
    top = int(torch.randint(0, sh - h + 1, (1,), generator=g))
    left = int(torch.randint(0, sw - w + 1, (1,), generator=g))
    return CropParams(sh, sw, flip, top, left, h, w, jitter)


def apply_crop(x: torch.Tensor, p: CropParams, jitter: bool = True) -> torch.Tensor:
    """Apply crop geometry (and colour jitter if `jitter`) to x [B,C,H,W] -> [B,C,p.h,p.w].

    Use jitter=False for maps that follow the image geometry (relevancy, alpha).
    """
    if x.shape[-2:] != (p.sh, p.sw):
        x = F.interpolate(x, size=(p.sh, p.sw), mode="bilinear", align_corners=False, antialias=True)
    if p.flip:
        x = x.flip(-1)
    x = x[..., p.top : p.top + p.h, p.left : p.left + p.w]
    if jitter and p.jitter is not None:
        b, c, s, h = (torch.tensor([v], dtype=x.dtype, device=x.device) for v in p.jitter)
        x = color_jitter(x, b, c, s, h)
    return x


# ---- colour ops (differentiable, per-sample factors) -----------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """x [B,3,H,W] in [0,1] -> luma [B,1,H,W]."""
    w = _colour_consts(x.dtype, x.device)[0]
    return (x * w).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Jitter x [B,3,H,W] in [0,1] with per-sample factors [B] (or [1]); hue is a shift in turns [-0.5,0.5]."""
    v = lambda t: t.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    x = (x * v(brightness)).clamp(0, 1)
    mean = grayscale(x).mean((-2, -1), keepdim=True)
    x = ((x - mean) * v(contrast) + mean).clamp(0, 1)
    gray = grayscale(x)
    x = ((x - gray) * v(saturation) + gray).clamp(0, 1)
    # hue: rotate the chroma plane of YIQ
    _, yiq, yiq_inv = _colour_consts(x.dtype, x.device)
    q = torch.einsum("cj,bjhw->bchw", yiq, x)
    ang = v(hue) * 2 * math.pi
    i2 = q[:, 1:2] * torch.cos(ang) - q[:, 2:3] * torch.sin(ang)
    q2 = q[:, 1:2] * torch.sin(ang) + q[:, 2:3] * torch.cos(ang)
    q = torch.cat([q[:, :1], i2, q2], 1)
    return torch.einsum("cj,bjhw->bchw", yiq_inv, q).clamp(0, 1)


# ---- CLIP views ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewConfig:
    n: int = 16  # views per image; view 0 shows the whole image
    short: int = 224  # view shorter side (CLIP's native size)
    long_max: int = 320  # cap on the view's longer side
    crop: tuple[float, float] = (0.6, 1.0)  # side fraction of the random crops (views 1..n-1)
    flip_p: float = 0.5
    affine_p: float = 0.8
    degrees: float = 15.0  # affine rotation range (+-)
    translate: float = 0.1  # affine translation, fraction of the side (+-)
    perspective_p: float = 0.5
    distortion: float = 0.4  # perspective corner displacement, fraction of the half side
    jitter_p: float = 0.7
    jitter: float = 0.1
    gray_p: float = 0.15
    fill: float = 1.0  # value outside the image: 1 white (image), 0 black (video)


@dataclass(frozen=True)
class ViewParams:
    """n views of one image: homographies mapping view coords to image coords (normalised [-1,1])."""

    size: tuple[int, int]  # view h, w
    homography: torch.Tensor  # V, 3, 3 (float64, CPU)
    jitter: torch.Tensor  # V, 4 brightness, contrast, saturation, hue (identity where not drawn)
    gray: torch.Tensor  # V bool


def view_size(H: int, W: int, cfg: ViewConfig) -> tuple[int, int]:
    """Shorter side cfg.short; if the longer side would exceed cfg.long_max it is cfg.long_max and the
    shorter side shrinks instead. Aspect is always kept (paper A.3; torchvision Resize(max_size))."""
    return aspect_resize_size(H, W, cfg.short, cfg.long_max)


def aspect_resize_size(H: int, W: int, short: int, long_max: int) -> tuple[int, int]:
    """(h, w) for resizing H x W so the shorter side is `short`, or the longer `long_max` if that is
    smaller; the aspect ratio is kept (no squashing). Only for extreme aspects (> 7 * long_max / short,
    e.g. > 10:1 at 224/320) is the shorter side floored at short // 7 (one ViT-B/32 patch at 224 px)."""
    lo, hi = min(H, W), max(H, W)
    s = min(short / lo, long_max / hi)
    floor = max(1, short // 7)
    h, w = max(floor, round(H * s)), max(floor, round(W * s))
    return h, w


def _homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """3x3 H with H @ [src, 1] ~ [dst, 1] for 4 point pairs [4,2] (float64)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist(), strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def sample_views(g: torch.Generator, H: int, W: int, cfg: ViewConfig) -> ViewParams:
    """Draw cfg.n view geometries and colour changes for an H x W image."""
    vh, vw = view_size(H, W, cfg)
    a = vw / vh  # view aspect: rotate in a frame where x spans [-a, a] and y [-1, 1]
    N = torch.diag(torch.tensor([a, 1.0, 1.0], dtype=torch.float64))
    Ninv = torch.linalg.inv(N)
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    mats, jit, gray = [], [], []
    for i in range(cfg.n):
        # crop (in image coords): fraction f of each side, centred at (cx, cy)
        f = 1.0 if i == 0 else _uniform(g, *cfg.crop)
        cx, cy = _uniform(g, -(1 - f), 1 - f), _uniform(g, -(1 - f), 1 - f)
        M = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=torch.float64)
        if _uniform(g, 0, 1) < cfg.flip_p:
            M = M @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
        if _uniform(g, 0, 1) < cfg.affine_p:
            t = math.radians(_uniform(g, -cfg.degrees, cfg.degrees))
            tx, ty = (
                _uniform(g, -cfg.translate, cfg.translate) * 2 * a,
                _uniform(g, -cfg.translate, cfg.translate) * 2,
            )
            A = torch.tensor(
                [[math.cos(t), -math.sin(t), tx], [math.sin(t), math.cos(t), ty], [0, 0, 1]],
                dtype=torch.float64,
            )
            M = M @ Ninv @ torch.linalg.inv(A) @ N  # view pixel q shows image content at A^-1 q
        if _uniform(g, 0, 1) < cfg.perspective_p:
            # each corner moves inwards by up to distortion * half side; view shows the warped image
            d = torch.rand(4, 2, generator=g, dtype=torch.float64) * cfg.distortion
            moved = corners - corners.sign() * d
            M = M @ _homography_from_points(moved, corners)
        mats.append(M)
        if _uniform(g, 0, 1) < cfg.jitter_p:
            jit.append(_jitter_factors(g, cfg.jitter))
        else:
            jit.append((1.0, 1.0, 1.0, 0.0))
        gray.append(_uniform(g, 0, 1) < cfg.gray_p)
    return ViewParams(
        (vh, vw),
        torch.stack(mats),
        torch.tensor(jit, dtype=torch.float64),
        torch.tensor(gray, dtype=torch.bool),
    )


def render_views(x: torch.Tensor, p: ViewParams, fill: float = 1.0) -> torch.Tensor:
    """Render views of images x [B,3,H,W] in [0,1] -> [B*V,3,h,w] (image-major), differentiable in x."""
    B, C, H, W = x.shape
    V = p.homography.shape[0]
    vh, vw = p.size
    # Pre-shrink (antialiased) so a bilinear grid_sample never decimates by more than ~2x.
    k = min(H / (2 * vh), W / (2 * vw))
    if k > 1:
        x = F.interpolate(
            x, size=(round(H / k), round(W / k)), mode="bilinear", align_corners=False, antialias=True
        )
    dev, dt = x.device, x.dtype
    pts = _pixel_centres(vh, vw, dt, dev)  # hw, 3
    Hm = p.homography.to(device=dev, dtype=dt)  # V, 3, 3
    q = torch.einsum("vij,pj->vpi", Hm, pts)  # V, hw, 3
    grid = (q[..., :2] / q[..., 2:].clamp_min(1e-6)).reshape(1, V * vh, vw, 2)
    # all views of an image in one sampling pass (no V copies of the image)
    out = F.grid_sample(
        x - fill, grid.expand(B, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out = out.view(B, C, V, vh, vw).transpose(1, 2).reshape(B * V, C, vh, vw) + fill  # B*V, 3, h, w
    j = p.jitter.to(device=dev, dtype=dt).repeat(B, 1)
    out = color_jitter(out, j[:, 0], j[:, 1], j[:, 2], j[:, 3])
    gmask = p.gray.to(dev).repeat(B).view(-1, 1, 1, 1)
    return torch.where(gmask, grayscale(out).expand_as(out), out)
