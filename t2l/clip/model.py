"""The frozen CLIP backbone shared by the image and video pipelines.

We run open_clip's VisionTransformer pieces ourselves so that any input size works: the
positional table is resampled (bicubic) to the actual patch grid (rows = H // p, cols = W // p),
laid out row-major like the patch tokens. At the native size the table is used as is, so the
output equals open_clip's `encode_image` exactly. Only one copy of CLIP exists; relevancy maps
reuse it (t2l/clip/relevancy.py).

    clip = load_clip(ClipSpec(), device="cuda")
    e = clip.encode_image(views)                  # views: B, 3, H, W RGB in [0,1] -> B, D
    t = clip.encode_text(["a photo of a cat"])    # 1, D (cached per string)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2l.clip.spec import ClipSpec
from t2l.clip.weights import (
    OPENAI_MEAN,
    OPENAI_STD,
    build_model,
    load_state_dict,
    load_weights_into,
    resolve_weights,
)
from t2l.errors import UsageError


def load_clip(spec: ClipSpec, device: torch.device | str = "cpu", download_progress=None) -> ClipBackbone:
    """Resolve, (download,) build and freeze the CLIP that `spec` names, on `device`.

    Raises WeightsUnavailable (exit 3) when the weights are neither cached nor downloadable,
    InputError for unreadable or mismatched files, UsageError for unknown names or tags.
    download_progress: tqdm-compatible class for the download bar (None = huggingface_hub's own).
    """
    r = resolve_weights(spec, download_progress=download_progress)
    model = build_model(r.model_cfg, r.model_name)
    load_weights_into(model, load_state_dict(r.path), r.path, r.model_name)
    tokenizer = _make_tokenizer(r.tokenizer_name, r.model_cfg)
    clip = ClipBackbone(model, r.model_name, r.source, mean=r.mean, std=r.std, tokenizer=tokenizer)
    return clip.to(device)


class ClipBackbone(nn.Module):
    """A frozen open_clip CLIP (ViT image tower) with any-resolution image features.

    Parameters never require grad and the module stays in eval mode; gradients flow to the
    input images only.
    """

    def __init__(
        self, model: nn.Module, name: str, source: str, mean=OPENAI_MEAN, std=OPENAI_STD, tokenizer=None
    ):
        super().__init__()
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "conv1") or not hasattr(visual, "positional_embedding"):
            raise UsageError(
                f"CLIP model {name} has no open_clip ViT image tower", "use a ViT CLIP such as ViT-B-32"
            )
        if not getattr(visual.transformer, "batch_first", True):
            raise UsageError(
                f"CLIP model {name} uses a sequence-first transformer",
                "build it with open_clip's default batch_first=True",
            )
        self.clip = model
        self.model_name = name
        self.source = source
        self.tokenizer = (
            tokenizer if tokenizer is not None else _make_tokenizer(None, {"text_cfg": {}}, model)
        )
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._pos_cache: dict[tuple, torch.Tensor] = {}  # (rows, cols, device, dtype) -> T, C
        self._text_cache: dict[str, torch.Tensor] = {}  # prompt -> D (on CPU)
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_open_clip(cls, model: nn.Module, name: str, source: str, **kwargs) -> ClipBackbone:
        """Freeze and wrap an already-built open_clip CLIP (e.g. random ViT-B/32 for benchmarks)."""
        if "tokenizer" not in kwargs:
            kwargs["tokenizer"] = _make_tokenizer(name, {"text_cfg": {}}, model)
        return cls(model, name, source, **kwargs)

    def train(self, mode: bool = True) -> ClipBackbone:
        # Always eval: no dropout, fixed behaviour. The CLIP is a frozen judge, never trained.
        return super().train(False)

    # ---- sizes ------------------------------------------------------------------------------

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def native_size(self) -> int:
        return int(self.visual.image_size[0])

    @property
    def native_grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.visual.grid_size)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    # ---- image ------------------------------------------------------------------------------

    def pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        """Positional table for a rows x cols patch grid: (1 + rows*cols), C, CLS first, row-major.

        Bicubic resampling of the native grid (antialiased when shrinking); cached per grid size.
        """
        table = self.visual.positional_embedding  # 1 + gh*gw, C
        if (rows, cols) == self.native_grid:
            return table
        key = (rows, cols, table.device, table.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = self._resample_pos(table, rows, cols)
        return self._pos_cache[key]

    @torch.inference_mode(False)  # a plain tensor even if first built under inference_mode
    @torch.no_grad()
    def _resample_pos(self, table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        gh, gw = self.native_grid
        cls_pos, grid = table[:1], table[1:]
        grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # 1, C, gh, gw
        grid = F.interpolate(
            grid.float(), size=(rows, cols), mode="bicubic", align_corners=False, antialias=True
        )
        grid = grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(table.dtype)  # rows*cols, C
        return torch.cat([cls_pos, grid], dim=0)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0,1], B, 3, H, W -> B, 1 + rows*cols, C tokens entering the first block."""
        self._check_images(x)
        v = self.visual
        x = ((x - self.mean) / self.std).to(v.conv1.weight.dtype)
        # Patchify as reshape + one matmul: same result as the stride-p conv1 (which has no bias), but its
        # backward to the input is ~5x cheaper on CPU than the strided convolution's.
        b, c, h, w = x.shape
        p = self.patch_size
        rows, cols = h // p, w // p
        x = x[:, :, : rows * p, : cols * p].reshape(b, c, rows, p, cols, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * p * p)  # B, rows*cols, 3*p*p (row-major)
        x = x @ v.conv1.weight.reshape(v.conv1.weight.shape[0], -1).t()  # B, rows*cols, C
        if v.conv1.bias is not None:
            x = x + v.conv1.bias
        cls_tok = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self.pos_embed(rows, cols).to(x.dtype)  # B, T, C
        x = v.patch_dropout(x)
        return v.ln_pre(x)

    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One transformer block on B, T, C tokens; blk(x) up to float rounding (same ops, same weights).

        open_clip's blocks call nn.MultiheadAttention, which transposes to T, B, C inside: its
        in-projection then runs as a batched matmul over T (plus copies and zero-fills in backward),
        ~1.35x slower forward+backward on CPU than one matmul over all B*T tokens. For standard
        blocks we run the same weights batch-first; anything else goes through blk itself.
        """
        if not _is_plain_block(blk):
            return blk(x)
        mha = blk.attn
        B, T, C = x.shape
        h = mha.num_heads
        qkv = F.linear(blk.ln_1(x), mha.in_proj_weight, mha.in_proj_bias)  # B, T, 3C
        q, k, v = qkv.view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)  # each B, h, T, hs
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)  # B, T, C
        x = x + blk.ls_1(mha.out_proj(o))
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens leaving the last block, B, T, C -> image embeddings B, D (pool, ln_post, proj)."""
        pooled, _ = self.visual._pool(tokens)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0,1], B, 3, H, W (any H, W >= patch size) -> B, D unnormalised embeddings.

        Differentiable w.r.t. x. CLIP mean/std are applied here.
        """
        t = self.embed_patches(x)
        for blk in self.blocks():
            t = self.run_block(blk, t)
        return self.head(t)

    def structure_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Residual tokens entering the LAST block, B, T, C (T = 1 + rows*cols, CLS first)."""
        t = self.embed_patches(x)
        for blk in self.blocks()[:-1]:
            t = self.run_block(blk, t)
        return t

    def self_similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine self-similarity of structure_tokens: B, T, T in [-1, 1]; differentiable."""
        t = F.normalize(self.structure_tokens(x), dim=-1)  # B, T, C
        return t @ t.transpose(1, 2)

    def relevancy(self, x: torch.Tensor, text: str) -> torch.Tensor:
        """Where `text` is in each image: B, H, W in [0,1] (Chefer et al.); see t2l/clip/relevancy.py."""
        from t2l.clip.relevancy import relevancy_map

        return relevancy_map(self, x, text)

    # ---- text -------------------------------------------------------------------------------

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> N, D unnormalised embeddings (no grad); each string is encoded once, then cached."""
        if isinstance(texts, str):
            texts = [texts]
        # Plain tensors even when called under inference_mode: the cache outlives the caller's
        # context, and training losses later save these embeddings for backward.
        with torch.inference_mode(False), torch.no_grad():
            if not texts:
                return torch.empty(0, self.embed_dim, device=self.device)
            todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
            if todo:
                tokens = self.tokenizer(todo).to(self.device)  # N, L
                emb = self.clip.encode_text(tokens).float().cpu()  # N, D
                self._text_cache.update(zip(todo, emb, strict=True))
            return torch.stack([self._text_cache[t] for t in texts]).to(self.device)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def _check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise UsageError(
                f"CLIP expects images shaped B, 3, H, W; got {tuple(x.shape)}", "pass RGB batches"
            )
        p = self.patch_size
        if x.shape[-2] < p or x.shape[-1] < p:
            raise UsageError(
                f"image {tuple(x.shape[-2:])} is smaller than the CLIP patch size {p}",
                f"use at least {p}x{p}",
            )


def _is_plain_block(blk: nn.Module) -> bool:
    """An open_clip ResidualAttentionBlock whose attention is a plain self-attention (no extra
    biases, masks-free, dropout-free): what run_block reproduces exactly."""
    mha = getattr(blk, "attn", None)
    return (
        type(blk).__name__ == "ResidualAttentionBlock"
        and isinstance(mha, nn.MultiheadAttention)
        and not hasattr(blk, "ln_1_kv")
        and mha.batch_first
        and mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and not mha.add_zero_attn
        and (mha.dropout == 0.0 or not mha.training)
    )


def _make_tokenizer(name: str | None, model_cfg: dict, model: nn.Module | None = None):
    """open_clip's tokenizer for a known model name; else the bundled BPE SimpleTokenizer."""
    import open_clip

    if name and open_clip.get_model_config(name) is not None:
        return open_clip.get_tokenizer(name)
    text_cfg = model_cfg.get("text_cfg", {})
    ctx = text_cfg.get("context_length")
    if ctx is None and model is not None:
        ctx = getattr(model, "context_length", None)
    if text_cfg.get("hf_tokenizer_name"):  # e.g. SigLIP: a Hugging Face tokenizer (needs transformers)
        try:
            return open_clip.tokenizer.HFTokenizer(
                text_cfg["hf_tokenizer_name"],
                context_length=ctx or 77,
                **text_cfg.get("tokenizer_kwargs", {}),
            )
        except ImportError as e:
            raise UsageError(
                f"this CLIP's tokenizer needs {e.name or 'transformers'}", "pip install transformers"
            ) from None
    return open_clip.SimpleTokenizer(context_length=ctx or 77, **text_cfg.get("tokenizer_kwargs", {}))
