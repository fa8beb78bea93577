"""Shared fixtures: a tiny random CLIP saved to disk and loaded through t2l's own resolver."""

from __future__ import annotations

import json
import os

import pytest

# Tests share 2 cores; keep torch from oversubscribing and never reach the network.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["HF_HUB_OFFLINE"] = "1"

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """(config_json_path, weights_safetensors_path) of a tiny random open_clip CLIP (seed 0)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_clip")
    cfg_path = d / "tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=TINY_CLIP_CFG["embed_dim"],
        quick_gelu=True,
        vision_cfg=TINY_CLIP_CFG["vision_cfg"],
        text_cfg=TINY_CLIP_CFG["text_cfg"],
    )
    weights = d / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_path, weights


@pytest.fixture(scope="session")
def tiny_clip_args(tiny_clip_files):
    """CLI arguments that select the tiny CLIP."""
    cfg, weights = tiny_clip_files
    return ["--clip-model", str(cfg), "--clip-weights", str(weights), "--offline"]


@pytest.fixture
def online_hf_cache(monkeypatch, tmp_path):
    """Not offline (env and huggingface_hub's constant, read at its import) and an empty HF cache in tmp.

    Tests that must not reach the network cut it themselves.
    """
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"
