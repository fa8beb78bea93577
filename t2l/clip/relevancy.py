"""Relevancy maps: where in an image CLIP sees a text (Chefer et al., generic attention explainability).

Text2LIVE uses the map of the ROI text to bootstrap the alpha channel early in training. Recipe:
resize the image to CLIP's native size (224x224); take the image-text logit; get its gradient
w.r.t. the attention probabilities of the LAST visual block; cam = mean over heads of
relu(grad * attn); keep the CLS row over the patch tokens; reshape to the patch grid; bilinear
up to the input size; min-max normalise to [0,1] per image. One CLIP serves both features and
relevancy: we recompute the last block's attention from its own weights so the probabilities
are a tensor we can differentiate against, and CLIP's parameters never receive a gradient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from t2l.errors import UsageError

EPS = 1e-8


def last_block_with_attn(block, x: torch.Tensor, attn: torch.Tensor | None = None):
    """Run an open_clip ResidualAttentionBlock by hand, exposing its attention probabilities.

    x: B, T, C tokens entering the block. attn: B, h, T, T probabilities to use instead of the
    recomputed ones (pass a tensor that requires grad to differentiate against it).
    Returns (block output B, T, C; attention probabilities B, h, T, T).
    """
    mha = block.attn
    B, T, C = x.shape
    h = mha.num_heads
    y = block.ln_1(x)
    q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)  # each B, T, C
    q, k, v = (t.reshape(B, T, h, C // h).transpose(1, 2) for t in (q, k, v))  # B, h, T, hs
    if attn is None:
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (C // h) ** -0.5, dim=-1)  # B, h, T, T
    out = (attn @ v).transpose(1, 2).reshape(B, T, C)  # B, T, C
    x = x + block.ls_1(mha.out_proj(out))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, attn


def relevancy_map(clip, x: torch.Tensor, text: str) -> torch.Tensor:
    """Relevancy of `text` in each image.

    clip: a ClipBackbone. x: B, 3, H, W RGB in [0,1] (any size). Returns B, H, W in [0,1]
    (detached, on x's device). Deterministic; batched == one image at a time. Works under
    torch.no_grad() and torch.inference_mode() too (it needs one gradient internally).
    """
    with torch.inference_mode(False):
        return _relevancy(clip, x, text)


def _relevancy(clip, x: torch.Tensor, text: str) -> torch.Tensor:
    B, _, H, W = x.shape
    native_hw = tuple(int(s) for s in clip.visual.image_size)  # 224, 224 for ViT-B/32
    if not isinstance(getattr(clip.blocks()[-1], "attn", None), torch.nn.MultiheadAttention):
        raise UsageError(
            f"relevancy maps need open_clip's standard attention blocks; {clip.model_name} uses custom ones",
            "use a ViT CLIP such as ViT-B-32-quickgelu, or run without the ROI prior",
        )
    with torch.no_grad():
        xs = F.interpolate(
            x.detach().float().clone(), size=native_hw, mode="bilinear", align_corners=False, antialias=True
        )
        t = clip.embed_patches(xs)
        for blk in clip.blocks()[:-1]:
            t = blk(t)  # B, T, C entering the last block
        _, attn = last_block_with_attn(clip.blocks()[-1], t)
        txt = F.normalize(clip.encode_text([text]).float(), dim=-1).clone()  # 1, D
    attn = attn.detach().requires_grad_(True)
    with torch.enable_grad():
        out, _ = last_block_with_attn(clip.blocks()[-1], t, attn)
        img = F.normalize(clip.head(out).float(), dim=-1)  # B, D
        logits = (img * txt).sum(-1) * clip.logit_scale.detach()  # B
        (grad,) = torch.autograd.grad(logits.sum(), attn)  # per image: its own logit only
    cam = (grad * attn.detach()).clamp(min=0).mean(dim=1)  # B, T, T
    rows, cols = clip.native_grid
    cam = cam[:, 0, 1:].reshape(B, 1, rows, cols)  # CLS row over the patches
    cam = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # B, H, W
    lo = cam.flatten(1).min(1).values.view(B, 1, 1)
    hi = cam.flatten(1).max(1).values.view(B, 1, 1)
    return ((cam - lo) / (hi - lo).clamp(min=EPS)).to(x.device)


def heatmap_overlay(image: Image.Image, rel, alpha: float = 0.5) -> Image.Image:
    """The image with a jet-coloured relevancy map blended on top (for --show-roi PNGs).

    rel: H, W in [0,1] (numpy or tensor; resized to the image if sizes differ). alpha in [0,1]:
    weight of the heatmap. Returns an RGB PIL image the size of `image`.
    """
    if isinstance(rel, torch.Tensor):
        rel = rel.detach().float().cpu().numpy()
    rel = np.asarray(rel, dtype=np.float32).squeeze()
    if rel.ndim != 2:
        raise ValueError(f"relevancy map must be H, W; got shape {rel.shape}")
    base = image.convert("RGB")
    if rel.shape != (base.height, base.width):
        rel = np.asarray(Image.fromarray(rel).resize(base.size, Image.BILINEAR))
    heat = _jet(np.clip(rel, 0.0, 1.0))  # H, W, 3 in [0,1]
    mixed = (1 - alpha) * (np.asarray(base, dtype=np.float32) / 255.0) + alpha * heat
    return Image.fromarray(np.round(mixed * 255.0).clip(0, 255).astype(np.uint8))


def _jet(v: np.ndarray) -> np.ndarray:
    """The classic jet colormap: 0 -> dark blue, 0.5 -> green, 1 -> dark red. H, W -> H, W, 3."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)
