"""The real CLIP weights download: huggingface_hub against a local hub (tests/conftest.py HubServer).

The server serves the tiny random CLIP under the repo id and file name open_clip's pretrained table
gives for the default model; every request is counted. Faults: dropped connections, 5xx, a silent
or stalled hub, damaged cache files, a read-only cache, a full disk, two processes at once, and
OpenAI's own ~/.cache/clip file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2l.cli import app

runner = CliRunner()
FAST = ["--steps", "1", "--size", "64", "--views", "2", "--gen-depth", "4", "--gen-width", "8", "--seed", "1"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r) -> str:
    """The stderr error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    err = " ".join(r.stderr.split())  # Rich may wrap on narrow terminals
    assert err.count("error:") == 1, r.stderr
    return err[err.index("error:") :]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")} if Path(root).exists() else set()


def snapshot_file(cache: Path, repo: str, filename: str) -> Path:
    snaps = list((cache / f"models--{repo.replace('/', '--')}" / "snapshots").glob(f"*/{filename}"))
    assert len(snaps) == 1, snaps
    return snaps[0]


@pytest.fixture
def photo(tmp_path):
    a = (np.random.RandomState(0).rand(8, 8, 3) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(a).resize((64, 64)).save(path)
    return path


@pytest.fixture
def small_chunks(monkeypatch):
    """huggingface_hub reads 10 MB per progress update; the tiny file is 7 MB. 256 KB chunks give the
    bar as many updates as a real 605 MB download gets, so that a rate can be measured."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 18)


# ---- first run, second run, offline ---------------------------------------------------------------


@pytest.mark.parametrize("cache_var", ["HF_HUB_CACHE", "HF_HOME"])
def test_first_download_lands_in_the_hf_cache_with_a_progress_bar(
    hub_server, openai_hub_location, tiny_clip_files, small_chunks, monkeypatch, tmp_path, cache_var
):
    repo, filename = openai_hub_location
    if cache_var == "HF_HOME":
        monkeypatch.delenv("HF_HUB_CACHE")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
        cache = tmp_path / "hfhome" / "hub"
    else:
        cache = Path(os.environ["HF_HUB_CACHE"])
    hub_server.chunk_delay = 0.004  # ~0.5 s transfer: the bar has a rate to show
    r = run("models", "download")
    assert r.exit_code == 0, r.stderr
    path = snapshot_file(cache, repo, filename)
    assert r.stdout.strip() == str(path)
    blob = Path(os.path.realpath(path))  # standard layout: snapshot symlink -> blobs/<sha256>
    data = tiny_clip_files[1].read_bytes()
    assert path.is_symlink() and blob.parent.name == "blobs" and blob.name == hashlib.sha256(data).hexdigest()
    assert blob.read_bytes() == data
    assert not list(cache.rglob("*.incomplete"))
    # a Rich bar on stderr: the file, its size and a transfer rate
    err = r.stderr
    assert "download" in err and filename in err, err
    assert re.search(r"\d+\.\d/\d+\.\d\s*MB", err), err
    assert re.search(r"\d+(\.\d+)?\s*[kM]B/s", err), err
    resolves = [p for m, p, _ in hub_server.requests if "/resolve/" in p]
    assert all(f"/{repo}/resolve/main/{filename}" == p for p in resolves)
    assert hub_server.count("GET") - sum(1 for m, p, _ in hub_server.requests if "/api/" in p) == 1
    # second run: nothing is asked of the hub at all
    before = len(hub_server.requests)
    r = run("models", "download")
    assert r.exit_code == 0 and r.stdout.strip() == str(path)
    assert len(hub_server.requests) == before


def test_first_image_run_downloads_then_runs_and_later_runs_ask_nothing(
    hub_server, tiny_as_default_model, openai_hub_location, photo, tmp_path, monkeypatch
):
    repo, filename = openai_hub_location
    r = run("image", photo, "fire", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 0, r.stderr
    assert re.search(r"^download ", r.stderr, re.M) and filename in r.stderr
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["status"] == "done" and info["clip"]["source"] == f"hf-hub:{repo}@{filename}"
    assert hub_server.count("GET") >= 1
    before = len(hub_server.requests)
    roi = ["--roi", "a cup", "--show-roi"]  # loads and runs CLIP (relevancy), no training: faster
    r = run("image", photo, "fire", "-o", tmp_path / "out2", *FAST, *roi)  # second run
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out2" / "roi.png").is_file() and not re.search(r"^download ", r.stderr, re.M)
    r = run("image", photo, "fire", "-o", tmp_path / "out3", *FAST, *roi, "--offline")
    assert r.exit_code == 0, r.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run("image", photo, "fire", "-o", tmp_path / "out4", *FAST, *roi)
    assert r.exit_code == 0, r.stderr
    assert len(hub_server.requests) == before


def test_offline_with_an_empty_cache_asks_nothing_and_exits_3(hub_server, photo, tmp_path, monkeypatch):
    r = run("image", photo, "fire", "-o", tmp_path / "out", *FAST, "--offline")
    assert r.exit_code == 3
    err = one_line_error(r)
    assert (
        "offline mode" in err and "t2l models download ViT-B-32-quickgelu" in err and "--clip-weights" in err
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run("models", "path")
    assert r.exit_code == 3
    assert hub_server.requests == [] and not (tmp_path / "out").exists()


# ---- broken transfers, failing and silent hubs ---------------------------------------------------


def test_a_dropped_connection_is_resumed_in_the_same_run(
    hub_server, online_hf_cache, openai_hub_location, tiny_clip_files, small_chunks
):
    repo, filename = openai_hub_location
    hub_server.drop = 1  # the first GET is cut half-way
    r = run("models", "download")
    assert r.exit_code == 0, r.stderr
    gets = [rng for m, p, rng in hub_server.requests if m == "GET" and "/resolve/" in p]
    assert len(gets) == 2 and gets[0] is None and re.fullmatch(r"bytes=[1-9]\d*-", gets[1]), gets
    assert snapshot_file(online_hf_cache, repo, filename).read_bytes() == tiny_clip_files[1].read_bytes()
    assert "broke off" in r.stderr and "resuming" in r.stderr


def test_a_connection_lost_for_good_fails_then_the_next_run_restarts(
    hub_server, online_hf_cache, openai_hub_location, tiny_clip_files, small_chunks
):
    repo, filename = openai_hub_location
    hub_server.drop, hub_server.refuse_after_drop = 1, True
    t0 = time.perf_counter()
    r = run("models", "download")
    took = time.perf_counter() - t0
    assert r.exit_code == 3 and r.stdout == ""
    err = one_line_error(r)
    assert "download broke off" in err and str(online_hf_cache) in err and "--clip-weights" in err
    assert took < 12, took  # huggingface_hub's 5 resumes, 1 s apart
    # nothing half-written is left, and nothing counts as cached
    assert not [p for p in online_hf_cache.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert not list(online_hf_cache.rglob("snapshots/*/*"))
    r = run("models", "path")
    assert r.exit_code == 3
    # the next run downloads again from the start (huggingface_hub keeps no partial file)
    hub_server.refuse_after_drop = False
    n = len(hub_server.requests)
    r = run("models", "download")
    assert r.exit_code == 0, r.stderr
    gets = [rng for m, p, rng in hub_server.requests[n:] if m == "GET" and "/resolve/" in p]
    assert gets == [None]  # restarted, not resumed
    assert snapshot_file(online_hf_cache, repo, filename).read_bytes() == tiny_clip_files[1].read_bytes()


@pytest.mark.parametrize("status", [500, 503])
def test_a_failing_hub_fails_at_once_with_the_two_ways_out(hub_server, online_hf_cache, status):
    hub_server.status = status
    t0 = time.perf_counter()
    r = run("models", "download")
    assert time.perf_counter() - t0 < 3
    assert r.exit_code == 3
    err = one_line_error(r)
    assert f"answered HTTP {status}" in err and str(online_hf_cache) in err
    assert (
        "`t2l models download ViT-B-32-quickgelu`" in err
        and "--clip-weights /path/to/file.safetensors" in err
    )
    assert len([p for m, p, _ in hub_server.requests if "/resolve/" in p]) == 1  # no retries


def test_a_silent_hub_fails_within_the_probe_timeout(hub_server, online_hf_cache, monkeypatch):
    from t2l.clip.weights import PROBE_TIMEOUT_S, probe_timeout

    assert probe_timeout() == PROBE_TIMEOUT_S == 4  # the documented default
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    hub_server.silent = True
    t0 = time.perf_counter()
    r = run("models", "download")
    took = time.perf_counter() - t0
    assert r.exit_code == 3 and 0.9 < took < 3, took
    err = one_line_error(r)
    assert "did not answer within 1 s" in err and "--clip-weights" in err


def test_a_stalled_download_gives_up_after_the_download_timeout(
    hub_server, online_hf_cache, small_chunks, monkeypatch
):
    from t2l.clip.weights import STALL_TIMEOUT_S, stall_timeout

    assert stall_timeout() == STALL_TIMEOUT_S == 10  # the documented default
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")
    hub_server.stall = True  # half the body, then nothing
    t0 = time.perf_counter()
    r = run("models", "download")
    took = time.perf_counter() - t0
    assert r.exit_code == 3
    assert took < 4, took  # not huggingface_hub's 5 more attempts of timeout + 1 s
    err = one_line_error(r)
    assert "stalled (no data for 1 s" in err and "--clip-weights" in err
    assert not [p for p in online_hf_cache.rglob("*.incomplete")]
    assert len([1 for m, p, _ in hub_server.requests if m == "GET" and "/resolve/" in p]) == 1


# ---- damaged files in the cache ---------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped":  # one byte inside the tensor data: only the checksum sees it
        data[len(data) // 2] ^= 0xFF
    elif how == "truncated":
        data = data[: len(data) // 3]
    elif how == "header":
        data[8:16] = b"\x00garbag"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped", "truncated", "header"])
def test_a_damaged_cached_file_is_caught_before_use(
    hub_server,
    online_hf_cache,
    openai_hub_location,
    tiny_clip_files,
    tiny_as_default_model,
    photo,
    tmp_path,
    how,
):
    repo, filename = openai_hub_location
    assert run("models", "download").exit_code == 0
    path = snapshot_file(online_hf_cache, repo, filename)
    _damage(Path(os.path.realpath(path)), how)
    r = run("image", photo, "fire", "-o", tmp_path / "out", *FAST, "--offline")
    assert r.exit_code == 3
    err = one_line_error(r)
    assert str(path) in err and "damaged" in err and "`t2l models download ViT-B-32-quickgelu --force`" in err
    assert not (tmp_path / "out").exists()
    r = run("models", "path")
    assert r.exit_code == 3 and "--force" in r.stderr
    gets = hub_server.count("GET")
    r = run("models", "download", "--force")
    assert r.exit_code == 0, r.stderr
    assert hub_server.count("GET") == gets + 1
    assert path.read_bytes() == tiny_clip_files[1].read_bytes()
    assert not list(online_hf_cache.rglob("*.incomplete"))
    if how == "flipped":  # and the repaired file loads and runs (once is enough)
        r = run(
            "image", photo, "fire", "-o", tmp_path / "out", *FAST, "--offline", "--roi", "x", "--show-roi"
        )
        assert r.exit_code == 0, r.stderr


def test_models_download_repairs_a_damaged_file_by_itself(
    hub_server, online_hf_cache, openai_hub_location, tiny_clip_files
):
    repo, filename = openai_hub_location
    assert run("models", "download").exit_code == 0
    path = snapshot_file(online_hf_cache, repo, filename)
    _damage(Path(os.path.realpath(path)), "flipped")
    r = run("models", "download")
    assert r.exit_code == 0, r.stderr
    assert "damaged" in r.stderr and "downloading it again" in r.stderr
    assert path.read_bytes() == tiny_clip_files[1].read_bytes()


def test_a_cached_config_json_is_checked_too(hub_server, online_hf_cache, tiny_clip_files):
    """hf-hub: repos carry open_clip_config.json, a small git file named by its git blob sha1."""
    cfg = {"model_cfg": json.loads(Path(tiny_clip_files[0]).read_text())}
    hub_server.add("someorg/tiny-clip", "open_clip_config.json", json.dumps(cfg).encode())
    hub_server.add("someorg/tiny-clip", "open_clip_model.safetensors", tiny_clip_files[1].read_bytes())
    assert run("models", "download", "hf-hub:someorg/tiny-clip").exit_code == 0
    path = snapshot_file(online_hf_cache, "someorg/tiny-clip", "open_clip_config.json")
    blob = Path(os.path.realpath(path))
    blob.write_text(blob.read_text().replace("32", "33", 1))
    r = run("models", "path", "hf-hub:someorg/tiny-clip")
    assert r.exit_code == 3
    err = one_line_error(r)
    assert "open_clip_config.json" in err and "t2l models download hf-hub:someorg/tiny-clip --force" in err


# ---- a cache that cannot be written ---------------------------------------------------------------------


def test_a_read_only_cache_fails_naming_it_and_writes_nothing(
    hub_server, online_hf_cache, tmp_path, fs_faults
):
    online_hf_cache.mkdir()
    before = files_under(tmp_path)
    fs_faults.read_only(online_hf_cache)
    r = run("models", "download")
    assert r.exit_code == 3
    err = one_line_error(r)
    assert f"cannot write to the HF cache {online_hf_cache}" in err and "Read-only file system" in err
    assert "HF_HOME" in err and "--clip-weights /path/to/file.safetensors" in err
    assert files_under(tmp_path) == before and hub_server.requests == []


def test_a_full_disk_fails_exit_4_naming_the_cache_and_leaves_no_partial_file(
    hub_server, online_hf_cache, tiny_clip_files, tmp_path, fs_faults, small_chunks
):
    online_hf_cache.mkdir()
    fs_faults.disk_full(online_hf_cache, free_bytes=tiny_clip_files[1].stat().st_size // 3)
    r = run("models", "download")
    assert r.exit_code == 4
    err = one_line_error(r)
    assert f"no space left on the disk of the HF cache {online_hf_cache}" in err
    assert "HF_HOME" in err and "--clip-weights /path/to/file.safetensors" in err
    blobs = [p for p in online_hf_cache.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert blobs == [] and not list(online_hf_cache.rglob("snapshots/*/*"))


# ---- two processes at once --------------------------------------------------------------------------------


def test_two_processes_at_once_download_once(
    hub_server, online_hf_cache, openai_hub_location, tiny_clip_files
):
    """Like `t2l models download & t2l models download &`: huggingface_hub's file lock makes the second
    wait for the first (the server holds the first GET until both have asked for the file's metadata)."""
    repo, filename = openai_hub_location
    hub_server.hold_gets_for_heads = 4  # both processes' probe + huggingface_hub's own HEAD
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    cmd = [sys.executable, "-m", "t2l", "models", "download"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    path = snapshot_file(online_hf_cache, repo, filename)
    assert {o.decode().strip() for o, _ in outs} == {str(path)}
    assert hub_server.count("HEAD") == 4
    assert hub_server.count("GET") == 1  # one download
    assert path.read_bytes() == tiny_clip_files[1].read_bytes()
    assert not list(online_hf_cache.rglob("*.incomplete"))


# ---- OpenAI's own file, `t2l models list` ---------------------------------------------------------------


@pytest.fixture
def openai_clip_file(tiny_clip_files, monkeypatch):
    """~/.cache/clip/ViT-B-32.pt as OpenAI's clip package leaves it (here: the tiny CLIP as TorchScript),
    and open_clip's table entry URL carrying that file's sha256, as OpenAI's URLs do."""
    import open_clip
    import torch

    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip

    pcfg = open_clip.get_pretrained_cfg("ViT-B-32-quickgelu", "openai")
    name = pcfg["url"].rsplit("/", 1)[-1]
    assert name == "ViT-B-32.pt"
    path = Path.home() / ".cache" / "clip" / name
    path.parent.mkdir(parents=True)
    ref = load_clip(ClipSpec(model=str(tiny_clip_files[0]), weights=str(tiny_clip_files[1]), offline=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(ref.clip), str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for model in ("ViT-B-32-quickgelu", "ViT-B-32"):
        entry = open_clip.get_pretrained_cfg(model, "openai")
        monkeypatch.setitem(entry, "url", entry["url"].replace(entry["url"].split("/")[-2], sha))
    return path


def test_openai_clip_file_is_used_instead_of_downloading(
    hub_server, online_hf_cache, openai_clip_file, tiny_as_default_model, photo, tmp_path
):
    r = run("image", photo, "fire", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 0, r.stderr
    assert "using OpenAI's CLIP file" in r.stderr and str(openai_clip_file) in re.sub(r"\s+", "", r.stderr)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["clip"]["source"] == str(openai_clip_file)
    r = run("models", "download")
    assert r.exit_code == 0 and r.stdout.strip() == str(openai_clip_file)
    assert hub_server.requests == []
    r = run("models", "list", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["state"], x["path"]) for x in rows] == [("openai", str(openai_clip_file))]
    assert "ViT-B-32-quickgelu/openai" in rows[0]["model"]


def test_openai_clip_file_with_another_checksum_is_ignored(
    hub_server, online_hf_cache, openai_clip_file, openai_hub_location
):
    openai_clip_file.write_bytes(openai_clip_file.read_bytes() + b"x")
    r = run("models", "download")
    assert r.exit_code == 0, r.stderr
    assert "ignoring" in r.stderr and "sha256" in r.stderr
    assert r.stdout.strip() == str(snapshot_file(online_hf_cache, *openai_hub_location))


def test_models_list_shows_complete_and_partial_downloads(
    hub_server, online_hf_cache, openai_hub_location, tiny_clip_files, small_chunks
):
    from t2l.clip import ClipSpec
    from t2l.clip.weights import resolve_weights

    repo, filename = openai_hub_location
    hub_server.stall = True  # keeps the download half-way while we look
    done: dict = {}

    class Quiet:  # no bar from the background download
        def __init__(self, *a, **k):
            self.n = 0

        def update(self, n=1):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def close(self):
            pass

    def download():
        try:
            done["path"] = resolve_weights(ClipSpec(), download_progress=Quiet).path
        except Exception as e:  # noqa: BLE001
            done["error"] = e

    t = threading.Thread(target=download, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not list(online_hf_cache.rglob("*.incomplete")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    r = run("models", "list", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    hub_server.stall = False
    hub_server.release.set()
    t.join(30)
    assert "path" in done, done
    assert [x["state"] for x in rows] == ["partial"], rows
    assert rows[0]["repo"] == repo and "ViT-B-32-quickgelu/openai" in rows[0]["model"]
    assert 0 < rows[0]["size_bytes"] < tiny_clip_files[1].stat().st_size
    r = run("models", "list")
    assert r.exit_code == 0
    line = r.stdout.strip()
    assert "\n" not in line and "ViT-B-32-quickgelu/openai" in line and "complete" in line
    assert filename in line and str(done["path"]) in line and "6.7 MB" in line
