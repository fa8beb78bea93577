"""Find CLIP weights and build the open_clip model they belong to: one small resolver.

    spec.model    open_clip model name ("ViT-B-32-quickgelu") or a JSON model config path
    spec.weights  pretrained tag ("openai"), a local file (.safetensors, .bin/.pth/.pt state dict,
                  OpenAI's TorchScript .pt) or "hf-hub:ORG/REPO" (config and weights from that repo)

A tag or hf-hub repo is looked up in the shared HF hub cache first; only when it is missing and we
are online do we download it (after a short reachability probe, so a machine without network fails
in seconds, not after a minute of retries). Everything else raises WeightsUnavailable (exit 3).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2l.cache import hf_hub_cache_dir
from t2l.clip.spec import DEFAULT_MODEL, ClipSpec
from t2l.errors import InputError, UsageError, WeightsUnavailable

log = logging.getLogger("t2l.clip")

HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # preferred first
HUB_CONFIG = "open_clip_config.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROBE_TIMEOUT_S = 4.0  # reachability probe before any download
_TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ResolvedWeights:
    """Everything needed to build the model and say where its weights came from (run.json)."""

    model_name: str  # open_clip name, JSON config path, or hf-hub:ORG/REPO
    # open_clip's config schema: embed_dim, quick_gelu, vision_cfg, text_cfg
    model_cfg: dict[str, Any] = field(repr=False)
    path: Path  # the weights file on disk
    source: str  # "hf-hub:ORG/REPO@FILE" or the local path
    mean: tuple[float, float, float] = OPENAI_MEAN  # CLIP input normalisation (RGB in [0,1])
    std: tuple[float, float, float] = OPENAI_STD
    tokenizer_name: str | None = None  # open_clip name for get_tokenizer; None = SimpleTokenizer


def is_offline(spec: ClipSpec) -> bool:
    """--offline / T2L_OFFLINE (spec.offline) or HF_HUB_OFFLINE set in the environment."""
    return spec.offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_weights(
    spec: ClipSpec, download_progress=None, offline: bool | None = None, offline_reason: str | None = None
) -> ResolvedWeights:
    """Resolve `spec` to a model config and a weights file on disk, downloading only if allowed.

    download_progress: a tqdm-compatible class for hf_hub_download's progress bar (the CLI passes
    one drawing on stderr); None = huggingface_hub's default. offline: overrides is_offline(spec)
    (`t2l models path` looks in the cache only); offline_reason: why, for the error message.
    """
    offline = is_offline(spec) if offline is None else offline
    why = offline_reason or "offline mode is on (--offline, T2L_OFFLINE or HF_HUB_OFFLINE)"
    _set_hub_offline(offline)
    cache = hf_hub_cache_dir(spec.cache_dir)
    weights = spec.weights.strip()
    if not weights:
        raise UsageError(
            "--clip-weights is empty", "pass a pretrained tag (openai), a file, or hf-hub:ORG/REPO"
        )

    if weights.startswith("hf-hub:"):
        repo = weights[len("hf-hub:") :].strip("/")
        cfg_path, _ = fetch_from_hub(repo, (HUB_CONFIG,), cache, offline and why, download_progress, spec)
        hub_cfg = _read_json(cfg_path)
        model_cfg = hub_cfg.get("model_cfg", hub_cfg)
        if isinstance(model_cfg, dict) and not model_cfg.get("quick_gelu") and _registry_quick_gelu(repo):
            # open_clip's registry knows this repo's weights (e.g. OpenAI's) were trained with QuickGELU.
            log.info("hf-hub:%s: quick_gelu=True, as the weights were trained", repo)
            model_cfg = {**model_cfg, "quick_gelu": True}
        pre = hub_cfg.get("preprocess_cfg", {})
        path, filename = fetch_from_hub(repo, HUB_FILES, cache, offline and why, download_progress, spec)
        return ResolvedWeights(
            model_name=weights,
            model_cfg=model_cfg,
            path=path,
            source=f"hf-hub:{repo}@{filename}",
            mean=tuple(pre.get("mean", OPENAI_MEAN)),
            std=tuple(pre.get("std", OPENAI_STD)),
        )

    name, model_cfg, tokenizer_name = model_config(spec.model)
    local = Path(weights).expanduser()
    if local.is_file():
        if _is_torchscript(local) and not model_cfg.get("quick_gelu", False):
            # Only OpenAI ships TorchScript CLIPs, and those were trained with QuickGELU.
            log.info("%s is an OpenAI TorchScript archive: quick_gelu=True", local)
            model_cfg = {**model_cfg, "quick_gelu": True}
        return ResolvedWeights(
            name, model_cfg, local.resolve(), str(local.resolve()), tokenizer_name=tokenizer_name
        )
    if _looks_like_path(weights):
        what = "is a folder, not a file" if local.is_dir() else "does not exist"
        raise InputError(f"CLIP weights file {weights} {what}", "check the --clip-weights path")

    if tokenizer_name is None:  # a JSON config has no pretrained registry entry
        raise UsageError(
            f"--clip-weights {weights!r} is not a file, and tags only work with open_clip model names "
            f"(--clip-model is the config {spec.model})",
            "pass --clip-weights /path/to/file.safetensors",
        )
    pcfg = pretrained_cfg(name, weights)
    repo, files = hub_location(name, weights, pcfg)
    trained_quick = pcfg.get("quick_gelu")  # absent: the registry does not say; keep the config's
    if trained_quick is not None and bool(trained_quick) != bool(model_cfg.get("quick_gelu", False)):
        # The weights decide the activation: OpenAI's were trained with QuickGELU and degrade with GELU.
        log.info("%s/%s: quick_gelu=%s, as the weights were trained", name, weights, trained_quick)
        model_cfg = {**model_cfg, "quick_gelu": bool(trained_quick)}
    path, filename = fetch_from_hub(repo, files, cache, offline and why, download_progress, spec)
    return ResolvedWeights(
        model_name=name,
        model_cfg=model_cfg,
        path=path,
        source=f"hf-hub:{repo}@{filename}",
        mean=tuple(pcfg.get("mean", OPENAI_MEAN)),
        std=tuple(pcfg.get("std", OPENAI_STD)),
        tokenizer_name=name,
    )


# ---- model configs and the pretrained registry --------------------------------------------------


def model_config(model: str) -> tuple[str, dict[str, Any], str | None]:
    """(display name, open_clip model config, open_clip tokenizer name or None) for --clip-model."""
    model = (model or "").strip()
    if not model:
        raise UsageError("--clip-model is empty", f"use an open_clip model name such as {DEFAULT_MODEL}")
    if model.startswith("hf-hub:"):
        raise UsageError(f"--clip-model {model} is a hub repo", f"pass it as --clip-weights {model}")
    path = Path(model).expanduser()
    if path.is_dir():
        raise InputError(f"CLIP model config {model} is a folder", "pass a JSON model config file")
    if model.lower().endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError(f"CLIP model config {model} does not exist", "check the --clip-model path")
        cfg = _read_json(path)
        cfg = cfg.get("model_cfg", cfg)
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise InputError(
                    f"CLIP model config {model} has no {key!r}",
                    "use open_clip's model config schema (embed_dim, quick_gelu, vision_cfg, text_cfg)",
                )
        return str(path), cfg, None
    import open_clip

    model = model.replace("/", "-")  # OpenAI spells it ViT-B/32
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise UsageError(
            f"unknown CLIP model {model!r}",
            f"use an open_clip model name such as {DEFAULT_MODEL}, or a path to a JSON model config",
        )
    return model, cfg, model


def pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    """open_clip's registry entry for (model, tag); UsageError listing the known tags if absent."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise UsageError(
            f"--clip-weights {tag!r} is neither a file nor a pretrained tag of {model} (known tags: {tags})",
            "pass a known tag or a path to a .safetensors/.bin/.pt file",
        )
    return cfg


def hub_location(model: str, tag: str, pcfg: dict[str, Any] | None = None) -> tuple[str, tuple[str, ...]]:
    """(HF repo id, candidate file names) where open_clip publishes `model`/`tag`."""
    pcfg = pcfg if pcfg is not None else pretrained_cfg(model, tag)
    hub = pcfg.get("hf_hub", "")
    if not hub:
        raise WeightsUnavailable(
            f"{model}/{tag} is only published at {pcfg.get('url') or 'an unknown URL'}, not on the HF hub",
            "download that file yourself and pass --clip-weights /path/to/file",
        )
    if hub.endswith("/"):  # "ORG/REPO/": open_clip's default file names
        return hub.rstrip("/"), HUB_FILES
    repo, filename = hub.rsplit("/", 1)
    files = (filename,)
    if filename.endswith((".bin", ".pth")):  # prefer a safetensors twin, as open_clip does
        files = (filename.rsplit(".", 1)[0] + ".safetensors", filename)
    return repo, files


def _registry_quick_gelu(repo: str) -> bool:
    """True when open_clip's pretrained registry lists weights in HF repo `repo` trained with QuickGELU."""
    import open_clip

    for model, tag in open_clip.list_pretrained():
        pcfg = open_clip.get_pretrained_cfg(model, tag)
        hub = pcfg.get("hf_hub", "")
        hub_repo = hub.rstrip("/") if hub.endswith("/") else hub.rsplit("/", 1)[0]
        if hub and hub_repo == repo and pcfg.get("quick_gelu"):
            return True
    return False


# ---- the HF hub cache and downloads -------------------------------------------------------------


def find_cached(repo: str, files: tuple[str, ...], cache_dir: Path) -> tuple[Path, str] | None:
    """(path, file name) of the first of `files` in the HF cache for `repo`, or None. Never networks."""
    from huggingface_hub import try_to_load_from_cache

    for filename in files:
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir))
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit), filename
    return None


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A quick HEAD to the hub endpoint (proxies respected). False on any failure or after `timeout`.

    Runs in a daemon thread so that a hanging DNS lookup (which no socket timeout covers) cannot
    hold us longer than `timeout` either.
    """
    import threading

    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    ok = threading.Event()

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout)
            ok.set()
        except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, TLS: all mean "no network"
            log.debug("hub probe failed: %s", e)

    t = threading.Thread(target=probe, name="t2l-hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    return ok.is_set()


def fetch_from_hub(
    repo: str,
    files: tuple[str, ...],
    cache_dir: Path,
    offline: str | bool,
    download_progress,
    spec: ClipSpec,
) -> tuple[Path, str]:
    """The cached file, else a download of the first of `files` the repo has, else WeightsUnavailable.

    offline: falsy to allow downloads, else the reason they are not allowed (for the message).
    """
    hit = find_cached(repo, files, cache_dir)
    if hit is not None:
        return hit
    looked_for = f"{repo} ({' or '.join(files)})"
    if offline:
        why = offline if isinstance(offline, str) else "offline mode is on"
        raise _unavailable(looked_for, cache_dir, why, spec)
    if not hub_reachable():
        raise _unavailable(looked_for, cache_dir, "the HF hub cannot be reached (no network?)", spec)

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    cache_dir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for filename in files:
        try:
            path = hf_hub_download(repo, filename, cache_dir=str(cache_dir), tqdm_class=download_progress)
            return Path(path), filename
        except EntryNotFoundError as e:  # try the next candidate (.bin after .safetensors)
            last = e
        except (RepositoryNotFoundError, GatedRepoError) as e:
            raise WeightsUnavailable(
                f"HF hub repo {repo} is missing or gated ({type(e).__name__})",
                "check the name, or pass --clip-weights /path/to/file.safetensors",
            ) from None
        except Exception as e:  # noqa: BLE001 - network errors mid-download
            raise _unavailable(
                looked_for, cache_dir, f"the download failed ({type(e).__name__}: {_first_line(e)})", spec
            ) from None
    raise WeightsUnavailable(
        f"HF hub repo {repo} has none of {', '.join(files)} ({_first_line(last) if last else 'not found'})",
        "pass --clip-weights /path/to/file.safetensors",
    )


def _unavailable(looked_for: str, cache_dir: Path, why: str, spec: ClipSpec) -> WeightsUnavailable:
    if spec.weights.startswith("hf-hub:"):
        cmd = f"t2l models download {spec.weights}"
    else:
        cmd = f"t2l models download {spec.model}" + (
            f" --weights {spec.weights}" if spec.weights != "openai" else ""
        )
    return WeightsUnavailable(
        f"CLIP weights {spec.model}/{spec.weights} not found: looked for {looked_for} in the HF cache {cache_dir} "
        f"and {why}",
        f"run `{cmd}` on a machine with network (same HF cache), or pass --clip-weights /path/to/file.safetensors",
    )


def _set_hub_offline(offline: bool) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; our flag must win at run time.
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = offline


# ---- loading -------------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors from a .safetensors file, a torch state dict (.bin/.pth/.pt) or a TorchScript archive."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            sd = {k: v for k, v in sd.items() if k not in _TORCHSCRIPT_EXTRA_KEYS}
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, pickled code...
        raise InputError(
            f"cannot read CLIP weights {path} ({_why_unreadable(e)})",
            "pass a .safetensors, a torch state dict or OpenAI's TorchScript .pt",
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise InputError(f"CLIP weights {path} hold no state dict", "pass a CLIP checkpoint")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def build_model(cfg: dict[str, Any], name: str = "config"):
    """An open_clip CLIP with random weights from a model config; ViT image towers only.

    name: the model name or config path, for error messages.
    """
    import open_clip

    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(cfg.get(key), dict):
            raise InputError(f"CLIP model config {name}: {key!r} is not an object", "check the config fields")
    vision = cfg["vision_cfg"]
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):
        raise UsageError(
            "t2l needs an open_clip ViT image tower (timm and ResNet towers are not supported)",
            f"use a ViT CLIP such as {DEFAULT_MODEL}",
        )
    cfg = dict(cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        return cls(**cfg)
    except (TypeError, KeyError, ValueError, AssertionError, AttributeError, ZeroDivisionError) as e:
        raise InputError(
            f"invalid CLIP model config {name} ({type(e).__name__}: {_first_line(e)})",
            "check the config fields",
        ) from None


def load_weights_into(model, sd: dict[str, Any], path: Path, model_name: str) -> None:
    """Strict load; a mismatch names the file, the model and a few offending keys."""
    own = model.state_dict()
    if "logit_scale" in sd and sd["logit_scale"].ndim != own["logit_scale"].ndim:
        sd = {**sd, "logit_scale": sd["logit_scale"].reshape(own["logit_scale"].shape)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        )
        raise InputError(
            f"CLIP weights {path} do not fit model {model_name}: {detail}",
            "pass the --clip-model these weights were trained as",
        )
    model.load_state_dict(sd, strict=True)


def _is_torchscript(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _why_unreadable(e: Exception) -> str:
    """A short reason for a weights file torch/safetensors refused (torch's unpickling text is a paragraph)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError):
        return "not a torch state dict of tensors (or it holds pickled objects, which t2l never loads)"
    return f"{type(e).__name__}: {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception message (ANSI styling removed), at most 200 chars."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    return (lines[0] if lines else "no details")[:200]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read JSON {path} ({e})", "pass a valid open_clip model config") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} is not a JSON object", "pass a valid open_clip model config")
    return obj


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or "/" in s
        or s.startswith((".", "~"))
        or s.endswith((".safetensors", ".bin", ".pth", ".pt"))
    )
