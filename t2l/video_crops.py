"""Video training items: atlas crops whose generated RGBA is sampled into frame crops (paper 3.2, A.4).

Per step (`LayerCrops.sample`), for the edited layer of an atlas:
  * frames t-g, t, t+g (g = cfg.frame_gap); one flip decision; colour jitter with probability jitter_p;
  * frame crops: bg one crop shared by the frames, each side U(cover) of the frame; fg one crop per
    frame inside that frame's alpha box (alpha >= threshold, padded, >= the generator's minimum side);
  * the atlas crop = the atlas-pixel bounding box of the frame crops' uv where the layer is visible;
  * ONE GeneratorCall on the atlas crop feeding the frame crops: its RGBA is premultiplied, reduced to
    atlas density and bilinearly sampled into each frame crop through that frame's uv, then weighted by
    the layer's opacity (fg: alpha, bg: 1 - alpha), exactly as `t2l render` composites it;
  * one frame crop through the generator directly;
  * every cfg.full_every steps the whole used atlas (the layer's coverage box) as the render sees it.

fg items are masked by the layer's opacity, inputs and outputs alike (the composite is then the rendered
frame times alpha); bg items composite over the original frame, which is the rendered frame.

Raster scale: atlases are stored at ~1-1.5 texels per frame pixel, and the generator needs >= min_side px a
side. A small fg atlas is upsampled by an integer `scale` k for the generator; its output is reduced
back by a k x k premultiplied average, so training sees the edit exactly as `t2l render` will, and
edit.png keeps atlas.png's size (paintable, renderable with no special case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from t2l.atlas.coords import Box, premultiply, sample_atlas, uv_bbox
from t2l.augment import color_jitter
from t2l.errors import UsageError
from t2l.train import Example, GeneratorCall


@dataclass(frozen=True)
class CropSettings:
    frame_gap: int = 2  # frames t - gap, t, t + gap per step
    cover: tuple[float, float] = (0.95, 1.0)  # crop side as a fraction of the frame (bg) or the box (fg)
    fg_threshold: float = 0.95  # fg box: pixels with alpha >= this ...
    fg_pad: float = 30 / 768  # ... padded by this fraction of the frame's longer side (30 px at 768)
    visible: float = 0.05  # a frame pixel counts for the atlas crop where the layer's opacity > this
    flip_p: float = 0.5
    jitter_p: float = 0.1
    jitter: float = 0.1
    full_every: int = 75  # the whole used atlas as an extra item at steps 0, 75, ... (0: never)
    direct_item: bool = True  # one frame crop through the generator directly
    max_scale: int = 4  # cap on the raster scale k


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) half-open bounding box of a bool [H, W] mask, or None when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _grow(lo: int, hi: int, need: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) symmetrically to at least `need` inside [0, limit) (limit >= need)."""
    if hi - lo >= need:
        return lo, hi
    extra = need - (hi - lo)
    lo = max(0, lo - extra // 2)
    hi = lo + need
    if hi > limit:
        hi, lo = limit, limit - need
    return lo, hi


def layer_weight(alpha: np.ndarray | None, layer: str) -> np.ndarray | None:
    """The layer's opacity in the frames [T, H, W] (fg: alpha, bg: 1 - alpha); None = 1 everywhere."""
    if alpha is None:
        return None
    return alpha if layer == "fg" else 1.0 - alpha


def fg_boxes(alpha: np.ndarray, min_side: int, s: CropSettings) -> list[tuple[int, int, int, int] | None]:
    """Per frame, the fg box (y0, x0, y1, x1): alpha >= threshold (else > 0.5), padded, >= min_side."""
    T, H, W = alpha.shape
    pad = round(s.fg_pad * max(H, W))
    out = []
    for t in range(T):
        b = _mask_box(alpha[t] >= s.fg_threshold) or _mask_box(alpha[t] > 0.5)
        if b is None:
            out.append(None)
            continue
        y0, x0, y1, x1 = max(0, b[0] - pad), max(0, b[1] - pad), min(H, b[2] + pad), min(W, b[3] + pad)
        y0, y1 = _grow(y0, y1, min_side, H)
        x0, x1 = _grow(x0, x1, min_side, W)
        out.append((y0, x0, y1, x1))
    return out


def coverage_box(texture_alpha: np.ndarray) -> Box | None:
    """The atlas-pixel box of the texels the video shows (coverage > 0)."""
    b = _mask_box(texture_alpha > 0)
    return None if b is None else Box(b[1], b[0], b[3], b[2])


def raster_scale(box: Box, min_side: int, max_scale: int) -> int:
    """Smallest integer k with k * (shorter side of box) >= min_side; UsageError above max_scale."""
    side = min(box.width, box.height)
    k = max(1, math.ceil(min_side / max(1, side)))
    if k > max_scale:
        raise UsageError(
            f"the layer's atlas is only {box.width}x{box.height} texels, too small for the generator even "
            f"at {max_scale}x (needs {min_side} px a side)",
            "fit the atlas at a larger working size, or edit the other layer",
        )
    return k


class LayerCrops:
    """The prepared atlas layer and the per-step sampler for the trainer.

    frames: uint8 [T, H, W, 3]; uv: float32 [T, H, W, 2] (stored convention); texture: uint8 [Ha, Wa, 4]
    (RGB + coverage); uv_to_px: the layer's; alpha: float32 [T, H, W] fg opacity or None;
    relevancy: float32 [T, H, W] per-frame ROI maps in [0,1] (and `atlas_relevancy` [Ha, Wa]) or None.
    Arrays stay on the CPU (numpy); a step moves only its 3 frame crops to `device`.
    """

    def __init__(
        self,
        frames: np.ndarray,
        uv: np.ndarray,
        texture: np.ndarray,
        uv_to_px,
        alpha: np.ndarray | None,
        layer: str,
        min_side: int,
        settings: CropSettings,
        device: torch.device | str = "cpu",
    ):
        T, H, W = frames.shape[:3]
        if min(H, W) < min_side:
            raise UsageError(
                f"the atlas frames are {W}x{H}, below the generator's minimum side {min_side}",
                f"fit the atlas at a working size of at least {min_side} px a side",
            )
        if layer == "fg" and alpha is None:
            raise UsageError("this atlas has no foreground layer", "edit the background layer (bg)")
        self.frames, self.uv, self.alpha, self.layer = frames, uv, alpha, layer
        self.uv_to_px, self.min_side, self.s, self.device = (
            tuple(uv_to_px),
            min_side,
            settings,
            torch.device(device),
        )
        self.weight = layer_weight(alpha, layer)  # T, H, W or None
        self.T, self.H, self.W = T, H, W
        ha, wa = texture.shape[:2]
        self.atlas_size = (ha, wa)
        cov = coverage_box(texture[..., 3])
        if cov is None:
            raise UsageError(f"the {layer} layer's atlas shows nothing in any frame", "edit the other layer")
        self.used = cov  # atlas px box the video shows
        self.k = raster_scale(cov, min_side, settings.max_scale)
        self.atlas_min = math.ceil(min_side / self.k)  # atlas crop side (atlas px) the generator needs
        tex = torch.from_numpy(np.array(texture)).permute(2, 0, 1)[None].float() / 255  # 1, 4, Ha, Wa
        self.coverage = tex[:, 3:4].to(self.device)  # 1, 1, Ha, Wa
        rgb = tex[:, :3]
        if self.k > 1:  # each texel becomes k x k pixels: the k x k average of the output inverts it exactly
            rgb = F.interpolate(rgb, scale_factor=self.k, mode="nearest")
        self.raster = rgb.to(self.device)  # 1, 3, k*Ha, k*Wa: the generator's input image
        self.boxes = fg_boxes(alpha, min_side, settings) if layer == "fg" else [(0, 0, H, W)] * T
        self.eligible = [t for t, b in enumerate(self.boxes) if b is not None]
        if not self.eligible:
            raise UsageError("the foreground layer is empty in every frame", "edit the background layer (bg)")
        self.relevancy: np.ndarray | None = None
        self.atlas_relevancy: torch.Tensor | None = None
        self.banks: list[torch.Tensor | None] | None = None  # E(in) banks per frame (build_input_banks)
        self.atlas_bank: torch.Tensor | None = None

    # ---- atlas crops ----------------------------------------------------------------------------

    def _at_least_min(self, box: Box) -> Box:
        """`box` grown (inside the atlas) to the side the generator needs: atlas_min atlas px."""
        ha, wa = self.atlas_size
        x0, x1 = _grow(box.x0, box.x1, self.atlas_min, wa)
        y0, y1 = _grow(box.y0, box.y1, self.atlas_min, ha)
        return Box(x0, y0, x1, y1)

    def gen_input(self, box: Box) -> torch.Tensor:
        """The generator's input for an atlas box: [1, 3, k*h, k*w] of the raster."""
        k = self.k
        return self.raster[..., box.y0 * k : box.y1 * k, box.x0 * k : box.x1 * k]

    def to_atlas_density(self, rgba: torch.Tensor) -> torch.Tensor:
        """Generator output (straight RGBA [B,4,k*h,k*w]) -> PREMULTIPLIED [B,4,h,w] at atlas density
        (k x k average of the premultiplied values: what edit.png holds, premultiplied)."""
        pre = premultiply(rgba)
        return F.avg_pool2d(pre, self.k) if self.k > 1 else pre

    def sample_into(self, pre_crop: torch.Tensor, box: Box, uv: torch.Tensor) -> torch.Tensor:
        """Premultiplied atlas-density crop [1,4,h,w] covering `box` -> premultiplied [1,4,fh,fw] at the
        frame pixels uv [1, fh, fw, 2] (bilinear, zero outside the crop)."""
        return sample_atlas(pre_crop, uv, self.uv_to_px, premultiplied=False, crop=box)

    # ---- frame crops ----------------------------------------------------------------------------

    def _frame_crop(self, rng: torch.Generator, t: int, shared: tuple | None) -> tuple[int, int, int, int]:
        """(y0, x0, h, w) of a crop of frame t: the shared one (bg), or inside frame t's box (fg)."""
        if shared is not None:
            return shared
        by0, bx0, by1, bx1 = self.boxes[t]
        bh, bw = by1 - by0, bx1 - bx0
        lo, hi = self.s.cover
        f = float(torch.rand(1, generator=rng, dtype=torch.float64)) * (hi - lo) + lo
        h, w = min(bh, max(self.min_side, round(bh * f))), min(bw, max(self.min_side, round(bw * f)))
        y0 = by0 + int(torch.randint(0, bh - h + 1, (1,), generator=rng))
        x0 = bx0 + int(torch.randint(0, bw - w + 1, (1,), generator=rng))
        return y0, x0, h, w

    def _shared_crop(self, rng: torch.Generator) -> tuple[int, int, int, int] | None:
        if self.layer == "fg":
            return None
        lo, hi = self.s.cover
        f = float(torch.rand(1, generator=rng, dtype=torch.float64)) * (hi - lo) + lo
        h, w = max(self.min_side, round(self.H * f)), max(self.min_side, round(self.W * f))
        h, w = min(h, self.H), min(w, self.W)
        y0 = int(torch.randint(0, self.H - h + 1, (1,), generator=rng))
        x0 = int(torch.randint(0, self.W - w + 1, (1,), generator=rng))
        return y0, x0, h, w

    def frame_triplet(self, rng: torch.Generator) -> list[int]:
        """t - gap, t, t + gap with t drawn among frames that show the layer; neighbours outside the clip
        or without the layer are dropped (a 1-frame clip trains on that frame alone)."""
        g, el = self.s.frame_gap, self.eligible
        inner = [t for t in el if t - g >= 0 and t + g < self.T] or el
        t = inner[int(torch.randint(0, len(inner), (1,), generator=rng))]
        ok = set(el)
        return [f for f in (t - g, t, t + g) if f in ok] if g > 0 else [t]

    def _item_tensors(self, t: int, crop: tuple[int, int, int, int]):
        """Frame t's crop as tensors on the device: (image [1,3,h,w], weight [1,1,h,w] or None, uv [1,h,w,2],
        relevancy [1,1,h,w] or None)."""
        y0, x0, h, w = crop
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        dev = self.device
        img = torch.from_numpy(np.ascontiguousarray(self.frames[t][sl])).permute(2, 0, 1)[None].float() / 255
        uv = torch.from_numpy(np.ascontiguousarray(self.uv[t][sl], dtype=np.float32))[None]
        wt = None
        if self.weight is not None:
            wt = torch.from_numpy(np.ascontiguousarray(self.weight[t][sl], dtype=np.float32))[None, None].to(
                dev
            )
        rel = None
        if self.relevancy is not None:
            rel = torch.from_numpy(np.ascontiguousarray(self.relevancy[t][sl], dtype=np.float32))[
                None, None
            ].to(dev)
        return img.to(dev), wt, uv.to(dev), rel

    def _masked(self, x: torch.Tensor, wt: torch.Tensor | None) -> torch.Tensor:
        """fg items are masked by the layer's opacity (inputs and outputs alike); bg items are not."""
        return x * wt if (wt is not None and self.layer == "fg") else x

    # ---- the sampler ------------------------------------------------------------------------------

    def sample(self, step: int, rng: torch.Generator) -> list[Example | GeneratorCall]:
        s = self.s
        flip = float(torch.rand(1, generator=rng, dtype=torch.float64)) < s.flip_p
        jit = None
        if float(torch.rand(1, generator=rng, dtype=torch.float64)) < s.jitter_p:
            r = torch.rand(4, generator=rng, dtype=torch.float64)
            jit = tuple(float(v) for v in (1 - s.jitter + 2 * s.jitter * r[:3]).tolist()) + (
                float(-s.jitter + 2 * s.jitter * r[3]),
            )
        ts = self.frame_triplet(rng)
        shared = self._shared_crop(rng)
        crops = [self._frame_crop(rng, t, shared) for t in ts]
        tensors = [self._item_tensors(t, c) for t, c in zip(ts, crops, strict=True)]

        # the atlas crop: where the frame crops' visible pixels live in the atlas
        uvs = [self.uv[t][c[0] : c[0] + c[2], c[1] : c[1] + c[3]] for t, c in zip(ts, crops, strict=True)]
        if self.weight is not None:
            vis = [
                self.weight[t][c[0] : c[0] + c[2], c[1] : c[1] + c[3]] > s.visible
                for t, c in zip(ts, crops, strict=True)
            ]
        else:
            vis = [None] * len(ts)
        box = self._union_box(uvs, vis)
        items = [
            self._warped_item(box, img, wt, uv, rel, flip, self._bank(t))
            for t, (img, wt, uv, rel) in zip(ts, tensors, strict=True)
        ]
        out: list[Example | GeneratorCall] = [
            GeneratorCall(self._augment(self.gen_input(box), flip, jit), items)
        ]
        if s.direct_item:
            mid = len(tensors) // 2
            img, wt, _, rel = tensors[mid]
            out.append(self._direct_item(img, wt, rel, flip, jit, self._bank(ts[mid])))
        if s.full_every and step % s.full_every == 0:
            out.append(self.full_item(flip, jit))
        return out

    def _union_box(self, uvs: list[np.ndarray], vis: list[np.ndarray | None]) -> Box:
        """The atlas box of the frame crops' visible pixels (uv [h, w, 2], vis [h, w] or None each)."""
        bbox = lambda uv, v: uv_bbox(uv, self.uv_to_px, mask=v, pad=1, limit=self.atlas_size)  # noqa: E731
        boxes = [b for b in (bbox(uv, v) for uv, v in zip(uvs, vis, strict=True)) if b is not None]
        if (
            not boxes
        ):  # nothing visible (a fully occluded bg crop): all of the first crop, else the used atlas
            boxes = [bbox(uvs[0], None) or self.used]
        u = Box(
            min(b.x0 for b in boxes),
            min(b.y0 for b in boxes),
            max(b.x1 for b in boxes),
            max(b.y1 for b in boxes),
        )
        return self._at_least_min(u)

    def _augment(self, x: torch.Tensor, flip: bool, jit) -> torch.Tensor:
        if flip:
            x = x.flip(-1)
        if jit is not None:
            b, c, sat, h = (torch.tensor([v], dtype=x.dtype, device=x.device) for v in jit)
            x = color_jitter(x, b, c, sat, h)
        return x

    def _bank(self, t: int) -> torch.Tensor | None:
        return self.banks[t] if self.banks is not None else None

    def bank_image(self, t: int) -> torch.Tensor:
        """What frame t's items show, for its E(in) bank: [1,3,h,w] (fg: its box, masked by alpha; bg: the frame)."""
        y0, x0, y1, x1 = self.boxes[t]
        img, wt, _, _ = self._item_tensors(t, (y0, x0, y1 - y0, x1 - x0))
        return self._masked(img, wt)

    def build_input_banks(self, encode) -> None:
        """E(in) banks, ONCE before training: encode(image [1,3,h,w]) -> [K,D] per frame that shows the
        layer and for the whole-atlas item (like the image's bank of input views)."""
        self.banks = [
            encode(self.bank_image(t)) if self.boxes[t] is not None else None for t in range(self.T)
        ]
        self.atlas_bank = encode(self.full_item().background)

    def _warped_item(self, box: Box, img, wt, uv, rel, flip: bool, bank=None) -> Example:
        def warp(rgba: torch.Tensor) -> torch.Tensor:  # straight [1,4,k*h,k*w] -> premultiplied frame crop
            rgba = rgba.flip(-1) if flip else rgba  # the input was flipped: flip the output back
            pre = self.sample_into(self.to_atlas_density(rgba), box, uv)
            return pre * wt if wt is not None else pre

        return Example(self._masked(img, wt), warp=warp, relevancy=self._masked_rel(rel, wt), input_bank=bank)

    def _direct_item(self, img, wt, rel, flip: bool, jit, bank=None) -> Example:
        def warp(rgba: torch.Tensor) -> torch.Tensor:
            pre = premultiply(rgba.flip(-1) if flip else rgba)
            return pre * wt if wt is not None else pre

        return Example(
            self._masked(img, wt),
            gen_input=self._augment(img, flip, jit),
            warp=warp,
            relevancy=self._masked_rel(rel, wt),
            input_bank=bank,
        )

    def full_item(self, flip: bool = False, jit=None) -> Example:
        """The whole used atlas (coverage box) through the generator, masked by coverage like a frame."""
        box = self.full_box()
        cov = self.coverage[..., box.y0 : box.y1, box.x0 : box.x1]  # 1, 1, h, w
        x = self.gen_input(box)
        img = F.avg_pool2d(x, self.k) if self.k > 1 else x  # the atlas colours at atlas density

        def warp(rgba: torch.Tensor) -> torch.Tensor:
            return self.to_atlas_density(rgba.flip(-1) if flip else rgba) * cov

        rel = None
        if self.atlas_relevancy is not None:
            rel = self.atlas_relevancy[..., box.y0 : box.y1, box.x0 : box.x1] * cov
        return Example(
            img * cov,
            gen_input=self._augment(x, flip, jit),
            warp=warp,
            relevancy=rel,
            input_bank=self.atlas_bank,
        )

    def full_box(self) -> Box:
        """The whole-atlas item's (and the final render's) box: the used atlas, at least atlas_min a side."""
        return self._at_least_min(self.used)

    def _masked_rel(self, rel, wt):
        if rel is None:
            return None
        return rel * wt if (wt is not None and self.layer == "fg") else rel
