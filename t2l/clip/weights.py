"""Find CLIP weights and build the open_clip model they belong to: one small resolver.

    spec.model    open_clip model name ("ViT-B-32-quickgelu") or a JSON model config path
    spec.weights  pretrained tag ("openai"), a local file (.safetensors, .bin/.pth/.pt state dict,
                  OpenAI's TorchScript .pt) or "hf-hub:ORG/REPO" (config and weights from that repo)

A tag or hf-hub repo is looked up in the shared HF hub cache first (and verified: header, size,
checksum); then, for OpenAI's tags, in OpenAI's own ~/.cache/clip; only when missing and online do
we download it (after one short HEAD per candidate file, so a machine without network or a failing
hub fails in seconds, not after a minute of retries; a stalled transfer gives up after
HF_HUB_DOWNLOAD_TIMEOUT). Everything else raises WeightsUnavailable (exit 3) or, for a full disk,
ResourceError (exit 4).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2l.cache import hf_hub_cache_dir
from t2l.clip.spec import DEFAULT_MODEL, ClipSpec
from t2l.errors import InputError, ResourceError, UsageError, WeightsUnavailable

log = logging.getLogger("t2l.clip")

HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # preferred first
HUB_CONFIG = "open_clip_config.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROBE_TIMEOUT_S = 4.0  # the hub's first answer (one HEAD per candidate file) before any download
STALL_TIMEOUT_S = 10.0  # a download with no byte for this long gives up (HF_HUB_DOWNLOAD_TIMEOUT)
OPENAI_CLIP_DIR = "~/.cache/clip"  # where OpenAI's `clip` package (and the original Text2LIVE) keep weights
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
    spec: ClipSpec,
    download_progress=None,
    offline: bool | None = None,
    offline_reason: str | None = None,
    force: bool = False,
) -> ResolvedWeights:
    """Resolve `spec` to a model config and a weights file on disk, downloading only if allowed.

    download_progress: a tqdm-compatible class for hf_hub_download's progress bar (the CLI passes
    one drawing on stderr); None = huggingface_hub's default. offline: overrides is_offline(spec)
    (`t2l models path` looks in the cache only); offline_reason: why, for the error message.
    force: download a tag's or repo's files again even when cached (replaces damaged files).
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
        cfg_path, _ = fetch_from_hub(
            repo, (HUB_CONFIG,), cache, offline and why, download_progress, spec, force=force
        )
        hub_cfg = _read_json(cfg_path)
        model_cfg = hub_cfg.get("model_cfg", hub_cfg)
        if isinstance(model_cfg, dict) and not model_cfg.get("quick_gelu") and _registry_quick_gelu(repo):
            # open_clip's registry knows this repo's weights (e.g. OpenAI's) were trained with QuickGELU.
            log.info("hf-hub:%s: quick_gelu=True, as the weights were trained", repo)
            model_cfg = {**model_cfg, "quick_gelu": True}
        pre = hub_cfg.get("preprocess_cfg", {})
        path, source = fetch_from_hub(
            repo, HUB_FILES, cache, offline and why, download_progress, spec, force=force
        )
        return ResolvedWeights(
            model_name=weights,
            model_cfg=model_cfg,
            path=path,
            source=source,
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
    path, source = fetch_from_hub(
        repo,
        files,
        cache,
        offline and why,
        download_progress,
        spec,
        force=force,
        local_alternative=lambda: _usable_openai_file(pcfg),  # ~/.cache/clip/ViT-B-32.pt of OpenAI's clip
    )
    return ResolvedWeights(
        model_name=name,
        model_cfg=model_cfg,
        path=path,
        source=source,
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


class CorruptWeights(WeightsUnavailable):
    """A weights file in the cache failed its size, header or checksum check (exit 3)."""


class _Stalled(Exception):
    """No byte arrived for the download timeout (raised from inside huggingface_hub's retry loop)."""


def probe_timeout() -> float:
    """Seconds to wait for the hub's first answer: HF_HUB_ETAG_TIMEOUT if set, else PROBE_TIMEOUT_S."""
    return _env_seconds("HF_HUB_ETAG_TIMEOUT", PROBE_TIMEOUT_S)


def stall_timeout() -> float:
    """Seconds without a byte after which a download gives up: HF_HUB_DOWNLOAD_TIMEOUT, else 10."""
    return _env_seconds("HF_HUB_DOWNLOAD_TIMEOUT", STALL_TIMEOUT_S)


def find_cached(repo: str, files: tuple[str, ...], cache_dir: Path) -> tuple[Path, str] | None:
    """(path, file name) of the first of `files` in the HF cache for `repo`, or None. Never networks."""
    from huggingface_hub import try_to_load_from_cache

    for filename in files:
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir))
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit), filename
    return None


def verify_file(path: Path) -> str | None:
    """None when `path` looks intact, else why not (a few words). Needs no network.

    A .safetensors file must hold exactly the bytes its header describes (catches truncation and a
    damaged header); a file in the HF cache must hash to its blob's name (sha256 for LFS files such
    as weights, git's blob sha1 for small files), which catches flipped bytes anywhere.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty"
        if path.suffix == ".safetensors":
            why = _safetensors_problem(path, size)
            if why:
                return why
        blob = Path(os.path.realpath(path)).name
        if re.fullmatch(r"[0-9a-f]{64}", blob):
            digest = _file_digest(path, hashlib.sha256())
        elif re.fullmatch(r"[0-9a-f]{40}", blob):
            digest = _file_digest(path, hashlib.sha1(f"blob {size}\0".encode()))
        else:
            return None  # not a content-addressed blob: nothing to compare with
        if digest != blob:
            return f"its checksum is {digest[:12]}..., not {blob[:12]}... as recorded when it was downloaded"
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if n <= 0 or 8 + n > size:
            return f"it is cut short or its safetensors header is damaged ({size} bytes)"
        raw = f.read(n)
    try:
        header = json.loads(raw)
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        expected = 8 + n + max((int(e) for e in ends), default=0)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "its safetensors header is damaged"
    if expected != size:
        return f"it is {size} bytes but its header describes {expected} bytes (cut short?)"
    return None


def _file_digest(path: Path, h) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def openai_clip_file(pcfg: dict[str, Any]) -> tuple[Path, str] | None:
    """(~/.cache/clip/NAME.pt, its sha256) when the registry entry's URL is one of OpenAI's own
    (.../clip/models/<sha256>/NAME.pt, where OpenAI's `clip` package keeps its downloads), else None."""
    m = re.search(r"/([0-9a-f]{64})/([^/]+\.pt)$", pcfg.get("url") or "")
    if not m:
        return None
    return Path(OPENAI_CLIP_DIR).expanduser() / m.group(2), m.group(1)


def _usable_openai_file(pcfg: dict[str, Any]) -> Path | None:
    """The OpenAI TorchScript file for this entry if present and its sha256 matches the URL's."""
    hit = openai_clip_file(pcfg)
    if hit is None or not hit[0].is_file():
        return None
    path, sha = hit
    try:
        ok = _file_digest(path, hashlib.sha256()) == sha
    except OSError as e:
        log.warning("ignoring %s: cannot read it (%s)", path, e.strerror or e)
        return None
    if not ok:
        log.warning("ignoring %s: its sha256 is not the one in OpenAI's URL (damaged or another file)", path)
        return None
    log.info("using OpenAI's CLIP file %s (sha256 matches OpenAI's); nothing to download", path)
    return path


def fetch_from_hub(
    repo: str,
    files: tuple[str, ...],
    cache_dir: Path,
    offline: str | bool,
    download_progress,
    spec: ClipSpec,
    force: bool = False,
    local_alternative=None,
) -> tuple[Path, str]:
    """(path, source) of the cached file, else of a download of the first of `files` the repo has.

    offline: falsy to allow downloads, else the reason they are not allowed (for the message).
    force: download again even if cached (replaces a damaged file). local_alternative: a function
    returning a file to use instead of downloading (or None), tried after the cache.
    A cached or downloaded file is verified first (verify_file): CorruptWeights if it fails.
    """
    if not force:
        hit = find_cached(repo, files, cache_dir)
        if hit is not None:
            path, filename = hit
            why = verify_file(path)
            if why:
                raise _corrupt(path, why, spec)
            return path, f"hf-hub:{repo}@{filename}"
        alt = local_alternative() if local_alternative is not None else None
        if alt is not None:
            return alt, str(alt)
    looked_for = f"{repo} ({' or '.join(files)})"
    if offline:
        why = offline if isinstance(offline, str) else "offline mode is on"
        raise _unavailable(looked_for, cache_dir, why, spec)
    _check_writable(cache_dir)  # a read-only cache fails before any request
    filename = _probe(repo, files, looked_for, cache_dir, spec)
    path = _download(repo, filename, cache_dir, download_progress, force, looked_for, spec)
    why = verify_file(path)
    if why:
        raise _corrupt(path, why, spec)
    return path, f"hf-hub:{repo}@{filename}"


def _probe(repo: str, files: tuple[str, ...], looked_for: str, cache_dir: Path, spec: ClipSpec) -> str:
    """The first of `files` the hub has, asked with one HEAD each (no retries, probe_timeout()).

    A hub that answers 5xx, does not answer, or cannot be reached fails here, in seconds, rather
    than in huggingface_hub's minute of retries.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    timeout = probe_timeout()
    for filename in files:
        url = hf_hub_url(repo, filename)
        try:
            _with_deadline(lambda url=url: get_hf_file_metadata(url, timeout=timeout), timeout)
            return filename
        except EntryNotFoundError:
            continue  # the next candidate (.bin after .safetensors)
        except (RepositoryNotFoundError, GatedRepoError) as e:
            raise WeightsUnavailable(
                f"HF hub repo {repo} is missing or gated ({type(e).__name__})",
                "check the name, or pass --clip-weights /path/to/file.safetensors",
            ) from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None) or "an error"
            why = f"the HF hub {constants.ENDPOINT} answered HTTP {status} ({_first_line(e)})"
            raise _unavailable(looked_for, cache_dir, why, spec) from None
        except TimeoutError:
            why = f"the HF hub {constants.ENDPOINT} did not answer within {timeout:g} s"
            raise _unavailable(looked_for, cache_dir, why, spec) from None
        except Exception as e:  # noqa: BLE001 - DNS, refused, TLS, proxy: all mean "no network"
            log.debug("hub probe failed: %s", e)
            why = "the HF hub cannot be reached (no network?)"
            raise _unavailable(looked_for, cache_dir, why, spec) from None
    raise WeightsUnavailable(
        f"HF hub repo {repo} has none of {', '.join(files)}", "pass --clip-weights /path/to/file.safetensors"
    )


def _with_deadline(fn, timeout: float):
    """fn() in a daemon thread; TimeoutError after `timeout` s (a hanging DNS lookup, which no socket
    timeout covers, cannot hold us longer either). Its exceptions are re-raised here."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name="t2l-hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _check_writable(cache_dir: Path) -> None:
    """Fail before downloading when the cache folder cannot be written (read-only, no permission)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".t2l-write-test-", dir=cache_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(cache_dir, "") from None
        raise _not_writable(cache_dir, e) from None


def _download(
    repo, filename, cache_dir: Path, progress, force: bool, looked_for: str, spec: ClipSpec
) -> Path:
    """hf_hub_download with a bounded stall: gives up once no byte has arrived for stall_timeout().

    huggingface_hub resumes a broken transfer itself (up to 5 times, 1 s apart, with a Range
    request) and logs a warning each time; a logging filter turns that warning into one t2l line,
    or into a stop when the transfer has been idle for the whole timeout. A failed download leaves
    nothing behind (huggingface_hub writes to a per-process temporary file and deletes it).
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    stall_s = stall_timeout()
    guard = _StallGuard(stall_s, filename)
    hf_log = logging.getLogger("huggingface_hub.file_download")
    saved = constants.HF_HUB_DOWNLOAD_TIMEOUT, hf_log.level
    constants.HF_HUB_DOWNLOAD_TIMEOUT = stall_s
    if hf_log.getEffectiveLevel() > logging.WARNING:
        hf_log.setLevel(logging.WARNING)  # the filter only sees records the logger lets through
    hf_log.addFilter(guard)
    try:
        path = huggingface_hub.hf_hub_download(
            repo,
            filename,
            cache_dir=str(cache_dir),
            tqdm_class=guard.progress_class(progress),
            force_download=force,
            etag_timeout=probe_timeout(),
        )
        return Path(path)
    except _Stalled:
        why = f"the download stalled (no data for {stall_s:g} s, HF_HUB_DOWNLOAD_TIMEOUT)"
        raise _unavailable(looked_for, cache_dir, why, spec) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None) or "an error"
        why = f"the HF hub answered HTTP {status} during the download ({_first_line(e)})"
        raise _unavailable(looked_for, cache_dir, why, spec) from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(cache_dir, filename) from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _not_writable(cache_dir, e) from None
        why = f"the download failed ({_first_line(e)})"
        raise _unavailable(looked_for, cache_dir, why, spec) from None
    except Exception as e:  # noqa: BLE001 - connection lost for good, timeouts after the retries
        why = f"the download broke off ({type(e).__name__}: {_first_line(e)})"
        raise _unavailable(looked_for, cache_dir, why, spec) from None
    finally:
        hf_log.removeFilter(guard)
        constants.HF_HUB_DOWNLOAD_TIMEOUT, _ = saved
        hf_log.setLevel(saved[1])


class _StallGuard(logging.Filter):
    """Watches one download: when the last byte arrived, and huggingface_hub's resume warnings."""

    def __init__(self, stall_s: float, filename: str):
        super().__init__()
        self.stall_s = stall_s
        self.filename = filename
        self.last_byte = time.monotonic()

    def progress_class(self, base):
        """`base` (or huggingface_hub's tqdm) that also records when bytes arrive."""
        if base is None:
            from huggingface_hub.utils import tqdm as base
        guard = self

        class Tracked(base):
            def update(self, n=1):
                if n and n > 0:
                    guard.last_byte = time.monotonic()
                return super().update(n)

        return Tracked

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if not msg.startswith("Error while downloading from"):
            return True
        if "Trying to resume" not in msg:
            return False  # "Max retries exceeded": the error itself follows
        idle = time.monotonic() - self.last_byte
        if idle >= 0.9 * self.stall_s:
            raise _Stalled(f"no data for {idle:.1f} s")
        reason = msg.split(": ", 1)[-1].splitlines()[0]
        log.warning("the download of %s broke off (%s); resuming", self.filename, reason)
        return False


def _download_cmd(spec: ClipSpec) -> str:
    if spec.weights.startswith("hf-hub:"):
        return f"t2l models download {spec.weights}"
    return f"t2l models download {spec.model}" + (
        f" --weights {spec.weights}" if spec.weights != "openai" else ""
    )


def _unavailable(looked_for: str, cache_dir: Path, why: str, spec: ClipSpec) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"CLIP weights {spec.model}/{spec.weights} not found: looked for {looked_for} in the HF cache {cache_dir} "
        f"and {why}",
        f"run `{_download_cmd(spec)}` on a machine with network (same HF cache), or pass --clip-weights /path/to/file.safetensors",
    )


def _corrupt(path: Path, why: str, spec: ClipSpec) -> CorruptWeights:
    return CorruptWeights(
        f"the cached CLIP weights {path} are damaged: {why}",
        f"run `{_download_cmd(spec)} --force` to download them again, or pass --clip-weights /path/to/file.safetensors",
    )


def _not_writable(cache_dir: Path, e: OSError) -> WeightsUnavailable:
    where = f": {e.filename}" if e.filename and str(e.filename) != str(cache_dir) else ""
    return WeightsUnavailable(
        f"cannot write to the HF cache {cache_dir} ({e.strerror or e}{where})",
        "set HF_HOME (or HF_HUB_CACHE) to a writable folder, or pass --clip-weights /path/to/file.safetensors",
    )


def _disk_full(cache_dir: Path, filename: str) -> ResourceError:
    what = f" while downloading {filename}" if filename else ""
    return ResourceError(
        f"no space left on the disk of the HF cache {cache_dir}{what} (the partial file was removed)",
        "free some space, set HF_HOME to a folder on another disk, or pass --clip-weights /path/to/file.safetensors",
    )


def _set_hub_offline(offline: bool) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; our flag must win at run time.
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = offline


def _env_seconds(var: str, default: float) -> float:
    try:
        value = float(os.environ.get(var, ""))
    except ValueError:
        return default
    return value if value > 0 else default


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
