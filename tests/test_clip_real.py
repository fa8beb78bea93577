"""Opt-in check with real CLIP weights: T2L_TEST_CLIP_WEIGHTS=/path/to/open_clip_model.safetensors.

Optionally T2L_TEST_CLIP_MODEL (default ViT-B-32-quickgelu). Skipped otherwise: tests never download.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

WEIGHTS = os.environ.get("T2L_TEST_CLIP_WEIGHTS")

pytestmark = [
    pytest.mark.realweights,
    pytest.mark.skipif(not WEIGHTS, reason="set T2L_TEST_CLIP_WEIGHTS to a CLIP weights file to run"),
]


@pytest.fixture(scope="module")
def clip():
    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip

    model = os.environ.get("T2L_TEST_CLIP_MODEL", "ViT-B-32-quickgelu")
    return load_clip(ClipSpec(model=model, weights=WEIGHTS, offline=True))


@pytest.fixture(scope="module")
def cat(examples_dir):
    img = Image.open(examples_dir / "chelsea.png").convert("RGB")
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255  # 1, 3, H, W


def _scores(clip, x, prompts):
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
    txt = torch.nn.functional.normalize(clip.encode_text(prompts), dim=-1)
    return (img @ txt.T)[0]


def test_cat_scores_above_dog_at_native_and_any_size(clip, cat):
    n = clip.native_size
    square = torch.nn.functional.interpolate(cat, size=(n, n), mode="bilinear", antialias=True)
    s = _scores(clip, square, ["a photo of a cat", "a photo of a dog"])
    assert s[0] > s[1]
    h, w = cat.shape[-2:]  # shorter side 224, longer side capped at 320, as the pipeline's views
    scale = 224 / min(h, w)
    size = (min(round(h * scale), 320), min(round(w * scale), 320))
    wide = torch.nn.functional.interpolate(cat, size=size, mode="bilinear", antialias=True)
    s = _scores(clip, wide, ["a photo of a cat", "a photo of a dog"])
    assert s[0] > s[1]


def test_cat_relevancy_has_structure(clip, cat):
    rel = clip.relevancy(cat, "cat")[0]
    assert rel.shape == cat.shape[-2:]
    assert rel.min() == 0 and rel.max() == 1 and rel.std() > 0.05  # a map with structure, not flat
