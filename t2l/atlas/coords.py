"""Atlas coordinates -> atlas pixels -> grid_sample grids, and bilinear sampling of atlas textures.

The one place that converts between the three coordinate systems of an atlas (docs/atlas-format.md):

    uv        per frame pixel, as stored in layers/<name>/uv.npy; its scale is the producer's
    px        continuous atlas-image pixels: x = sx*u + ox, y = sy*v + oy with uv_to_px = (sx, ox, sy, oy);
              pixel (row i, column j) covers [j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5)
    grid      torch.nn.functional.grid_sample's [-1, 1] over an image (align_corners=False):
              g = 2 * (x - x0) / w - 1 for an image that covers atlas px [x0, x0 + w) (the whole atlas,
              or a crop of it at any resolution)

API (render, the fitter, NLA import and video crops all use these):

    uv_to_pixels(uv, uv_to_px) -> px           [..., 2] -> [..., 2]   numpy or torch
    pixels_to_uv(px, uv_to_px) -> uv           the inverse
    grid_uv_to_px((Ha, Wa)) -> uv_to_px        the uv_to_px of uv that already IS the grid of an
                                               (Ha, Wa) atlas (what the fitter stores)
    uv_to_grid(uv, uv_to_px, (Ha, Wa), crop=None) -> grid [..., 2]
    sample_grid(texture, grid, padding="zeros") -> [B, C, h, w]   bilinear grid_sample, align_corners=False
    sample_atlas(texture, uv, uv_to_px, premultiplied=True, crop=None, padding="zeros") -> [B, C, h, w]
    premultiply(rgba) / unpremultiply(rgba)    straight <-> premultiplied, channel-first, alpha last
    uv_bbox(uv, uv_to_px, mask=None, pad=0, limit=None) -> Box | None    atlas px box a bilinear read touches
    Box(x0, y0, x1, y1)                        integer atlas px, half-open; .width, .height, .clip(size)
    texel_centres((Ha, Wa), uv_to_px) -> uv [Ha, Wa, 2];  texel_index(uv, uv_to_px) -> (col, row) [..., 2]

Example (the lead's video crops): the generator paints only the atlas region one frame region sees,
and sampling that crop gives what sampling the whole atlas gives. Here an 8 x 8 atlas, a 1 x 2 frame:
    >>> import torch
    >>> uv_to_px = grid_uv_to_px((8, 8))                    # uv in [-1, 1] spans the 8 x 8 atlas
    >>> uv = torch.tensor([[[[-0.5, -0.5], [0.0, 0.25]]]])  # B, h, w, 2
    >>> uv_to_pixels(uv, uv_to_px)[0, 0].tolist()           # continuous atlas pixels (x, y)
    [[2.0, 2.0], [4.0, 5.0]]
    >>> box = uv_bbox(uv, uv_to_px, pad=1, limit=(8, 8))
    >>> box, (box.width, box.height)
    (Box(x0=0, y0=0, x1=6, y1=7), (6, 7))
    >>> texture = torch.rand(1, 4, 8, 8)                    # straight RGBA, alpha last
    >>> crop_rgba = texture[:, :, box.y0 : box.y1, box.x0 : box.x1]  # e.g. a generator's output
    >>> frame_rgba = sample_atlas(crop_rgba, uv, uv_to_px, crop=box)
    >>> frame_rgba.shape, torch.allclose(frame_rgba, sample_atlas(texture, uv, uv_to_px))
    (torch.Size([1, 4, 1, 2]), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

UvToPx = tuple[float, float, float, float]  # (sx, ox, sy, oy)


class Box(NamedTuple):
    """An integer rectangle of atlas pixels, half-open: columns x0..x1-1, rows y0..y1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def clip(self, size: tuple[int, int]) -> Box:
        """The part inside an (Ha, Wa) atlas image (may be empty: width or height 0)."""
        ha, wa = size
        x0, y0 = min(max(self.x0, 0), wa), min(max(self.y0, 0), ha)
        return Box(x0, y0, max(x0, min(self.x1, wa)), max(y0, min(self.y1, ha)))


def uv_to_pixels(uv, uv_to_px: UvToPx):
    """Atlas coordinates [..., 2] (u, v) -> continuous atlas-image pixels [..., 2] (x, y).

    Works on numpy arrays and torch tensors alike (keeps the type, device and autograd).
    """
    sx, ox, sy, oy = uv_to_px
    stack = torch.stack if isinstance(uv, torch.Tensor) else np.stack
    return stack([uv[..., 0] * sx + ox, uv[..., 1] * sy + oy], -1)


def pixels_to_uv(px, uv_to_px: UvToPx):
    """Continuous atlas-image pixels [..., 2] (x, y) -> atlas coordinates [..., 2]; inverse of uv_to_pixels."""
    sx, ox, sy, oy = uv_to_px
    stack = torch.stack if isinstance(px, torch.Tensor) else np.stack
    return stack([(px[..., 0] - ox) / sx, (px[..., 1] - oy) / sy], -1)


def grid_uv_to_px(size: tuple[int, int]) -> UvToPx:
    """uv_to_px for uv that are grid_sample coordinates of an (Ha, Wa) image: x = (u + 1) * Wa / 2."""
    ha, wa = size
    return (wa / 2, wa / 2, ha / 2, ha / 2)


def _crop_of(crop: Box | None, size: tuple[int, int] | None) -> tuple[float, float, float, float]:
    if crop is not None:
        if crop.width <= 0 or crop.height <= 0:
            raise ValueError(f"crop {tuple(crop)} is empty (width {crop.width}, height {crop.height})")
        return float(crop.x0), float(crop.y0), float(crop.width), float(crop.height)
    if size is None:
        raise ValueError("uv_to_grid needs the atlas size or a crop")
    return 0.0, 0.0, float(size[1]), float(size[0])


def uv_to_grid(uv, uv_to_px: UvToPx, size: tuple[int, int] | None = None, crop: Box | None = None):
    """Atlas coordinates [..., 2] -> grid_sample grid [..., 2] over the (Ha, Wa) atlas, or over `crop`.

    With `crop` the grid addresses an image covering exactly atlas pixels [x0, x1) x [y0, y1), at any
    resolution: -1/+1 are the crop's outer edges. Without it, the whole atlas of `size` = (Ha, Wa).
    """
    x0, y0, w, h = _crop_of(crop, size)
    px = uv_to_pixels(uv, uv_to_px)
    stack = torch.stack if isinstance(uv, torch.Tensor) else np.stack
    return stack([(px[..., 0] - x0) * (2.0 / w) - 1.0, (px[..., 1] - y0) * (2.0 / h) - 1.0], -1)


def sample_grid(texture: torch.Tensor, grid: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Bilinear read of texture [B or 1, C, Ha, Wa] at grid [B, h, w, 2] (align_corners=False) -> [B, C, h, w].

    A texture with batch 1 is shared by every grid. padding: "zeros" (outside reads 0: transparent for
    RGBA) or "border" (outside reads the edge texel). Differentiable w.r.t. texture and grid.
    """
    if texture.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(
            f"need texture [B, C, Ha, Wa] and grid [B, h, w, 2], got {list(texture.shape)} and {list(grid.shape)}"
        )
    if texture.shape[0] != grid.shape[0]:
        if texture.shape[0] != 1:
            raise ValueError(f"texture batch {texture.shape[0]} does not match grid batch {grid.shape[0]}")
        texture = texture.expand(grid.shape[0], -1, -1, -1)
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def premultiply(rgba: torch.Tensor) -> torch.Tensor:
    """Straight [..., C, H, W] (colour channels, alpha last, alpha in [0, 1]) -> colour * alpha, alpha."""
    a = rgba[..., -1:, :, :]
    return torch.cat([rgba[..., :-1, :, :] * a, a], -3)


def unpremultiply(rgba: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Premultiplied [..., C, H, W] -> straight; colour is 0 where alpha <= eps."""
    a = rgba[..., -1:, :, :]
    colour = torch.where(
        a > eps, rgba[..., :-1, :, :] / a.clamp_min(eps), torch.zeros_like(rgba[..., :-1, :, :])
    )
    return torch.cat([colour, a], -3)


def sample_atlas(
    texture: torch.Tensor,
    uv: torch.Tensor,
    uv_to_px: UvToPx,
    premultiplied: bool = True,
    crop: Box | None = None,
    padding: str = "zeros",
) -> torch.Tensor:
    """Bilinearly sample an atlas texture into frames.

    Args:
        texture: [B or 1, C, Ha, Wa], the whole atlas image, or with `crop` an image covering exactly
            the atlas pixels of `crop` (any resolution, e.g. a generator output). With
            premultiplied=True it is STRAIGHT RGBA-like: colour channels then alpha in [0, 1] last.
        uv: [B, h, w, 2] atlas coordinates in the stored convention (uv.npy), float.
        uv_to_px: the layer's (sx, ox, sy, oy) from atlas.json.
        premultiplied: interpolate colour * alpha (so transparent texels do not bleed their colour into
            visible ones) and return PREMULTIPLIED [colour * alpha, alpha]. False: interpolate the
            channels as given (a texture without alpha, or one that is premultiplied already).
        crop: Box in atlas pixels that `texture` covers (see uv_bbox); None = the whole atlas, (Ha, Wa)
            taken from the texture.
        padding: "zeros" (reads outside the texture give 0, i.e. transparent) or "border".

    Returns:
        [B, C, h, w], differentiable w.r.t. texture (and uv).
    """
    size = tuple(texture.shape[-2:])
    grid = uv_to_grid(uv.to(texture.dtype), uv_to_px, size, crop)
    tex = premultiply(texture) if premultiplied else texture
    return sample_grid(tex, grid, padding)


def uv_bbox(
    uv, uv_to_px: UvToPx, mask=None, pad: int = 0, limit: tuple[int, int] | None = None
) -> Box | None:
    """The atlas pixels a bilinear read of `uv` touches: the box to crop (and generate) for those pixels.

    Args:
        uv: [..., h, w, 2] atlas coordinates (numpy or torch), stored convention.
        mask: [..., h, w] bool, the frame pixels that count (None: all). Non-finite uv are ignored.
        pad: extra atlas pixels on every side.
        limit: (Ha, Wa) to clip the box to the atlas image.

    Returns:
        Box(x0, y0, x1, y1) of integer texel indices, half-open, or None when no pixel counts (or the
        clipped box is empty). A read at continuous x touches texels floor(x - 0.5) and floor(x - 0.5) + 1.
    """
    if isinstance(uv, torch.Tensor):
        uv = uv.detach().cpu().numpy()
    px = uv_to_pixels(np.asarray(uv, np.float64), uv_to_px)
    keep = np.isfinite(px).all(-1)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        keep &= m.astype(bool)
    if not keep.any():
        return None
    pts = px[keep]  # N, 2
    lo = np.floor(pts.min(0) - 0.5).astype(np.int64) - pad
    hi = np.floor(pts.max(0) - 0.5).astype(np.int64) + 2 + pad
    box = Box(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    if limit is not None:
        box = box.clip(limit)
        if box.width == 0 or box.height == 0:
            return None
    return box


def texel_centres(size: tuple[int, int], uv_to_px: UvToPx) -> np.ndarray:
    """uv of every texel centre of an (Ha, Wa) atlas: float32 [Ha, Wa, 2] (what to evaluate an implicit atlas at)."""
    ha, wa = size
    ys, xs = np.mgrid[0:ha, 0:wa].astype(np.float64) + 0.5
    return pixels_to_uv(np.stack([xs, ys], -1), uv_to_px).astype(np.float32)


def texel_index(uv, uv_to_px: UvToPx):
    """Integer texel (column, row) [..., 2] containing each uv [..., 2] (floor of the pixel coordinates)."""
    px = uv_to_pixels(uv, uv_to_px)
    if isinstance(px, torch.Tensor):
        return px.floor().long()
    return np.floor(px).astype(np.int64)
