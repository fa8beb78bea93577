"""The training loop on a tiny random CLIP: it optimises what it should, deterministically, resumably."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2l.augment import CropConfig, ViewConfig, apply_crop, sample_crop
from t2l.generator import Generator, GeneratorConfig
from t2l.losses import LossWeights, composite
from t2l.train import Example, TextBank, TrainConfig, Trainer

GEN = GeneratorConfig(depth=4, width=16)


@pytest.fixture(scope="module")
def clip(tiny_clip_files):
    from t2l.clip import ClipSpec
    from t2l.clip.model import load_clip

    cfg, weights = tiny_clip_files
    return load_clip(ClipSpec(str(cfg), str(weights), offline=True), "cpu")


def _images():
    g = torch.Generator().manual_seed(0)
    inp = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(64, 64), mode="bilinear")
    inp = inp * torch.tensor([0.3, 0.4, 1.0]).view(1, 3, 1, 1)  # bluish, smooth
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    stripes = ((xx // 8 + yy // 8) % 2).float()
    target = torch.stack([stripes, stripes * 0.8, torch.zeros_like(stripes)])[None]  # yellow checkerboard
    return inp, target


def _trainer(clip, texts, x, steps, seed=0, views=4, **train):
    torch.manual_seed(seed)
    gen = Generator(GEN)

    def sample(step, rng):
        p = sample_crop(rng, 64, 64, CropConfig(), GEN.min_size)
        return [Example(apply_crop(x, p))] + ([Example(x)] if step % 5 == 0 else [])

    cfg = TrainConfig(
        steps=steps, views=ViewConfig(n=views, short=64, long_max=91), structure_short=64, **train
    )
    return Trainer(gen, clip, texts, sample, cfg, torch.Generator().manual_seed(seed))


def _similarity(clip, gen, x, target):
    with torch.no_grad():
        gen.train()
        rgba = gen(x)
        e = clip.encode_image(torch.cat([composite(rgba, x), target]))
        return float(F.cosine_similarity(e[:1], e[1:])), float(rgba[:, 3].mean())


def test_composite_moves_towards_an_image_target_while_alpha_stays_sparse(clip):
    x, target = _images()
    with torch.no_grad():
        e_t, e_x = clip.encode_image(target), clip.encode_image(x)
    texts = TextBank(comp=e_t, src=e_x, screen=e_t)  # the "text" targets are image embeddings
    # The target is structurally unlike the input (a checkerboard), so the structure term, which exists
    # to keep the input's layout, is switched off; a higher lr makes 15 steps enough on a random CLIP.
    tr = _trainer(clip, texts, x, steps=15, lr=1e-2, weights=LossWeights(structure=0.0))
    sim0, alpha0 = _similarity(clip, tr.generator, x, target)
    events = list(tr.run())
    sim1, alpha1 = _similarity(clip, tr.generator, x, target)
    assert [e.step for e in events] == list(range(1, 16))
    assert events[-1].loss < events[0].loss
    assert sim1 > sim0 + 0.03, (sim0, sim1)
    assert alpha1 < alpha0 + 0.15, (alpha0, alpha1)  # sparsity keeps the layer from covering everything
    assert events[-1].lr == pytest.approx(1e-2 * 0.99**14)


def test_fixed_seed_is_deterministic_and_resume_is_exact(clip):
    x, target = _images()
    with torch.no_grad():
        texts = TextBank(
            comp=clip.encode_image(target), src=clip.encode_image(x), screen=clip.encode_text(["fire"])
        )
    a = _trainer(clip, texts, x, steps=4, seed=7)
    list(a.run())
    b = _trainer(clip, texts, x, steps=4, seed=7)
    for _ in range(2):
        b.train_step()
    state = b.state_dict()
    c = _trainer(
        clip, texts, x, steps=4, seed=123
    )  # different init and RNG: the checkpoint must override both
    c.load_state_dict(state)
    list(c.run())
    assert c.step == 4
    for pa, pc in zip(a.generator.state_dict().values(), c.generator.state_dict().values(), strict=True):
        assert torch.equal(pa, pc)
    d = _trainer(clip, texts, x, steps=4, seed=8)
    list(d.run())
    assert not torch.equal(next(iter(a.generator.parameters())), next(iter(d.generator.parameters())))


def test_bootstrap_term_pulls_alpha_towards_the_relevancy_map(clip):
    x, _ = _images()
    rel = torch.zeros(1, 1, 64, 64)
    rel[..., 16:48, 16:48] = 1.0
    with torch.no_grad():
        e = clip.encode_text(["a photo"])
    texts = TextBank(comp=e, src=e, screen=e)
    torch.manual_seed(0)
    gen = Generator(GEN)
    cfg = TrainConfig(steps=12, views=ViewConfig(n=2, short=64, long_max=91), structure_short=64)
    tr = Trainer(
        gen, clip, texts, lambda s, r: [Example(x, relevancy=rel)], cfg, torch.Generator().manual_seed(0)
    )
    events = list(tr.run())
    # weight 10 * (1 - (step + 1) / 12): present at steps 1..11, zero (so not computed) at the last
    assert all("bootstrap" in e.losses for e in events[:-1]) and "bootstrap" not in events[-1].losses
    assert events[-2].losses["bootstrap"] < 0.8 * events[0].losses["bootstrap"]
    with torch.no_grad():
        a = gen(x)[0, 3]
    assert a[16:48, 16:48].mean() > a.mean() + 0.05


def test_loop_accepts_a_warped_generator_input_as_video_will(clip):
    # video: the generator runs on an atlas crop and its RGBA is resampled into the frame
    x, _ = _images()
    atlas = F.interpolate(x, size=(80, 72), mode="bilinear")
    with torch.no_grad():
        e = clip.encode_text(["fire"])
    torch.manual_seed(0)
    gen = Generator(GEN)
    warp = lambda rgba: F.interpolate(rgba, size=(64, 64), mode="bilinear")  # noqa: E731
    cfg = TrainConfig(steps=2, views=ViewConfig(n=2, short=64, long_max=91, fill=0.0), structure_short=64)
    ex = Example(x, gen_input=atlas, warp=warp)
    tr = Trainer(gen, clip, TextBank(e, e, e), lambda s, r: [ex], cfg, torch.Generator().manual_seed(0))
    events = list(tr.run())
    assert len(events) == 2 and all(torch.isfinite(torch.tensor(ev.loss)) for ev in events)
    assert all(p.grad is not None for p in gen.parameters())


def test_image_sampler_adds_the_unaugmented_full_image_every_75_steps(tmp_path):
    import numpy as np

    from t2l.image import ImageConfig, ImageRun
    from t2l.prompts import make_prompts

    work = torch.rand(1, 3, 140, 150)
    rel = torch.rand(1, 1, 140, 150)
    run = ImageRun(
        tmp_path / "in.png", make_prompts("fire", roi="cake"), ImageConfig(), None, torch.device("cpu"),
        tmp_path, 0, np.zeros((140, 150, 3), np.uint8), work, [], relevancy=rel,
    )  # fmt: skip
    rng = torch.Generator().manual_seed(0)
    counts = {s: len(run._sample(s, rng)) for s in (0, 1, 74, 75, 76, 150)}
    assert counts == {0: 2, 1: 1, 74: 1, 75: 2, 76: 1, 150: 2}
    crop, full = run._sample(75, rng)
    assert full.background is work and full.relevancy is rel  # un-augmented
    assert crop.relevancy.shape[-2:] == crop.background.shape[-2:]  # the prior follows the crop geometry
