"""Video training items and the shared training step: crops, warps, masking, generator calls, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2l.atlas.coords import premultiply
from t2l.errors import InputError, UsageError
from t2l.generator import Generator, GeneratorConfig
from t2l.prompts import make_prompts
from t2l.train import Example, GeneratorCall, TextBank, TrainConfig, Trainer
from t2l.video_crops import CropSettings, LayerCrops, raster_scale

GEN4 = GeneratorConfig(depth=4, width=16)  # min side 17: the 24-px square's atlas needs no upscaling
GEN5 = GeneratorConfig(depth=5, width=16)  # min side 33: the fg atlas is upscaled 2x


@pytest.fixture(scope="module")
def clip(tiny_clip_files):
    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip

    cfg, weights = tiny_clip_files
    return load_clip(ClipSpec(str(cfg), str(weights), offline=True), "cpu")


def _crops(data, layer, gen=GEN4, **settings):
    lay = data.layer(layer)
    return LayerCrops(
        data.frames,
        lay.uv,
        lay.texture,
        lay.uv_to_px,
        data.alpha,
        layer,
        gen.min_size,
        CropSettings(**settings),
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    """An 'identity generator': its RGBA is the input colour, fully opaque."""
    return torch.cat([x, torch.ones_like(x[:, :1])], 1)


@pytest.mark.parametrize("layer,gen", [("fg", GEN4), ("bg", GEN4), ("fg", GEN5)])
def test_identity_generator_reproduces_the_frame_crops_through_the_warp(make_video_atlas, layer, gen):
    # catches: wrong uv -> crop offsets, a flipped output not flipped back, a wrong atlas-crop box, weights,
    # and (GEN5: the fg atlas at 2x) a raster scale whose round trip is not the identity
    data = make_video_atlas()
    crops = _crops(data, layer, gen, jitter_p=0.0, flip_p=0.5)
    assert crops.k == (2 if gen is GEN5 else 1)
    rng = torch.Generator().manual_seed(0)
    for step in range(12):
        call, direct = crops.sample(step + 1, rng)[:2]
        assert isinstance(call, GeneratorCall) and len(call.items) == 3
        out = _identity(call.gen_input)
        for ex in [*call.items, direct]:
            pre = ex.warp(_identity(ex.gen_input) if ex.gen_input is not None else out)  # 1, 4, h, w
            P, a = pre[:, :3], pre[:, 3:4]
            # the composite of an opaque identity edit is the (masked) frame itself: P + (1 - a) * I' == I'
            comp = P + (1 - a) * ex.background
            w = a > 0.999  # fully covered pixels (inside the atlas crop; for fg: on the square)
            assert w.float().mean() > 0.2
            err = (comp - ex.background).abs().amax(1, keepdim=True)[w]
            assert float(err.max()) < 2e-3, float(err.max())


def test_fg_items_are_masked_by_alpha_inputs_and_outputs_alike(make_video_atlas):
    # catches: an unmasked fg input (the reference's defect) or an edit that leaks outside the layer
    data = make_video_atlas()
    crops = _crops(data, "fg", jitter_p=0.0)
    call, direct, full = crops.sample(0, torch.Generator().manual_seed(1))
    for ex in call.items + [direct]:
        out = torch.rand(1, 4, *(call.gen_input if ex.gen_input is None else ex.gen_input).shape[-2:])
        pre = ex.warp(out)
        outside = ex.background.abs().sum(1, keepdim=True) == 0  # masked input: black off the square
        assert outside.float().mean() > 0.3
        assert float(pre[:, 3:4][outside].abs().max()) == 0.0  # no edit alpha off the square
    # bg items composite over the frame unmasked, and their edit is weighted by 1 - alpha
    bg = _crops(data, "bg", jitter_p=0.0)
    call, *_ = bg.sample(0, torch.Generator().manual_seed(1))
    ex = call.items[0]
    assert float(ex.background.min()) >= 0 and float((ex.background.sum(1) == 0).float().mean()) < 0.05
    pre = ex.warp(torch.ones(1, 4, *call.gen_input.shape[-2:]))
    assert float(pre[:, 3].min()) == 0.0  # hidden behind the square


def test_every_generator_input_and_frame_crop_meets_the_minimum_side(make_video_atlas):
    # catches: crops below 2**depth + 1 (the generator would fail) and a wrong raster scale
    data = make_video_atlas()
    for layer, gen in (("fg", GEN4), ("fg", GEN5), ("bg", GEN5)):
        crops = _crops(data, layer, gen)
        assert crops.k == (2 if (layer, gen) == ("fg", GEN5) else 1)
        rng = torch.Generator().manual_seed(2)
        for step in range(6):
            for c in crops.sample(step * 75, rng):
                x = c.gen_input if c.gen_input is not None else None
                assert min(x.shape[-2:]) >= gen.min_size, (layer, x.shape)
                for ex in getattr(c, "items", [c]):
                    assert min(ex.background.shape[-2:]) >= min(gen.min_size / crops.k, gen.min_size) - 1e-9


def test_raster_scale_and_too_small_atlases():
    from t2l.atlas.coords import Box

    assert raster_scale(Box(0, 0, 200, 150), 129, 4) == 1
    assert raster_scale(Box(0, 0, 60, 80), 129, 4) == 3
    with pytest.raises(UsageError, match=r"only 20x20 texels, too small for the generator even at 4x"):
        raster_scale(Box(0, 0, 20, 20), 129, 4)


def test_small_frames_and_missing_layers_are_usage_errors(make_video_atlas):
    data = make_video_atlas()
    with pytest.raises(UsageError, match=r"96x72, below the generator's minimum side 129"):
        _crops(data, "fg", GeneratorConfig())
    one = make_video_atlas(layers=1)
    with pytest.raises(UsageError, match="no foreground layer"):
        LayerCrops(
            one.frames, one.layers[0].uv, one.layers[0].texture, (1, 0, 1, 0), None, "fg", 17, CropSettings()
        )


def test_one_generator_call_per_atlas_crop(make_video_atlas, clip):
    # catches: running the generator once per frame item (the cost we avoid) or dropping items
    data = make_video_atlas()
    crops = _crops(data, "fg", full_every=3)
    torch.manual_seed(0)
    gen = Generator(GEN4)
    calls = []
    gen.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    items = []
    sample = lambda s, r: (lambda out: items.append(sum(len(getattr(c, "items", [c])) for c in out)) or out)(  # noqa: E731
        crops.sample(s, r)
    )
    e = clip.encode_text(["fire"])
    cfg = TrainConfig(steps=4, views=_views(), structure_short=64)
    Trainer(gen, clip, TextBank(e, e, e), sample, cfg, torch.Generator().manual_seed(0)).train_step()
    assert len(calls) == 3 and items == [5]  # step 0: atlas crop (3 items) + direct + whole atlas
    calls.clear()
    items.clear()
    t = Trainer(gen, clip, TextBank(e, e, e), sample, cfg, torch.Generator().manual_seed(0))
    t.step = 1
    t.train_step()
    assert len(calls) == 2 and items == [4]


def _views():
    from t2l.augment import ViewConfig

    return ViewConfig(n=2, short=64, long_max=91, fill=0.0)


def test_shared_call_gradients_equal_separate_calls_and_single_items_are_unchanged(clip):
    # catches: the accumulated-at-the-output backward losing or double-counting an item's gradient,
    # and any change of the image path (one item per call must stay bit-identical)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 40, generator=g)
    bgs = [torch.rand(1, 3, 40, 40, generator=g) for _ in range(2)]
    warp = lambda rgba: premultiply(rgba) * 0.5  # noqa: E731
    e = clip.encode_text(["fire"])
    cfg = TrainConfig(steps=1, views=_views(), structure_short=64)

    def grads(sample):
        torch.manual_seed(0)
        gen = Generator(GEN4)
        tr = Trainer(gen, clip, TextBank(e, e, e), sample, cfg, torch.Generator().manual_seed(3))
        tr.opt.step = lambda: None
        ev = tr.train_step()
        return torch.cat([p.grad.flatten() for p in gen.parameters()]), ev

    shared, ev1 = grads(lambda s, r: [GeneratorCall(x, [Example(b, warp=warp) for b in bgs])])
    separate, ev2 = grads(lambda s, r: [Example(b, gen_input=x, warp=warp) for b in bgs])
    assert ev1.loss == pytest.approx(ev2.loss, rel=1e-6)
    torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-6)
    plain, _ = grads(lambda s, r: [Example(x)])
    wrapped, _ = grads(lambda s, r: [GeneratorCall(x, [Example(x)])])
    assert torch.equal(plain, wrapped)


def test_bootstrap_cut_off_step(clip):
    # catches: a bootstrap term that ignores bootstrap_until (video runs stop it at a chosen step)
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    rel = torch.zeros(1, 1, 40, 40)
    e = clip.encode_text(["fire"])
    cfg = TrainConfig(steps=4, views=_views(), structure_short=64, anneal_bootstrap=False, bootstrap_until=2)
    torch.manual_seed(0)
    tr = Trainer(
        Generator(GEN4),
        clip,
        TextBank(e, e, e),
        lambda s, r: [Example(x, relevancy=rel)],
        cfg,
        torch.Generator(),
    )
    seen = ["bootstrap" in ev.losses for ev in tr.run()]
    assert seen == [True, True, False, False]
    assert tr.bootstrap_weight(0) == 10.0 and tr.bootstrap_weight(2) == 0.0


# ---- the run: resume, identity, divergence ------------------------------------------------------


def _run(atlas_dir, clip, out, prompt="fire", steps=4, layer="fg", resume=False, steps_override=None):
    from t2l.video import VideoRun, resolve_config

    cfg, _ = resolve_config("draft", "cpu", layer, steps, 2, 0, GEN4)
    return VideoRun.prepare(
        atlas_dir, make_prompts(prompt), cfg, clip, torch.device("cpu"), out, seed=5, resume=resume,
        steps=steps_override,
    )  # fmt: skip


def _params(run):
    return torch.cat([p.detach().flatten() for p in run.trainer.generator.parameters()])


def test_video_resume_is_exact_and_checks_identity(video_atlas_dir, clip, tmp_path):
    # catches: a resume that restarts the RNG/optimizer (not equal to an uninterrupted run), a checkpoint
    # reused for another prompt, layer or kind, and a total below the steps done
    whole = _run(video_atlas_dir, clip, tmp_path / "a")
    list(whole.events())
    cut = _run(video_atlas_dir, clip, tmp_path / "b")
    ev = cut.events()
    next(ev), next(ev)
    cut.save_checkpoint()  # what Ctrl-C does (t2l/run.py)
    ev.close()
    again = _run(video_atlas_dir, clip, tmp_path / "b", resume=True)
    assert again.done_steps == 2 and again.total_steps == 4
    list(again.events())
    assert again.trainer.step == 4
    assert torch.equal(_params(whole), _params(again))

    with pytest.raises(InputError, match="prompts"):
        _run(video_atlas_dir, clip, tmp_path / "b", prompt="ice", resume=True)
    with pytest.raises(InputError, match="layer 'fg', not 'bg'"):
        _run(video_atlas_dir, clip, tmp_path / "b", layer="bg", resume=True)
    with pytest.raises(UsageError, match="below the 2 steps"):
        cut2 = _run(video_atlas_dir, clip, tmp_path / "c")
        ev = cut2.events()
        next(ev), next(ev)
        cut2.save_checkpoint()
        ev.close()
        _run(video_atlas_dir, clip, tmp_path / "c", resume=True, steps_override=1)


def test_an_image_checkpoint_is_not_resumed_as_a_video_run(video_atlas_dir, clip, tmp_path):
    run = _run(video_atlas_dir, clip, tmp_path / "r", steps=2)
    ev = run.events()
    next(ev)
    run.save_checkpoint()
    ev.close()
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    state["identity"]["kind"] = "image"
    torch.save(state, tmp_path / "r" / "checkpoint.pt")
    with pytest.raises(InputError, match="unfinished image run, not a video run"):
        _run(video_atlas_dir, clip, tmp_path / "r", resume=True)


def test_a_diverging_loss_saves_the_last_good_state(video_atlas_dir, clip, tmp_path):
    # catches: a NaN ending as an internal error with nothing saved (issue 9, defect 3)
    from t2l.run import TrainingDiverged

    run = _run(video_atlas_dir, clip, tmp_path / "d", steps=4)
    good = {}
    orig = run._build_trainer

    def poisoned():
        tr = orig()
        sample = tr.sample

        def bad(step, rng):
            out = sample(step, rng)
            if step == 2:
                good.update({k: v.clone() for k, v in tr.generator.state_dict().items()})
                out[0].items[0].background = out[0].items[0].background * float("nan")
            return out

        tr.sample = bad
        return tr

    run._build_trainer = poisoned
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*state after step 2 is saved"):
        list(run.events())
    assert json.loads((tmp_path / "d" / "run.json").read_text())["status"] == "diverged"
    state = torch.load(tmp_path / "d" / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["step"] == 2
    for k, v in good.items():
        assert torch.equal(state["trainer"]["generator"][k], v)


def test_finished_edit_has_atlas_size_and_renders_like_t2l_render(video_atlas_dir, clip, tmp_path):
    # catches: an edit stored at the raster scale (render would refuse it), replicate padding outside the
    # used atlas, and a run video that is not the renderer's output for edit.png
    from PIL import Image

    from t2l.atlas.folder import load_atlas
    from t2l.atlas.render import render_edit
    from t2l.video import VideoRun, resolve_config

    cfg, _ = resolve_config("draft", "cpu", "fg", 2, 2, 0, GEN5)  # the fg atlas runs at 2x
    run = VideoRun.prepare(
        video_atlas_dir, make_prompts("fire"), cfg, clip, torch.device("cpu"), tmp_path / "e", seed=1
    )
    list(run.events())
    list(run.finish(formats=("png",)))
    edit = np.asarray(Image.open(tmp_path / "e" / "edit.png"))
    data = load_atlas(video_atlas_dir)
    assert run.crops.k == 2 and edit.shape == data.layer("fg").texture.shape
    box = run.crops.full_box()
    outside = np.ones(edit.shape[:2], bool)
    outside[box.y0 : box.y1, box.x0 : box.x1] = False
    assert outside.any() and edit[outside].max() == 0  # transparent, no smeared colour
    assert (video_atlas_dir / "edits" / "fg.png").read_bytes() == (tmp_path / "e" / "edit.png").read_bytes()
    _, layer = render_edit(data, {"fg": edit})
    back = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "e" / "layer").glob("*.png"))])
    np.testing.assert_array_equal(back, layer)
    report = run.summary["consistency"]
    assert report["warp"]["stride_1"]["layer"] < 0.5  # glued to the atlas: ~0 on the exact flow


def test_input_banks_are_built_once_per_frame_and_feed_their_items(video_atlas_dir, clip, tmp_path):
    # catches: items encoding E(in) every step (the bank unused) or drawing from another frame's bank
    run = _run(video_atlas_dir, clip, tmp_path / "k", steps=1)
    run.trainer = run._prepare_trainer()
    banks = run.crops.banks
    assert len(banks) == 8 and all(b.shape == (4 * 2, 32) for b in banks)  # input_bank 4 x 2 views
    assert run.crops.atlas_bank.shape == (8, 32)
    assert not torch.equal(banks[0], banks[5])
    rng = torch.Generator().manual_seed(0)
    for step in (0, 1):
        call, direct, *full = run.crops.sample(step, rng)
        ids = {id(b) for b in banks}
        assert all(id(ex.input_bank) in ids for ex in [*call.items, direct])
        if full:
            assert full[0].input_bank is run.crops.atlas_bank
