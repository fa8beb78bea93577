"""The Text2LIVE objective: composition, green screen, structure, sparsity and ROI bootstrap.

Pure functions of tensors (no CLIP calls here): the training loop computes embeddings once per
step and hands them in, so image and video share these terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GREEN = (0.0, 177 / 255, 64 / 255)  # the green-screen colour


# Shape checks only (no value checks: those would synchronise a GPU every step). A caller passing
# the wrong tensor gets the expected and the actual shape instead of a silent broadcast.
def _expect(ok: bool, what: str, expected: str, *tensors: torch.Tensor) -> None:
    if not ok:
        got = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise ValueError(f"{what} expects {expected}; got {got}")


def _embeddings(what: str, *ts: torch.Tensor) -> None:
    _expect(
        all(t.ndim == 2 for t in ts) and len({t.shape[-1] for t in ts}) == 1,
        what,
        "[N,D] embeddings of one D",
        *ts,
    )
    _expect(all(t.shape[0] > 0 for t in ts), what, "at least one row in each", *ts)


def _alpha(what: str, alpha: torch.Tensor) -> None:
    _expect(alpha.ndim == 4 and alpha.shape[1] == 1, what, "alpha [B,1,H,W]", alpha)


@dataclass(frozen=True)
class LossWeights:
    structure: float = 2.0  # self-similarity MSE (video: 3)
    comp: float = 1.0  # composition: spherical distance + directional
    screen: float = 1.0  # green-screen composite vs screen texts
    sparsity: float = 6.0  # times (l0 * L0 + l1 * L1) (video: 0.1)
    l0: float = 0.01  # smooth-L0 coefficient inside the sparsity term (video: 0.005)
    l1: float = 0.01  # L1 coefficient inside the sparsity term
    bootstrap: float = 10.0  # ROI bootstrap weight at step 0 (images: annealed linearly to 0)


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(x, y) = 2 * arcsin(|x^ - y^| / 2)^2 for unnormalised embeddings [..., D] -> [...], in [0, pi^2/2]."""
    _expect(x.shape[-1] == y.shape[-1], "spherical_distance", "[..., D] embeddings of one D", x, y)
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def text_distance_loss(views: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean spherical distance between every view [V,D] and every drawn target text [K,D] -> scalar."""
    _embeddings("text_distance_loss(views, targets)", views, targets)
    return spherical_distance(views[:, None, :], targets[None, :, :]).mean()


def directional_loss(out_emb: torch.Tensor, in_emb: torch.Tensor, text_dirs: torch.Tensor) -> torch.Tensor:
    """1 - cos(E(out) - E(in), e(comp) - e(src)), averaged over views [V,D] and text directions [K,D]."""
    _embeddings("directional_loss(out_emb, in_emb, text_dirs)", out_emb, in_emb, text_dirs)
    _expect(
        out_emb.shape == in_emb.shape,
        "directional_loss",
        "out_emb and in_emb of one shape [V,D]",
        out_emb,
        in_emb,
    )
    d_img = out_emb - in_emb  # V, D
    return (1 - F.cosine_similarity(d_img[:, None, :], text_dirs[None, :, :], dim=-1)).mean()


def structure_loss(ss_out: torch.Tensor, ss_in: torch.Tensor) -> torch.Tensor:
    """MSE between self-similarity matrices [B,T,T] (the input's is a constant)."""
    ok = ss_out.ndim == 3 and ss_out.shape == ss_in.shape and ss_out.shape[-1] == ss_out.shape[-2]
    _expect(ok, "structure_loss", "two self-similarity matrices of one shape [B,T,T]", ss_out, ss_in)
    return F.mse_loss(ss_out, ss_in.detach())


def sparsity_terms(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L0, L1) of alpha [B,1,H,W] in [0,1]: L0 = mean(2*sigmoid(5*alpha) - 1), L1 = mean(alpha)."""
    _alpha("sparsity_terms", alpha)
    return (2 * torch.sigmoid(5 * alpha) - 1).mean(), alpha.mean()


def bootstrap_loss(alpha: torch.Tensor, relevancy: torch.Tensor, size: int = 224) -> torch.Tensor:
    """MSE between alpha [B,1,H,W] and a relevancy map [B,1,h,w] in [0,1], both resized to size x size."""
    ok = alpha.ndim == relevancy.ndim == 4 and alpha.shape[:2] == relevancy.shape[:2] == (alpha.shape[0], 1)
    _expect(ok, "bootstrap_loss", "alpha [B,1,H,W] and relevancy [B,1,h,w] of one B", alpha, relevancy)
    a = F.interpolate(alpha, size=(size, size), mode="bilinear", align_corners=False)
    r = F.interpolate(relevancy, size=(size, size), mode="bilinear", align_corners=False)
    return F.mse_loss(a, r.detach())


def bootstrap_weight(step: int, steps: int, w0: float, anneal: bool = True) -> float:
    """w0 * (1 - (step + 1) / steps) when annealed (images), else w0; never negative."""
    return max(0.0, w0 * (1 - (step + 1) / steps)) if anneal else w0


def composite(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """alpha * edit + (1 - alpha) * background; rgba [B,4,H,W] straight alpha, background [B,3,H,W]."""
    ok = rgba.ndim == background.ndim == 4 and rgba.shape[1] == 4 and background.shape[1] == 3
    ok = ok and rgba.shape[-2:] == background.shape[-2:] and background.shape[0] in (1, rgba.shape[0])
    _expect(ok, "composite", "rgba [B,4,H,W] and background [B or 1,3,H,W] of one H, W", rgba, background)
    a = rgba[:, 3:4]
    return a * rgba[:, :3] + (1 - a) * background


def greenscreen(rgba: torch.Tensor) -> torch.Tensor:
    """The edit layer over the green-screen colour: [B,4,H,W] -> [B,3,H,W]."""
    _expect(rgba.ndim == 4 and rgba.shape[1] == 4, "greenscreen", "rgba [B,4,H,W]", rgba)
    g = torch.tensor(GREEN, dtype=rgba.dtype, device=rgba.device).view(1, 3, 1, 1)
    return composite(rgba, g.expand(rgba.shape[0], 3, *rgba.shape[-2:]))
