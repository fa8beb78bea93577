"""Any-resolution image features, structure tokens and text embeddings of the frozen CLIP."""

from __future__ import annotations

import copy

import pytest
import torch

from t2l.clip import ClipSpec
from t2l.clip.model import ClipBackbone, load_clip
from t2l.errors import UsageError


@pytest.fixture(scope="module")
def clip(tiny_clip_files):
    cfg, weights = tiny_clip_files
    return load_clip(ClipSpec(model=str(cfg), weights=str(weights), offline=True))


def normalise(clip, x):
    return (x - clip.mean) / clip.std


def stock_at(clip, rows: int, cols: int, transposed: bool = False):
    """open_clip's own VisionTransformer built for a rows x cols grid, its positional table resampled
    by timm (grid ordered (rows, cols)); `transposed` lays it out the wrong way round on purpose."""
    from timm.layers import resample_abs_pos_embed

    v = copy.deepcopy(clip.clip.visual)
    p = clip.patch_size
    g = clip.native_grid
    size = (cols, rows) if transposed else (rows, cols)
    table = resample_abs_pos_embed(
        v.positional_embedding[None], new_size=size, old_size=g, num_prefix_tokens=1
    )[0]
    if transposed:  # the reference implementation's defect: (cols, rows) grid flattened as if (rows, cols)
        cls_pos, grid = table[:1], table[1:]
        grid = grid.reshape(cols, rows, -1).reshape(rows * cols, -1)
        table = torch.cat([cls_pos, grid])
    v.positional_embedding = torch.nn.Parameter(table, requires_grad=False)
    v.image_size, v.grid_size = (rows * p, cols * p), (rows, cols)
    return v


def test_native_size_equals_stock_encode_image(clip):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        ref = clip.clip.encode_image(normalise(clip, x))
        out = clip.encode_image(x)
    assert out.shape == (3, clip.embed_dim)
    assert torch.allclose(out, ref, atol=1e-6)
    assert clip.pos_embed(4, 4) is clip.clip.visual.positional_embedding  # no resampling at native size


def test_vit_b32_shape_at_224_equals_stock():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    clip = ClipBackbone.from_open_clip(model, "ViT-B-32-quickgelu", "random")
    assert (clip.native_size, clip.patch_size, clip.embed_dim, clip.native_grid) == (224, 32, 512, (7, 7))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(x), model.encode_image(normalise(clip, x)), atol=1e-5)
        assert clip.encode_image(torch.rand(1, 3, 224, 320)).shape == (1, 512)


@pytest.mark.parametrize("hw", [(64, 128), (48, 112), (128, 80)])
def test_non_square_matches_row_col_interpolation_not_transposed(clip, hw):
    H, W = hw
    rows, cols = H // 16, W // 16
    torch.manual_seed(2)
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        out = clip.encode_image(x)
        ref = stock_at(clip, rows, cols)(normalise(clip, x))
        wrong = stock_at(clip, rows, cols, transposed=True)(normalise(clip, x))
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, wrong, atol=1e-3)  # the test can tell the transposed layout apart


def test_pos_table_is_cached_per_grid(clip):
    a = clip.pos_embed(4, 8)
    assert clip.pos_embed(4, 8) is a and a.shape == (1 + 32, 64) and not a.requires_grad
    assert clip.pos_embed(8, 4) is not a


def test_gradients_reach_input_not_params(clip):
    x = torch.rand(2, 3, 64, 128, requires_grad=True)
    clip.encode_image(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in clip.parameters())


def test_ragged_size_uses_floor_grid(clip):
    # 70 x 100 -> 4 x 6 patches (the remainder pixels are ignored, like a strided conv)
    assert clip.structure_tokens(torch.rand(1, 3, 70, 100)).shape == (1, 1 + 24, 64)


def test_structure_tokens_are_the_input_of_the_last_block(clip):
    x = torch.rand(2, 3, 64, 64)
    v = clip.clip.visual
    L = len(v.transformer.resblocks)
    with torch.no_grad():
        out = v.forward_intermediates(
            normalise(clip, x), indices=[L - 2], stop_early=True, output_fmt="NLC", output_extra_tokens=True
        )
        ref = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
        tok = clip.structure_tokens(x)
    assert tok.shape == (2, 17, 64)
    assert torch.allclose(tok, ref, atol=1e-5)


def test_self_similarity_is_cosine_and_differentiable(clip):
    x = torch.rand(2, 3, 64, 96, requires_grad=True)
    s = clip.self_similarity(x)
    T = 1 + 4 * 6
    assert s.shape == (2, T, T)
    assert torch.allclose(s, s.transpose(1, 2), atol=1e-6)
    assert torch.allclose(torch.diagonal(s, dim1=1, dim2=2), torch.ones(2, T), atol=1e-5)
    assert s.min() >= -1 - 1e-5 and s.max() <= 1 + 1e-5
    tok = torch.nn.functional.normalize(clip.structure_tokens(x), dim=-1)
    assert torch.allclose(s[0, 3, 5], (tok[0, 3] * tok[0, 5]).sum(), atol=1e-6)
    s.sum().backward()
    assert x.grad.abs().sum() > 0


def test_text_embeddings_match_stock_and_are_cached(clip, monkeypatch):
    import open_clip

    prompts = ["a photo of a cat", "a photo of a dog"]
    with torch.no_grad():
        ref = clip.clip.encode_text(open_clip.SimpleTokenizer(context_length=77)(prompts))
    e = clip.encode_text(prompts)
    assert e.shape == (2, 32) and not e.requires_grad
    assert torch.allclose(e, ref, atol=1e-6)
    calls = []
    real = clip.clip.encode_text
    monkeypatch.setattr(clip.clip, "encode_text", lambda t: calls.append(len(t)) or real(t))
    e2 = clip.encode_text(["a photo of a dog", "a photo of a cat", "a red car", "a red car"])
    assert calls == [1]  # only the new string is encoded, once
    assert torch.equal(e2[0], e[1]) and torch.equal(e2[1], e[0]) and torch.equal(e2[2], e2[3])
    assert clip.encode_text([]).shape == (0, 32)


def test_frozen_and_stays_in_eval(clip):
    clip.train()
    assert not clip.training and not clip.clip.training
    assert all(not p.requires_grad for p in clip.parameters())


@pytest.mark.parametrize(
    "shape, message",
    [((3, 64, 64), r"images shaped B, 3, H, W; got \(3, 64, 64\)"),
     ((1, 4, 64, 64), r"images shaped B, 3, H, W; got \(1, 4, 64, 64\)"),
     ((1, 3, 8, 64), r"image \(8, 64\) is smaller than the CLIP patch size 16; use at least 16x16")],
)  # fmt: skip
def test_bad_image_shapes_are_usage_errors(clip, shape, message):
    with pytest.raises(UsageError, match=message):
        clip.encode_image(torch.rand(*shape))


def test_batch_first_blocks_equal_open_clips_own(clip):
    """run_block (batch-first attention, one matmul over all tokens) is open_clip's block up to float
    rounding, forward and backward to the input; a block it does not know is run by the block itself."""
    torch.manual_seed(2)
    for blk in clip.blocks():
        x = torch.randn(3, 17, clip.visual.transformer.width, requires_grad=True)
        ref = blk(x)
        (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
        out = clip.run_block(blk, x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        assert torch.allclose(out, ref, rtol=0, atol=1e-5) and torch.allclose(g, g_ref, rtol=0, atol=1e-4)

    class Custom(torch.nn.Module):
        def forward(self, x):
            return x + 1

    x = torch.zeros(1, 2, 3)
    assert torch.equal(clip.run_block(Custom(), x), x + 1)


def test_caches_filled_under_inference_mode_still_train(clip):
    """Text embeddings and positional tables first built under inference_mode must not poison training."""
    with torch.inference_mode():
        clip.encode_text(["a prompt first seen in inference mode"])
        clip.encode_image(torch.rand(1, 3, 64, 176))  # a 4 x 11 grid nobody used before
    x = torch.rand(1, 3, 64, 176, requires_grad=True)
    t = clip.encode_text(["a prompt first seen in inference mode"])
    (clip.encode_image(x) * t).sum().backward()
    assert x.grad.abs().sum() > 0
