"""Weights resolution: local files, the shared HF cache, offline mode, no network, QuickGELU."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch

from t2l.clip import ClipSpec
from t2l.clip.model import load_clip
from t2l.clip.weights import (
    HUB_FILES,
    build_model,
    hub_location,
    is_offline,
    resolve_weights,
)
from t2l.errors import InputError, UsageError, WeightsUnavailable

OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"


def tiny_spec(tiny_clip_files, **kw) -> ClipSpec:
    cfg, weights = tiny_clip_files
    return ClipSpec(model=str(cfg), weights=str(weights), offline=True, **kw)


def test_local_safetensors_loads_frozen_and_exact(tiny_clip_files):
    import open_clip
    from safetensors.torch import load_file

    clip = load_clip(tiny_spec(tiny_clip_files))
    assert clip.source == str(Path(tiny_clip_files[1]).resolve())
    assert clip.model_name == str(tiny_clip_files[0])
    assert not clip.training and all(not p.requires_grad for p in clip.parameters())
    ref = load_file(str(tiny_clip_files[1]))
    for k, v in clip.clip.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert isinstance(clip.clip.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert clip.embed_dim == 32 and clip.patch_size == 16 and clip.native_size == 64


def test_state_dict_bin_and_torchscript_load_the_same(tiny_clip_files, tmp_path):
    cfg, weights = tiny_clip_files
    ref = load_clip(tiny_spec(tiny_clip_files))
    x = torch.rand(1, 3, 64, 64)
    # a pickled state dict wrapped like training checkpoints ("state_dict", "module." prefix)
    sd = {f"module.{k}": v for k, v in ref.clip.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "ckpt.pth")
    # OpenAI-style TorchScript archive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(ref.clip), str(tmp_path / "ts.pt"))
    for f in ("ckpt.pth", "ts.pt"):
        clip = load_clip(ClipSpec(model=str(cfg), weights=str(tmp_path / f), offline=True))
        assert torch.allclose(clip.encode_image(x), ref.encode_image(x), atol=1e-6), f


def test_mismatched_or_broken_weights_name_the_file(tiny_clip_files, tmp_path):
    cfg, weights = tiny_clip_files
    other = json.loads(Path(cfg).read_text())
    other["vision_cfg"] = {**other["vision_cfg"], "width": 128}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match=r"do not fit model .*other\.json: .*wrong shape"):
        load_clip(ClipSpec(model=str(tmp_path / "other.json"), weights=str(weights), offline=True))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="broken.safetensors"):
        load_clip(ClipSpec(model=str(cfg), weights=str(tmp_path / "broken.safetensors"), offline=True))
    with pytest.raises(InputError, match="does not exist"):
        load_clip(ClipSpec(model=str(cfg), weights=str(tmp_path / "missing.safetensors"), offline=True))
    with pytest.raises(InputError, match="does not exist"):
        load_clip(ClipSpec(model=str(tmp_path / "missing.json"), weights=str(weights), offline=True))


def test_bad_names_and_tags_are_usage_errors(tiny_clip_files):
    with pytest.raises(UsageError, match="unknown CLIP model 'ViT-Nope'"):
        resolve_weights(ClipSpec(model="ViT-Nope", offline=True))
    with pytest.raises(UsageError, match=r"nor a pretrained tag of ViT-B-32-quickgelu \(known tags: openai"):
        resolve_weights(ClipSpec(weights="nope", offline=True))
    with pytest.raises(UsageError, match="tags only work with open_clip model names"):
        resolve_weights(ClipSpec(model=str(tiny_clip_files[0]), weights="openai", offline=True))


def test_registry_location_of_the_default():
    assert hub_location("ViT-B-32-quickgelu", "openai") == (OPENAI_REPO, HUB_FILES)
    assert HUB_FILES == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def test_default_model_is_quickgelu_from_the_shared_cache(
    monkeypatch, tmp_path, fake_hf_cache, tiny_clip_files
):
    """The default (and plain ViT-B-32 with the openai tag) must build QuickGELU, found in HF_HUB_CACHE."""
    import open_clip

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    snap = fake_hf_cache(tmp_path / "hf", OPENAI_REPO, {"open_clip_model.safetensors": tiny_clip_files[1]})
    for model in ("ViT-B-32-quickgelu", "ViT-B-32"):
        r = resolve_weights(ClipSpec(model=model, weights="openai", offline=True))
        assert r.path == snap / "open_clip_model.safetensors"
        assert r.source == f"hf-hub:{OPENAI_REPO}@open_clip_model.safetensors"
        assert r.model_cfg["quick_gelu"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # open_clip's QuickGELU mismatch warning would fail here
        model = build_model(r.model_cfg)
    acts = [
        m for m in model.visual.modules() if isinstance(m, (torch.nn.GELU, open_clip.transformer.QuickGELU))
    ]
    assert len(acts) == 12 and all(isinstance(m, open_clip.transformer.QuickGELU) for m in acts)


def test_bin_fallback_in_cache(monkeypatch, tmp_path, fake_hf_cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    snap = fake_hf_cache(tmp_path / "hf", OPENAI_REPO, {"open_clip_pytorch_model.bin": b"x"})
    r = resolve_weights(ClipSpec(offline=True))
    assert r.path == snap / "open_clip_pytorch_model.bin" and r.source.endswith(
        "@open_clip_pytorch_model.bin"
    )


def test_hf_hub_repo_with_config_loads_offline_from_cache(
    tiny_clip_files, monkeypatch, tmp_path, fake_hf_cache
):
    cfg, weights = tiny_clip_files
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    hub_cfg = {
        "model_cfg": json.loads(Path(cfg).read_text()),
        "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }
    fake_hf_cache(
        tmp_path / "hf",
        "someorg/tiny-clip",
        {"open_clip_config.json": json.dumps(hub_cfg).encode(), "open_clip_model.safetensors": Path(weights)},
    )
    clip = load_clip(ClipSpec(weights="hf-hub:someorg/tiny-clip", offline=True))
    assert clip.source == "hf-hub:someorg/tiny-clip@open_clip_model.safetensors"
    assert torch.allclose(clip.mean.flatten(), torch.full((3,), 0.5))
    assert clip.encode_text(["a cat"]).shape == (1, 32)


def test_offline_empty_cache_fails_without_network(hub_server, online_hf_cache):
    with pytest.raises(WeightsUnavailable) as e:
        load_clip(ClipSpec(offline=True))
    msg = str(e.value)
    assert "\n" not in msg and "offline mode" in msg and str(online_hf_cache) in msg
    assert "t2l models download ViT-B-32-quickgelu" in msg and "--clip-weights" in msg
    assert hub_server.requests == []  # the hub (serving these weights) was never asked


def test_env_hf_hub_offline_means_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_offline(ClipSpec())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not is_offline(ClipSpec()) and is_offline(ClipSpec(offline=True))


def test_no_network_empty_cache_fails_fast_with_one_line(online_hf_cache, no_network):
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as e:
        load_clip(ClipSpec())
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert (
        "\n" not in msg and "cannot be reached" in msg and OPENAI_REPO in msg and str(online_hf_cache) in msg
    )
    assert (
        "`t2l models download ViT-B-32-quickgelu`" in msg
        and "--clip-weights /path/to/file.safetensors" in msg
    )
    assert e.value.exit_code == 3


def test_download_prefers_safetensors_then_falls_back_to_bin(hub_server, online_hf_cache, tiny_clip_files):
    import torch

    hub_server.files.clear()  # a repo with only the pickled state dict
    torch.save(_state_dict(tiny_clip_files), online_hf_cache.parent / "sd.bin")
    hub_server.add(
        OPENAI_REPO, "open_clip_pytorch_model.bin", (online_hf_cache.parent / "sd.bin").read_bytes()
    )
    r = resolve_weights(ClipSpec(), download_progress=None)
    heads = [p.rsplit("/", 1)[-1] for m, p, _ in hub_server.requests if m == "HEAD"]
    assert heads[0] == HUB_FILES[0] and set(heads[1:]) == {HUB_FILES[1]}, heads
    assert r.source == f"hf-hub:{OPENAI_REPO}@open_clip_pytorch_model.bin"
    assert r.path.read_bytes() == (online_hf_cache.parent / "sd.bin").read_bytes()
    assert str(r.path).startswith(str(online_hf_cache))


def _state_dict(tiny_clip_files):
    from safetensors.torch import load_file

    return load_file(str(tiny_clip_files[1]))


def test_cache_dir_in_spec_wins(monkeypatch, tmp_path, fake_hf_cache, tiny_clip_files):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    snap = fake_hf_cache(tmp_path / "mine", OPENAI_REPO, {"open_clip_model.safetensors": tiny_clip_files[1]})
    r = resolve_weights(ClipSpec(offline=True, cache_dir=str(tmp_path / "mine")))
    assert r.path == snap / "open_clip_model.safetensors"
    shutil.rmtree(tmp_path / "mine")
    with pytest.raises(WeightsUnavailable):
        resolve_weights(ClipSpec(offline=True, cache_dir=str(tmp_path / "mine")))


def test_hub_probe_gives_up_on_a_hanging_lookup(online_hf_cache, monkeypatch):
    """A DNS lookup that never answers (no socket timeout covers it) still fails within the probe timeout."""
    import socket
    import threading

    from huggingface_hub import constants

    release = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(30)
        raise OSError("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://hub.invalid/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
    t0 = time.perf_counter()
    try:
        with pytest.raises(WeightsUnavailable, match=r"did not answer within 0.5 s"):
            resolve_weights(ClipSpec())
        assert time.perf_counter() - t0 < 2
    finally:
        release.set()


def test_openai_torchscript_archive_always_builds_quickgelu(tiny_clip_files, tmp_path):
    """A TorchScript .pt is OpenAI's own format: QuickGELU even when --clip-model says GELU."""
    import open_clip

    cfg = json.loads(Path(tiny_clip_files[0]).read_text())
    cfg["quick_gelu"] = False
    (tmp_path / "gelu.json").write_text(json.dumps(cfg))
    ref = load_clip(tiny_spec(tiny_clip_files))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(ref.clip), str(tmp_path / "openai.pt"))
    clip = load_clip(
        ClipSpec(model=str(tmp_path / "gelu.json"), weights=str(tmp_path / "openai.pt"), offline=True)
    )
    acts = [
        m for m in clip.visual.modules() if isinstance(m, (torch.nn.GELU, open_clip.transformer.QuickGELU))
    ]
    assert acts and all(isinstance(m, open_clip.transformer.QuickGELU) for m in acts)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(clip.encode_image(x), ref.encode_image(x), atol=1e-6)
    # a plain state dict says nothing about its origin: the config decides
    r = resolve_weights(
        ClipSpec(model=str(tmp_path / "gelu.json"), weights=str(tiny_clip_files[1]), offline=True)
    )
    assert r.model_cfg["quick_gelu"] is False


def test_wrong_files_give_one_line_errors_naming_them(tiny_clip_files, tmp_path):
    cfg, weights = tiny_clip_files
    base = json.loads(Path(cfg).read_text())
    (tmp_path / "empty.bin").write_bytes(b"")  # torch.load raises an EOFError with an empty message
    (tmp_path / "adir").mkdir()
    heads = {**base, "text_cfg": {**base["text_cfg"], "heads": 3}}  # width 32 not divisible by 3
    (tmp_path / "heads.json").write_text(json.dumps(heads))
    (tmp_path / "listy.json").write_text(json.dumps({**base, "vision_cfg": [1, 2]}))
    bogus = {**base, "vision_cfg": {**base["vision_cfg"], "bogus": 1}}
    (tmp_path / "bogus.json").write_text(json.dumps(bogus))
    cases = [
        (cfg, tmp_path / "empty.bin", "empty.bin"),
        (cfg, tmp_path / "adir", "adir is a folder"),
        (tmp_path / "adir", weights, "adir is a folder"),
        (tmp_path / "heads.json", weights, "heads.json"),
        (tmp_path / "listy.json", weights, "listy.json"),
        (tmp_path / "bogus.json", weights, "bogus.json"),
    ]
    for model, w, expect in cases:
        with pytest.raises(InputError) as e:
            load_clip(ClipSpec(model=str(model), weights=str(w), offline=True))
        msg = str(e.value)
        assert expect in msg and "\n" not in msg and "\x1b" not in msg, msg


def test_download_errors_stay_on_one_line(hub_server, online_hf_cache):
    """huggingface_hub's HTTP errors span several lines; the message must not."""
    hub_server.status = 502
    with pytest.raises(WeightsUnavailable) as e:
        resolve_weights(ClipSpec())
    assert "\n" not in str(e.value) and "answered HTTP 502" in str(e.value)
    hub_server.status = None
    hub_server.files = {(OPENAI_REPO, "README.md"): b"no weights here"}
    with pytest.raises(WeightsUnavailable) as e:
        resolve_weights(ClipSpec())
    assert "\n" not in str(e.value) and "has none of open_clip_model.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"HF_HOME": "{t}/home"}, "{t}/home/hub"),
        ({"HF_HOME": "{t}/home", "HF_HUB_CACHE": "{t}/hub"}, "{t}/hub"),
        ({"HF_HOME": "{t}/home", "HUGGINGFACE_HUB_CACHE": "{t}/legacy"}, "{t}/legacy"),
        ({"HUGGINGFACE_HUB_CACHE": "{t}/legacy", "HF_HUB_CACHE": "{t}/hub"}, "{t}/hub"),
        ({"XDG_CACHE_HOME": "{t}/xdg"}, "{t}/xdg/huggingface/hub"),
        ({"HF_HOME": "~/hfhome"}, "~/hfhome/hub"),
        ({}, "~/.cache/huggingface/hub"),
    ],
)
def test_hf_cache_root_follows_huggingface_hub_rules(monkeypatch, tmp_path, env, expected):
    from t2l.cache import hf_hub_cache_dir

    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value.format(t=tmp_path))
    assert hf_hub_cache_dir() == Path(expected.format(t=tmp_path)).expanduser()
    assert hf_hub_cache_dir(tmp_path / "flag") == tmp_path / "flag"  # --cache-dir wins over everything


def test_hf_hub_repo_of_openai_weights_builds_quickgelu(
    tiny_clip_files, monkeypatch, tmp_path, fake_hf_cache
):
    """hf-hub:timm/...openai: the registry says QuickGELU even if the repo's config leaves it out."""
    cfg, weights = tiny_clip_files
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    gelu_cfg = {**json.loads(Path(cfg).read_text()), "quick_gelu": False}
    files = {
        "open_clip_config.json": json.dumps({"model_cfg": gelu_cfg}).encode(),
        "open_clip_model.safetensors": weights,
    }
    for repo in (OPENAI_REPO, "someorg/gelu-clip"):
        fake_hf_cache(tmp_path / "hf", repo, files)
    r = resolve_weights(ClipSpec(weights=f"hf-hub:{OPENAI_REPO}", offline=True))
    assert r.model_cfg["quick_gelu"] is True
    r = resolve_weights(ClipSpec(weights="hf-hub:someorg/gelu-clip", offline=True))
    assert r.model_cfg["quick_gelu"] is False  # unknown repo: its own config decides
