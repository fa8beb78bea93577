"""`t2l models`: download, list and locate CLIP weights in the shared Hugging Face cache.

torch and open_clip are imported inside the commands only (`t2l --help` stays fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from t2l.cli.app import Command, Group, app
from t2l.cli.common import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_WEIGHTS,
    FLAG,
    JsonOpt,
    download_progress_class,
    emit_json,
    handle_errors,
    info,
)
from t2l.errors import UsageError

models_app = typer.Typer(
    cls=Group,
    name="models",
    help="Download, list and locate CLIP weights (kept in the shared Hugging Face cache).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

NameArg = Annotated[
    str,
    typer.Argument(help="open_clip model name (ViT-B-32-quickgelu), or hf-hub:ORG/REPO.", show_default=True),
]
WeightsOpt = Annotated[
    str, typer.Option("--weights", help="Pretrained tag of that model (openai, laion400m_e32...).")
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="HF hub cache root (default: HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub).",
    ),
]

# Files that mark a cached HF repo as holding open_clip weights.
_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_config.json")


@models_app.command("download", cls=Command)
@handle_errors
def download(
    name: NameArg = DEFAULT_CLIP_MODEL,
    weights: WeightsOpt = DEFAULT_CLIP_WEIGHTS,
    cache_dir: CacheDirOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", metavar=FLAG, help="Download again even if cached (replaces a damaged file)."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Download CLIP weights into the HF cache (nothing happens if they are there) and print the path."""
    from t2l.clip.spec import ClipSpec
    from t2l.clip.weights import CorruptWeights, resolve_weights

    spec = _spec(name, weights, cache_dir, ClipSpec)
    info(f"resolving {spec.model}/{spec.weights} ...")
    try:
        r = resolve_weights(spec, download_progress=download_progress_class(), offline=False, force=force)
    except CorruptWeights as e:  # you asked for a download: replace the damaged file
        info(f"{e.problem}; downloading it again")
        r = resolve_weights(spec, download_progress=download_progress_class(), offline=False, force=True)
    _print_result(r, json_out)


@models_app.command("path", cls=Command)
@handle_errors
def path(
    name: NameArg = DEFAULT_CLIP_MODEL,
    weights: WeightsOpt = DEFAULT_CLIP_WEIGHTS,
    cache_dir: CacheDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the cached weights file of a model (never downloads; exit 3 if it is not cached)."""
    from t2l.clip.spec import ClipSpec
    from t2l.clip.weights import resolve_weights

    r = resolve_weights(
        _spec(name, weights, cache_dir, ClipSpec),
        offline=True,
        offline_reason="`t2l models path` never downloads",
    )
    _print_result(r, json_out)


@models_app.command("list", cls=Command)
@handle_errors
def list_(cache_dir: CacheDirOpt = None, json_out: JsonOpt = False) -> None:
    """List the CLIP weights on disk: HF cache (complete and partial downloads) and OpenAI's ~/.cache/clip.

    One line per file: model(s), size, state, path. Works with an empty cache; never networks.
    """
    from t2l.cache import hf_hub_cache_dir

    root = hf_hub_cache_dir(cache_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(
            f"the HF cache {root} is a file, not a folder", "pass a folder to --cache-dir or HF_HUB_CACHE"
        )
    rows = cached_clip_files(root)
    if json_out:
        for row in rows:
            emit_json(row)
        return
    if not rows:
        info(f"no CLIP weights cached in {root}; get the default ones with `t2l models download`")
        return
    info(f"CLIP weights in {root} (and OpenAI's ~/.cache/clip):")
    w_model = max(len(r["model"]) for r in rows)
    w_file = max(len(r["file"]) for r in rows)
    for row in rows:  # one plain line per file on stdout: readable, and greppable in a pipe
        typer.echo(
            f"{row['model']:<{w_model}}  {row['file']:<{w_file}}  {_human(row['size_bytes']):>9}  "
            f"{row['state']:<8}  {row['path']}"
        )


def cached_clip_files(root: Path) -> list[dict]:
    """One dict per CLIP weights file on disk: repo, file, model, size_bytes, state, path.

    state: "complete" (an HF cache file, newest revision per repo and file), "partial" (an
    unfinished download: huggingface_hub's *.incomplete blob) or "openai" (OpenAI's TorchScript
    file in ~/.cache/clip; checked against its sha256 when used). model: the open_clip model/tag
    pairs of the pretrained table that use the file ("?" when none).
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    by_repo, by_openai = _registry_index()
    rows = []
    try:
        cache = scan_cache_dir(root)
    except CacheNotFound:
        cache = None
    for repo in sorted(cache.repos if cache else [], key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        newest: dict[str, object] = {}
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified):
            for f in rev.files:
                if f.file_name in _CLIP_FILES:
                    newest[f.file_name] = f
        for name, f in sorted(newest.items()):
            if name.endswith(".json") and len(newest) > 1:
                continue  # the config beside weights: not weights itself
            rows.append(
                _row(repo.repo_id, name, by_repo.get(repo.repo_id), f.size_on_disk, "complete", f.file_path)
            )
    if root.is_dir():  # unfinished downloads: scan_cache_dir does not list them
        for part in sorted(root.glob("models--*/blobs/*.incomplete")):
            repo_id = part.parent.parent.name[len("models--") :].replace("--", "/")
            if repo_id in by_repo or any(part.parent.parent.glob("snapshots/*/open_clip_*")):
                size = part.stat().st_size
                rows.append(_row(repo_id, "(partial download)", by_repo.get(repo_id), size, "partial", part))
    from t2l.clip.weights import OPENAI_CLIP_DIR

    openai_dir = Path(OPENAI_CLIP_DIR).expanduser()
    if openai_dir.is_dir():
        for pt in sorted(openai_dir.glob("*.pt")):
            rows.append(_row("openai/clip", pt.name, by_openai.get(pt.name), pt.stat().st_size, "openai", pt))
    return rows


def _row(repo: str, file: str, models: list[str] | None, size: int, state: str, path) -> dict:
    return {
        "model": ", ".join(models) if models else "?",
        "repo": repo,
        "file": file,
        "size_bytes": size,
        "state": state,
        "path": str(path),
    }


def _registry_index() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """From open_clip's pretrained table: HF repo -> ["model/tag", ...], OpenAI .pt name -> same."""
    import open_clip

    from t2l.clip.weights import openai_clip_file

    by_repo: dict[str, list[str]] = {}
    by_openai: dict[str, list[str]] = {}
    for model, tag in open_clip.list_pretrained():
        pcfg = open_clip.get_pretrained_cfg(model, tag)
        hub = pcfg.get("hf_hub", "")
        if hub:
            repo = hub.rstrip("/") if hub.endswith("/") else hub.rsplit("/", 1)[0]
            by_repo.setdefault(repo, []).append(f"{model}/{tag}")
        legacy = openai_clip_file(pcfg)
        if legacy is not None:
            by_openai.setdefault(legacy[0].name, []).append(f"{model}/{tag}")
    return by_repo, by_openai


def _spec(name: str, weights: str, cache_dir: Path | None, ClipSpec):
    if name.startswith("hf-hub:"):  # the repo carries config and weights
        return ClipSpec(weights=name, cache_dir=str(cache_dir) if cache_dir else None)
    return ClipSpec(model=name, weights=weights, cache_dir=str(cache_dir) if cache_dir else None)


def _print_result(r, json_out: bool) -> None:
    size = r.path.stat().st_size
    if json_out:
        emit_json({"model": r.model_name, "source": r.source, "path": str(r.path), "size_bytes": size})
    else:
        typer.echo(str(r.path))
        info(f"{r.model_name}: {r.source} ({_human(size)})")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
