"""t2l/atlas/run.py: the atlas runner's config, presets, resume rule, events and previews, without the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from t2l.atlas.run import PRESETS, AtlasConfig, AtlasRun, Note, Phase, folder_state, resolve_config
from t2l.atlas.synthetic import SyntheticConfig, make_clip
from t2l.errors import InputError, UsageError


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_clip")
    for i, f in enumerate(make_clip(SyntheticConfig(frames=5, height=36, width=64, seed=4)).frames):
        Image.fromarray(f).save(d / f"{i}.png")
    return d


def _run_all(run: AtlasRun) -> list:
    return list(run.events())


def test_config_presets_and_serialisation():
    cfg, note = resolve_config("auto", "cpu", seed=3)
    assert cfg.preset == "draft" and cfg.size == PRESETS["draft"].size and "no GPU" in note
    cfg_gpu, _ = resolve_config("auto", "cuda", seed=3)
    assert cfg_gpu.preset == "quality" and cfg_gpu.size == 768
    # the step budget of each preset, and an explicit total wins
    assert cfg.fit_config(10).steps == 300 and cfg.fit_config(50).steps == 600
    assert cfg_gpu.fit_config(50).steps == 2000 and cfg_gpu.fit_config(50).grid == (16, 28)
    fixed, _ = resolve_config("draft", steps=7, size=64, seed=1)
    assert (
        fixed.fit_config(50).steps == 7
        and fixed.fit_config(50).pairs == 2
        and resolve_config("draft")[0].seed >= 0
    )
    # serialisable: JSON and back gives the same frozen config; old model.pt `run` dicts load too
    assert AtlasConfig.from_dict(json.loads(json.dumps(fixed.to_dict()))) == fixed
    legacy = {**fixed.to_dict(), "mask_source": "automatic"}
    del legacy["checkpoint_every_s"]
    assert AtlasConfig.from_dict(legacy).steps == 7


@pytest.mark.parametrize(
    "kwargs, option, needle",
    [({"stride": 0}, "stride", "stride 0 must be >= 1"), ({"max_frames": 2}, "max_frames", "max_frames 2 is too few"),
     ({"layers": 3}, "layers", "layers 3 is not supported"), ({"steps": -1}, "steps", "steps -1 must be >= 0"),
     ({"size": 8}, "size", "size 8 is too small"), ({"start": -2}, "start", "start -2 must be >= 0")],
)  # fmt: skip
def test_core_errors_name_values_and_limits_not_flags(kwargs, option, needle):
    with pytest.raises(UsageError) as e:
        resolve_config("draft", **kwargs)
    assert needle in str(e.value) and "--" not in str(e.value) and e.value.option == option


def test_events_phases_and_a_failing_encoder_keeps_the_fit(frames_dir, tmp_path, monkeypatch):
    from t2l.atlas import previews
    from t2l.atlas.fit import FitEvent
    from t2l.atlas.folder import load_atlas

    def broken(*a, **k):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(previews, "write_mp4", broken)
    cfg, _ = resolve_config("draft", size=64, steps=4, seed=0)
    out = tmp_path / "a"
    run = AtlasRun.prepare(frames_dir, out, cfg, "cpu")
    events = _run_all(run)
    phases = [e.name for e in events if isinstance(e, Phase)]
    assert phases == ["decode", "flow", "masks", "init", "fit", "export", "write", "previews"]
    assert [e.step for e in events if isinstance(e, FitEvent)] == [1, 2, 3, 4]
    notes = [e.text for e in events if isinstance(e, Note)]
    assert sum("encoder exploded" in n for n in notes) == 2
    # the fit is not lost: the folder is complete and loads; only the previews are missing
    assert folder_state(out) == "done" and not (out / "checkerboard.mp4").exists()
    data = load_atlas(out, with_frames=False)
    assert data.meta["run"]["steps"] == 4 and data.model_state["step"] == 4
    assert run.summary["steps"] == 4 and run.summary["psnr_mean"] == pytest.approx(
        np.mean(data.psnr), abs=1e-3
    )

    # resume: --steps is the total; below the steps done is refused by value; omitted = the saved total
    with pytest.raises(UsageError, match="steps 3 is below the 4 steps already done") as e:
        AtlasRun.prepare(frames_dir, out, AtlasConfig(steps=3), resume=True)
    assert e.value.option == "steps"
    with pytest.raises(UsageError, match=r"already fitted \(4 steps\)"):
        AtlasRun.prepare(frames_dir, out, AtlasConfig(steps=None), resume=True)
    more = AtlasRun.prepare(frames_dir, out, AtlasConfig(size=999, steps=6), "cpu", resume=True)
    assert (
        more.cfg.size == 64 and more.cfg.steps == 6
    )  # the saved run's frame selection and size, the new total
    events = _run_all(more)
    assert [e.step for e in events if isinstance(e, FitEvent)] == [5, 6]
    assert any("resuming at step 4/6" in e.text for e in events if isinstance(e, Note))


def test_prepare_checks_the_input_and_the_state(frames_dir, tmp_path):
    with pytest.raises(InputError, match="video not found"):
        AtlasRun.prepare(tmp_path / "nope.mp4", tmp_path / "o", AtlasConfig())
    still = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(still)
    with pytest.raises(InputError, match="still image"):
        AtlasRun.prepare(still, tmp_path / "o", AtlasConfig())
    with pytest.raises(UsageError, match="nothing to resume"):
        AtlasRun.prepare(frames_dir, tmp_path / "o", AtlasConfig(), resume=True)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.pt").write_bytes(b"junk")
    assert folder_state(tmp_path / "o") == "partial"
    with pytest.raises(InputError, match="cannot read"):
        AtlasRun.prepare(frames_dir, tmp_path / "o", AtlasConfig(), resume=True)


def test_ctrl_c_between_events_or_while_writing_loses_no_step(frames_dir, tmp_path):
    from t2l.atlas.fit import FitEvent
    from t2l.atlas.folder import load_model_state
    from t2l.atlas.run import RESUME_FIX

    cfg, _ = resolve_config("draft", size=64, steps=4, seed=0)
    out = tmp_path / "a"
    run = AtlasRun.prepare(frames_dir, out, cfg, "cpu")
    for ev in run.events():
        if isinstance(ev, FitEvent) and ev.step == 2:
            break  # the caller got Ctrl-C while drawing step 2
    e = run.interrupted()
    assert e.fix == RESUME_FIX and "step 2/4" in e.problem
    assert load_model_state(out / "model.pt")["step"] == 2 and folder_state(out) == "partial"

    run = AtlasRun.prepare(frames_dir, out, AtlasConfig(), "cpu", resume=True)
    for ev in run.events():
        if isinstance(ev, Phase) and ev.name == "export":
            break  # Ctrl-C after the last step, before the atlas is written
    e = run.interrupted()
    assert e.fix == RESUME_FIX and "while writing" in e.problem
    assert load_model_state(out / "model.pt")["step"] == 4 and folder_state(out) == "partial"
    run = AtlasRun.prepare(frames_dir, out, AtlasConfig(), "cpu", resume=True)
    events = list(run.events())
    assert not [ev for ev in events if isinstance(ev, FitEvent)] and folder_state(out) == "done"
