"""Which CLIP model and weights to use. No torch import here: the CLI builds this from flags."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "ViT-B-32-quickgelu"  # OpenAI weights were trained with QuickGELU
DEFAULT_WEIGHTS = "openai"


@dataclass(frozen=True)
class ClipSpec:
    model: str = DEFAULT_MODEL  # open_clip model name, or path to a JSON model config
    weights: str = DEFAULT_WEIGHTS  # pretrained tag, local file (.safetensors/.bin/.pt), or hf-hub:ORG/REPO
    offline: bool = False  # never touch the network (also when HF_HUB_OFFLINE is set)
    cache_dir: str | None = None  # HF hub cache root; None = the shared HF cache (HF_HOME / HF_HUB_CACHE)
