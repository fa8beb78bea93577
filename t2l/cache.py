"""Where t2l keeps files between runs, and where the shared Hugging Face hub cache lies.

No torch here. Both locations are resolved at call time (not at import), so an environment
variable set by a test or a wrapper script after start-up is still honoured.
"""

from __future__ import annotations

import os
from pathlib import Path


def t2l_cache_dir() -> Path:
    """t2l's own cache folder (not created here).

    T2L_CACHE_DIR wins; otherwise platformdirs' user cache dir for "t2l"
    (~/.cache/t2l on Linux, ~/Library/Caches/t2l on macOS, %LOCALAPPDATA%\\t2l\\Cache on Windows).
    """
    env = os.environ.get("T2L_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("t2l", appauthor=False))


def hf_hub_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache root, the same one huggingface_hub and open_clip use.

    Order: `override` (ClipSpec.cache_dir), HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub,
    ~/.cache/huggingface/hub. Sharing it means users who already downloaded CLIP weights with
    open_clip, timm or transformers need no second copy.
    """
    if override:
        return Path(override).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the second is the legacy name
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"
