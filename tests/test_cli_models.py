"""`t2l models download | list | path` through CliRunner: exit codes, stdout vs stderr, no tracebacks."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from t2l.cli import app

runner = CliRunner()
OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"


def run(*args):
    return runner.invoke(app, list(args))


def test_list_empty_cache(online_hf_cache):
    r = run("models", "list")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and "no CLIP weights cached" in r.stderr and str(online_hf_cache) in r.stderr
    r = run("models", "list", "--json")
    assert r.exit_code == 0 and r.stdout == ""


def test_list_shows_cached_clip_files(online_hf_cache, tiny_clip_files, fake_hf_cache):
    fake_hf_cache(online_hf_cache, OPENAI_REPO, {"open_clip_model.safetensors": tiny_clip_files[1]})
    fake_hf_cache(online_hf_cache, "someorg/not-clip", {"model.safetensors": b"x"})
    r = run("models", "list", "--json")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["repo"] == OPENAI_REPO and row["file"] == "open_clip_model.safetensors"
    assert row["size_bytes"] == tiny_clip_files[1].stat().st_size and row["path"].startswith(
        str(online_hf_cache)
    )
    r = run("models", "list")
    assert r.exit_code == 0 and "vit_base_patch32_clip_224.openai" in r.stdout


def test_path_prints_cached_file(online_hf_cache, fake_hf_cache, tiny_clip_files):
    snap = fake_hf_cache(online_hf_cache, OPENAI_REPO, {"open_clip_model.safetensors": tiny_clip_files[1]})
    r = run("models", "path", "ViT-B-32-quickgelu")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(snap / "open_clip_model.safetensors")
    r = run("models", "path", "--json")
    assert json.loads(r.stdout)["source"] == f"hf-hub:{OPENAI_REPO}@open_clip_model.safetensors"


def test_path_not_cached_exits_3(online_hf_cache, no_network):
    r = run("models", "path", "ViT-B-32-quickgelu", "--weights", "openai")
    assert r.exit_code == 3
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert "never downloads" in r.stderr and "t2l models download ViT-B-32-quickgelu" in r.stderr


def test_path_unknown_tag_is_usage_error(online_hf_cache):
    r = run("models", "path", "ViT-B-32-quickgelu", "--weights", "bogus")
    assert r.exit_code == 2 and "known tags: openai" in r.stderr and "Traceback" not in r.stderr


def test_download_without_network_fails_fast(online_hf_cache, no_network):
    t0 = time.perf_counter()
    r = run("models", "download")
    assert time.perf_counter() - t0 < 10
    assert r.exit_code == 3 and r.stdout == "" and "Traceback" not in r.stderr
    err = " ".join(r.stderr.split())  # Rich may wrap the line on narrow terminals
    assert "cannot be reached" in err and "`t2l models download ViT-B-32-quickgelu`" in err
    assert "--clip-weights /path/to/file.safetensors" in err and str(online_hf_cache) in err


def test_download_when_cached_touches_no_network(online_hf_cache, fake_hf_cache, no_network):
    snap = fake_hf_cache(online_hf_cache, OPENAI_REPO, {"open_clip_pytorch_model.bin": b"w"})
    r = run("models", "download", "ViT-B-32-quickgelu", "--weights", "openai")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(snap / "open_clip_pytorch_model.bin")


def test_download_progress_class_speaks_tqdm():
    from t2l.cli.common import download_progress_class

    cls = download_progress_class()
    bar = cls(
        total=1000, initial=100, desc="open_clip_model.safetensors", unit="B", unit_scale=True, name="x"
    )
    with bar:
        bar.update(400)
        bar.total = 2000  # what huggingface_hub's xet reporter does
        bar.set_postfix_str("1 MB/s", refresh=False)
        bar.refresh()
        assert bar.n == 500
    task = bar._rich.tasks[0]
    assert task.completed == 500 and task.total == 2000
