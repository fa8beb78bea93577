"""Relevancy maps (Chefer et al.) on the tiny CLIP, and the ROI heatmap overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2l.clip import ClipSpec
from t2l.clip.model import load_clip
from t2l.clip.relevancy import heatmap_overlay, last_block_with_attn


@pytest.fixture(scope="module")
def clip(tiny_clip_files):
    cfg, weights = tiny_clip_files
    return load_clip(ClipSpec(model=str(cfg), weights=str(weights), offline=True))


def reference_relevancy(clip, x, text):
    """The recipe through open_clip's stock encode_image: the last block's nn.MultiheadAttention is
    swapped for one that returns attn @ v from its own need_weights probabilities, kept as a leaf."""
    xs = F.interpolate(
        x, size=tuple(clip.visual.image_size), mode="bilinear", align_corners=False, antialias=True
    )
    mha = clip.clip.visual.transformer.resblocks[-1].attn
    kept = {}
    real_forward = mha.forward

    def forward(q, k, v, need_weights=False, attn_mask=None, **kw):
        _, w = real_forward(q, k, v, need_weights=True, average_attn_weights=False)  # B, h, T, T
        w = w.detach().requires_grad_(True)
        kept["attn"] = w
        B, T, C = q.shape
        h = mha.num_heads
        vv = F.linear(v, mha.in_proj_weight[2 * C :], mha.in_proj_bias[2 * C :])
        vv = vv.reshape(B, T, h, C // h).transpose(1, 2)
        return mha.out_proj((w @ vv).transpose(1, 2).reshape(B, T, C)), None

    mha.forward = forward
    try:
        with torch.enable_grad():
            img = F.normalize(clip.clip.encode_image((xs - clip.mean) / clip.std), dim=-1)
            txt = F.normalize(clip.encode_text([text]), dim=-1)
            logit = (img @ txt.T)[:, 0] * clip.clip.logit_scale.exp()
            (grad,) = torch.autograd.grad(logit.sum(), kept["attn"])
    finally:
        del mha.forward
    cam = (grad * kept["attn"]).clamp(min=0).mean(1)[:, 0, 1:]
    g = clip.native_grid
    cam = F.interpolate(cam.reshape(-1, 1, *g), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    hi = cam.amax(dim=(1, 2), keepdim=True)
    return (cam - lo) / (hi - lo)


def test_recomputed_attention_matches_the_block(clip):
    blk = clip.clip.visual.transformer.resblocks[-1]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        out, attn = last_block_with_attn(blk, x)
        _, ref_attn = blk.attn(
            blk.ln_1(x), blk.ln_1(x), blk.ln_1(x), need_weights=True, average_attn_weights=False
        )
        assert torch.allclose(out, blk(x), atol=1e-5)
    assert attn.shape == (2, 2, 17, 17)
    assert torch.allclose(attn, ref_attn, atol=1e-6)


def test_matches_reference_recipe(clip):
    torch.manual_seed(3)
    x = torch.rand(2, 3, 64, 64)
    rel = clip.relevancy(x, "a photo of a cat")
    ref = reference_relevancy(clip, x, "a photo of a cat")
    assert torch.allclose(rel, ref, atol=1e-4)


def test_shape_range_and_any_size(clip):
    x = torch.rand(3, 3, 70, 130)
    rel = clip.relevancy(x, "a cat")
    assert rel.shape == (3, 70, 130) and not rel.requires_grad
    flat = rel.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(3)) and torch.allclose(
        flat.max(1).values, torch.ones(3)
    )


def test_batched_equals_unbatched_and_deterministic(clip):
    torch.manual_seed(4)
    x = torch.rand(3, 3, 64, 96)
    batched = clip.relevancy(x, "a dog")
    single = torch.cat([clip.relevancy(x[i : i + 1], "a dog") for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.equal(clip.relevancy(x, "a dog"), batched)
    assert not torch.allclose(batched, clip.relevancy(x, "a red car"), atol=1e-3)  # the text matters


def test_leaves_no_gradients_behind(clip):
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    clip.relevancy(x, "a cat")
    assert x.grad is None
    assert all(p.grad is None and not p.requires_grad for p in clip.parameters())


def test_heatmap_overlay(clip):
    img = Image.new("RGB", (80, 60), (128, 128, 128))
    rel = np.zeros((60, 80), np.float32)
    rel[:, 40:] = 1.0
    out = heatmap_overlay(img, rel)
    assert out.mode == "RGB" and out.size == (80, 60)
    left, right = np.asarray(out)[30, 10], np.asarray(out)[30, 70]
    assert left[2] > left[0] and right[0] > right[2]  # cold = blue, hot = red
    small = heatmap_overlay(img, torch.from_numpy(rel[::2, ::2].copy()))  # a tensor of another size
    assert small.size == (80, 60)
    assert np.array_equal(np.asarray(heatmap_overlay(img, rel, alpha=0.0)), np.asarray(img))
    with pytest.raises(ValueError, match="H, W"):
        heatmap_overlay(img, np.zeros((2, 3, 4)))


def test_overlay_of_a_real_map(clip, examples_dir):
    img = Image.open(examples_dir / "chelsea.png").convert("RGB").resize((96, 64))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    out = heatmap_overlay(img, clip.relevancy(x, "cat")[0])
    assert out.size == img.size


def test_works_under_no_grad_and_inference_mode(clip):
    x = torch.rand(1, 3, 64, 80)
    ref = clip.relevancy(x, "a striped cat")
    with torch.no_grad():
        assert torch.equal(clip.relevancy(x, "a striped cat"), ref)
    with torch.inference_mode():
        assert torch.allclose(clip.relevancy(x.clone(), "a striped cat"), ref)


def test_non_square_native_size_resizes_to_that_grid(tiny_clip_cfg):
    """A CLIP trained at a non-square size (grid 4 x 6): the map is computed on that grid, not n x n."""
    import open_clip

    from t2l.clip.model import ClipBackbone

    torch.manual_seed(5)
    vision = {**tiny_clip_cfg["vision_cfg"], "image_size": [64, 96]}
    model = open_clip.CLIP(
        embed_dim=32, quick_gelu=True, vision_cfg=vision, text_cfg=tiny_clip_cfg["text_cfg"]
    )
    clip = ClipBackbone.from_open_clip(model, "tiny-64x96", "random")
    assert clip.native_grid == (4, 6)
    x = torch.rand(2, 3, 80, 100)
    rel = clip.relevancy(x, "a cat")
    assert rel.shape == (2, 80, 100)
    assert torch.allclose(rel, reference_relevancy(clip, x, "a cat"), atol=1e-4)
