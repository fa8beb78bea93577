"""Seconds per `t2l video` training step vs a reference-style step, the draft run's cost, memory vs clip length.

CLIP: ViT-B-32-quickgelu with RANDOM weights (same cost as the real model), saved once to
benchmarks/.cache/ as .safetensors and loaded through t2l.clip.model.load_clip (offline), as `t2l video`
loads weights. Atlas: a synthetic 30-frame clip (t2l.atlas.synthetic.make_clip) fitted with the draft
atlas preset through t2l.atlas.run.AtlasRun (cached in benchmarks/.cache/, which ignores itself), or
`--atlas exact`: built directly with exact uv / alpha (no fit).

    .venv/bin/python benchmarks/video_step.py                         # paper + draft, ours vs reference-style
    .venv/bin/python benchmarks/video_step.py --run 10                # + a shortened real VideoRun (peak RSS)
    .venv/bin/python benchmarks/video_step.py --memory 30,70,120      # + peak RSS vs clip length (exact atlases)
    .venv/bin/python benchmarks/video_step.py --device cuda --frames 70 --height 432 --width 768
    .venv/bin/python benchmarks/video_step.py --quick                 # small dry run of every part (minutes)

"Reference-style" step (video-facts.md), built from our own ops: the layer's atlas crop at `--ref-density`
(2) times our raster density (the 2000-texel raster: ~2 texels per frame pixel), so the generator sees
~4x the pixels; the generator runs once PER ITEM (3 frame items + the direct item = 4 passes) instead of
once per atlas crop; per item separate CLIP batches for composition, directional E(out) and screen (with
gradients) and E(in) (views independent, no grad), two structure passes; one backward of the summed loss.
Ours and reference-style steps alternate (ours, ref, ours, ref ...) under the same load; medians after
warm-up. Where the time goes: wall timers around the forwards (generator, CLIP views with/without
gradients, structure, sampling, warps) and, on the CPU, torch.profiler's backward ops split into the
generator's (convolution, batch norm, ...) and the rest (CLIP, views, warps).

Prints one JSON object on stdout (and a summary on stderr); --json FILE also writes it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
MODEL = "ViT-B-32-quickgelu"
PROMPT, SRC, ROI = "rusty jeep", "jeep", "car"
GEN_BWD_OPS = ("convolution", "batchnorm", "batch_norm", "leakyrelu", "leaky_relu", "upsample", "maxpool", "max_pool", "avgpool", "avg_pool", "reflection", "cudnn")  # fmt: skip


def rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    ign = CACHE / ".gitignore"
    if not ign.exists():
        ign.write_text("*\n")  # the cache never reaches git, whatever the repository's .gitignore says
    return CACHE


def random_clip(device):
    """ViT-B-32-quickgelu with random weights (seed 0), through load_clip like real weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from t2l.clip.model import load_clip
    from t2l.clip.spec import ClipSpec

    path = cache_dir() / "vit-b-32-quickgelu-random0.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        m = open_clip.create_model(MODEL, pretrained=None)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp))
        tmp.rename(path)
    return load_clip(ClipSpec(MODEL, str(path), offline=True), device)


# ---- atlases ------------------------------------------------------------------------------------


def fitted_atlas(frames: int, height: int, width: int) -> Path:
    """A make_clip clip fitted with the draft atlas preset (AtlasRun, CPU), cached by size."""
    from PIL import Image

    from t2l.atlas.run import AtlasRun, folder_state
    from t2l.atlas.run import resolve_config as atlas_config
    from t2l.atlas.synthetic import SyntheticConfig, make_clip

    d = cache_dir() / f"atlas-fit-{frames}x{height}x{width}"
    if folder_state(d) == "done":
        return d
    shutil.rmtree(d, ignore_errors=True)
    src = cache_dir() / f"clip-{frames}x{height}x{width}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    clip = make_clip(SyntheticConfig(frames=frames, height=height, width=width))
    for t, f in enumerate(clip.frames):
        Image.fromarray(f).save(src / f"{t:05d}.png")
    cfg, _ = atlas_config("draft", "cpu", size=max(height, width), seed=0)
    t0 = time.perf_counter()
    run = AtlasRun.prepare(src, d, cfg, "cpu")
    for _ in run.events():
        pass
    print(f"fitted {d.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return d


def exact_atlas(frames: int, height: int, width: int, side: int | None = None, flow: bool = False):
    """AtlasData with exact uv / alpha: a camera panning 2 px/frame over a smooth random background, a
    textured square (side ~0.55 x height) moving 3 px/frame (bouncing) over it. uv = atlas pixels."""
    from fractions import Fraction

    import torch
    import torch.nn.functional as F

    from t2l.atlas.folder import AtlasData, AtlasLayer
    from t2l.video_read import VideoInfo

    T, H, W = frames, height, width
    S = side or int(0.55 * H)
    pan, speed = 2, 3
    g = torch.Generator().manual_seed(1)
    bw, bh = W + pan * T + 8, H + 8
    bg = F.interpolate(torch.rand(1, 3, bh // 8, bw // 8, generator=g), size=(bh, bw), mode="bilinear")
    bg = (bg[0].permute(1, 2, 0).numpy() * 200).astype(np.uint8)
    fa = S + 8
    yy, xx = np.mgrid[0:S, 0:S]
    obj = np.zeros((fa, fa, 3), np.uint8)
    obj[4 : 4 + S, 4 : 4 + S] = np.stack([(xx * 9) % 255, (yy * 7) % 255, 255 - (xx * 5) % 255], -1)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    span = W - S
    x0s = [abs((speed * t) % (2 * span) - span) for t in range(T)]  # bounce inside the frame
    y0 = (H - S) // 2
    fr = np.empty((T, H, W, 3), np.uint8)
    uvb = np.empty((T, H, W, 2), np.float32)
    uvf = np.empty((T, H, W, 2), np.float32)
    alpha = np.zeros((T, H, W), np.float32)
    for t in range(T):
        fr[t] = bg[4 : 4 + H, pan * t + 4 : pan * t + 4 + W]
        alpha[t, y0 : y0 + S, x0s[t] : x0s[t] + S] = 1
        fr[t][alpha[t] > 0] = obj[4 : 4 + S, 4 : 4 + S].reshape(-1, 3)
        uvb[t, ..., 0], uvb[t, ..., 1] = xs + pan * t + 4, ys + 4
        uvf[t, ..., 0], uvf[t, ..., 1] = xs - x0s[t] + 4, ys - y0 + 4
    tex_bg = np.concatenate([bg, np.full((bh, bw, 1), 255, np.uint8)], -1)
    tex_fg = np.concatenate([obj, np.zeros((fa, fa, 1), np.uint8)], -1)
    tex_fg[4 : 4 + S, 4 : 4 + S, 3] = 255
    fl = None
    if flow:  # approximate (no validity check): only the consistency report reads it
        fw = np.zeros((T - 1, H, W, 2), np.float16)
        fw[..., 0] = -pan
        fl = {"forward": fw, "backward": -fw, "forward_valid": np.ones(fw.shape[:3], bool)}
        fl["backward_valid"] = fl["forward_valid"]
    info = VideoInfo(
        "synthetic", W, H, Fraction(10), 0, tuple(t / 10 for t in range(T)), True, tuple(range(T))
    )
    return AtlasData(
        frames=fr,
        info=info,
        layers=[AtlasLayer("bg", uvb, tex_bg, (1, 0, 1, 0)), AtlasLayer("fg", uvf, tex_fg, (1, 0, 1, 0))],
        alpha=alpha,
        reconstruction=fr,
        psnr=[float("inf")] * T,
        flow=fl,
    )


def atlas_bytes(data) -> int:
    n = data.frames.nbytes + (data.alpha.nbytes if data.alpha is not None else 0)
    for lay in data.layers:
        n += lay.uv.nbytes + lay.texture.nbytes
    return n


def load_data(a):
    """(atlas folder or None, AtlasData) for the options."""
    from t2l.atlas.folder import load_atlas

    if a.atlas == "exact":
        return None, exact_atlas(a.frames, a.height, a.width)
    d = fitted_atlas(a.frames, a.height, a.width)
    return d, load_atlas(d)


# ---- runs ---------------------------------------------------------------------------------------


def make_run(data, atlas_dir, clip, dev, preset: str, steps: int, layer: str, roi: bool, precision: str):
    from t2l.prompts import make_prompts
    from t2l.video import VideoRun, resolve_config

    cfg, _ = resolve_config(preset, dev.type, layer=layer, steps=steps, precision=precision)
    prompts = make_prompts(PROMPT, roi=ROI if roi else None, src=SRC)
    out = Path(tempfile.mkdtemp(prefix="vbench_run_"))
    run = VideoRun.prepare(
        atlas_dir or out / "atlas", prompts, cfg, clip, dev, out / "run", seed=0, data=data
    )
    return run


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


class RefStep:
    """The reference-style step on the run's atlas and trainer (see the module docstring)."""

    def __init__(self, run, density: int):
        import torch
        import torch.nn.functional as F

        c = run.crops
        r = copy.copy(c)
        k = c.k * density
        r.k, r.atlas_min = k, math.ceil(c.min_side / k)
        tex = torch.from_numpy(np.array(run.layer.texture[..., :3])).permute(2, 0, 1)[None].float() / 255
        r.raster = F.interpolate(tex, scale_factor=k, mode="bilinear", align_corners=False).to(c.device)
        self.crops, self.tr, self.k = r, run.trainer, k
        self.rng = torch.Generator().manual_seed(12345)

    def item_loss(self, pre, ex, step):
        import torch

        from t2l.augment import render_views, sample_views
        from t2l.losses import (
            bootstrap_loss,
            directional_loss,
            sparsity_terms,
            structure_loss,
            text_distance_loss,
        )
        from t2l.train import _draw, structure_resize

        tr, g = self.tr, self.rng
        cfg, w, clip, t = tr.cfg, tr.cfg.weights, tr.clip, tr.texts
        bg, a = ex.background, pre[:, 3:4]
        comp = pre[:, :3] + (1 - a) * bg
        screen = pre[:, :3] + (1 - a) * tr._green
        h, wd = bg.shape[-2:]

        def enc(x):
            return clip.encode_image(
                render_views(x, sample_views(g, h, wd, cfg.views), cfg.views.fill)
            ).float()

        with tr._autocast():
            e_comp, e_dir, e_screen = enc(comp), enc(comp), enc(screen)
            with torch.no_grad():
                e_in = enc(bg)
                ss_in = clip.self_similarity(
                    structure_resize(bg, cfg.structure_short, cfg.structure_long_max)
                )
            ss_out = clip.self_similarity(structure_resize(comp, cfg.structure_short, cfg.structure_long_max))
        l0, l1 = sparsity_terms(a)
        loss = (
            w.comp * text_distance_loss(e_comp, t.comp[_draw(g, len(t.comp))])
            + w.comp * directional_loss(e_dir, e_in, tr.text_dirs[_draw(g, len(tr.text_dirs))])
            + w.screen * text_distance_loss(e_screen, t.screen[_draw(g, len(t.screen))])
            + w.structure * structure_loss(ss_out.float(), ss_in.float())
            + w.sparsity * (w.l0 * l0 + w.l1 * l1)
        )
        bw = tr.bootstrap_weight(step)
        if ex.relevancy is not None and bw > 0:
            loss = loss + bw * bootstrap_loss(a, ex.relevancy.to(a))
        return loss

    def __call__(self, step: int) -> float:
        from t2l.train import GeneratorCall

        tr, dev = self.tr, self.tr.device
        sync(dev)
        t0 = time.perf_counter()
        tr.generator.train()
        tr.opt.zero_grad(set_to_none=True)
        pairs = []
        for c in self.crops.sample(step, self.rng):
            if isinstance(c, GeneratorCall):  # the reference: one generator pass PER frame item
                pairs += [(c.gen_input, ex) for ex in c.items]
            else:
                pairs.append((c.gen_input if c.gen_input is not None else c.background, c))
        loss = 0.0
        for gi, ex in pairs:
            with tr._autocast():
                rgba = tr.generator(gi).float()
            loss = loss + self.item_loss(ex.warp(rgba), ex, step) / len(pairs)
        loss.backward()
        float(loss.detach())
        tr.opt.zero_grad(set_to_none=True)
        sync(dev)
        return time.perf_counter() - t0


@contextmanager
def section_timers(run, ref: RefStep, dev, who: dict):
    """Wall timers (synchronised) around the forwards of the steps run inside; fills acc[who["now"]]."""
    import torch

    acc: dict[str, dict[str, float]] = {"ours": {}, "reference": {}}

    def add(k: str, dt: float) -> None:
        d = acc[who["now"]]
        d[k] = d.get(k, 0.0) + dt

    def timed(name_fn, fn):
        def wrapper(*args, **kw):
            sync(dev)
            t = time.perf_counter()
            out = fn(*args, **kw)
            sync(dev)
            add(name_fn(), time.perf_counter() - t)
            return out

        return wrapper

    grad = torch.is_grad_enabled
    gen, clip = run.trainer.generator, run.clip
    patches = [
        (gen, "forward", lambda: "generator_fwd"),
        (clip, "encode_image", lambda: "clip_views_fwd" if grad() else "e_in_fwd"),
        (clip, "self_similarity", lambda: "structure_fwd" if grad() else "structure_in_fwd"),
    ]
    for obj, name, key in patches:
        setattr(obj, name, timed(key, getattr(obj, name)))

    def sampler(inner):
        def sample(step, rng):
            sync(dev)
            t = time.perf_counter()
            out = inner(step, rng)
            for ex in [ex for c in out for ex in getattr(c, "items", [c])]:
                if ex.warp is not None:
                    ex.warp = timed(lambda: "warp_fwd", ex.warp)
            sync(dev)
            add("sampling", time.perf_counter() - t)
            return out

        return sample

    saved = (run.trainer.sample, ref.crops.sample)
    run.trainer.sample = sampler(run.crops.sample)
    ref.crops.sample = sampler(ref.crops.sample)
    try:
        yield acc
    finally:
        run.trainer.sample = saved[0]
        del ref.crops.sample
        for obj, name, _ in patches:
            delattr(obj, name)


def backward_split(fn, dev) -> dict:
    """CPU: seconds of the backward ops of one call of fn, generator's vs the rest (torch.profiler)."""
    if dev.type != "cpu":
        return {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    gen = rest = 0.0
    for e in prof.key_averages():
        if e.key.startswith("autograd::engine::evaluate_function:"):
            s = e.cpu_time_total / 1e6
            if any(k in e.key.lower() for k in GEN_BWD_OPS):
                gen += s
            else:
                rest += s
    return {"generator_bwd": round(gen, 3), "clip_views_warp_bwd": round(rest, 3)}


def bench_setting(a, data, atlas_dir, clip, dev, preset: str) -> dict:
    """Ours vs reference-style, alternating, for one preset; plus where the time goes."""
    import torch

    from t2l.video import PRESETS

    pairs, warm = a.steps, a.warmup
    run = make_run(data, atlas_dir, clip, dev, preset, 10**6, a.layer, a.roi, a.precision)
    t0 = time.perf_counter()
    run._before_training()
    run.trainer = run._prepare_trainer()
    setup = time.perf_counter() - t0
    ref = RefStep(run, a.ref_density)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = run.trainer.train_step().seconds  # step 0: includes the whole-atlas item (every 75 steps)
    ref(0)
    ours, refs, who = [], [], {"now": "ours"}
    for _ in range(warm):
        run.trainer.train_step()
        ref(run.trainer.step)
    with section_timers(run, ref, dev, who) as acc:  # forwards timed inside the measured steps
        for _ in range(pairs):
            step = run.trainer.step
            who["now"] = "ours"
            ours.append(run.trainer.train_step().seconds)
            who["now"] = "reference"
            refs.append(ref(step))
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    where = {}
    for name, secs in (("ours", ours), ("reference", refs)):
        d = {k: round(v / pairs, 3) for k, v in sorted(acc[name].items())}
        d["backward_optimizer_rest"] = round((sum(secs) - sum(acc[name].values())) / pairs, 3)
        d["total"] = round(sum(secs) / pairs, 3)
        where[name] = d
    if a.profile:  # one more step each under torch.profiler: backward ops, generator's vs the rest
        where["ours"].update(backward_split(lambda: run.trainer.train_step(), dev))
        where["reference"].update(backward_split(lambda: ref(run.trainer.step), dev))
    c = run.crops
    med_o, med_r = statistics.median(ours), statistics.median(refs)
    return {
        "preset": preset,
        "views": run.cfg.train.views.n,
        "preset_steps": PRESETS[preset]["steps"],
        "layer": a.layer,
        "our_raster_scale": c.k,
        "ref_raster_scale": ref.k,
        "setup_s": round(setup, 2),
        "first_step_s (with whole atlas)": round(first, 3),
        "ours_s": [round(t, 3) for t in ours],
        "reference_style_s": [round(t, 3) for t in refs],
        "ours_median_s": round(med_o, 3),
        "reference_median_s": round(med_r, 3),
        "speedup_median": round(med_r / med_o, 2),
        "speedup_per_pair_median": round(
            statistics.median(r / o for r, o in zip(refs, ours, strict=True)), 2
        ),
        "speedup_min": round(min(refs) / min(ours), 2),
        "gpu_peak_mib": round(gpu_peak) if gpu_peak is not None else None,
        "where_the_time_goes_s_per_step": where,
    }


def stability(a, data, atlas_dir, clip, dev, n: int) -> dict:
    """n paper steps per precision from the same seed (same crops): losses finite, final loss vs fp32."""
    import torch

    from t2l.run import TrainingDiverged

    out: dict[str, dict] = {}
    for prec in a.stability_precisions.split(","):
        if prec != "fp32" and dev.type != "cuda":
            out[prec] = {"skipped": "CUDA only (never autocast on the CPU)"}
            continue
        run = make_run(data, atlas_dir, clip, dev, "paper", n, a.layer, False, prec)
        losses, secs, err = [], [], None
        try:
            for ev in run.events():
                losses.append(ev.loss)
                secs.append(ev.seconds)
        except TrainingDiverged as e:
            err = str(e)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        tail = losses[-max(1, min(20, n // 5)) :]
        out[prec] = {
            "steps": len(losses),
            "all_finite": err is None and all(math.isfinite(x) for x in losses),
            "diverged": err,
            "first_loss": round(losses[0], 4) if losses else None,
            "final_loss_mean_tail": round(statistics.mean(tail), 4) if losses else None,
            "median_step_s": round(statistics.median(secs), 4) if secs else None,
        }
    ref = out.get("fp32", {}).get("final_loss_mean_tail")
    for d in out.values():
        if ref and d.get("final_loss_mean_tail") is not None:
            d["final_rel_diff_vs_fp32"] = round(abs(d["final_loss_mean_tail"] - ref) / abs(ref), 4)
    return out


# ---- a shortened real run (own process: its own peak RSS) ---------------------------------------


def real_run(a, steps: int) -> dict:
    import torch

    from t2l.device import resolve_device

    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    base = rss_mb()
    t0 = time.perf_counter()
    clip = random_clip(dev)
    t_clip = time.perf_counter() - t0
    atlas_dir, data = load_data(a)
    if atlas_dir is None:
        data = exact_atlas(a.frames, a.height, a.width, flow=True)
    t1 = time.perf_counter()
    run = make_run(data, atlas_dir, clip, dev, "draft", steps, a.layer, a.roi, "fp32")
    secs = [ev.seconds for ev in run.events()]
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    for _ in run.finish():
        pass
    t_finish = time.perf_counter() - t2
    return {
        "steps": steps,
        "step_s": [round(s, 2) for s in secs],
        "clip_load_s": round(t_clip, 1),
        "prepare_relevancy_trainer_s": round(t_train - sum(secs), 1),
        "finish_s (edit, video, greenscreen, layer PNGs, report)": round(t_finish, 1),
        "timings": {k: round(v, 2) for k, v in run.timings.items()},
        "peak_rss_mb": round(rss_mb()),
        "rss_at_start_mb": round(base),
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None,
    }


# ---- memory vs clip length (own process per length) ---------------------------------------------


def memory_case(a, frames: int) -> dict:
    import torch

    from t2l.device import resolve_device

    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    clip = random_clip(dev)
    data = exact_atlas(frames, a.height, a.width)
    rss_atlas = current_rss_mb()
    run = make_run(data, None, clip, dev, "paper", 10**6, a.layer, False, a.precision)
    run._before_training()
    run.trainer = run._prepare_trainer()
    sampled = []
    inner_tensors = run.crops._item_tensors

    def counting(t, crop):  # bytes of the frame-crop tensors a step makes (image, weight, uv, relevancy)
        out = inner_tensors(t, crop)
        sampled[-1] += sum(x.numel() * x.element_size() for x in out if x is not None)
        return out

    run.crops._item_tensors = counting
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cur, secs = [], []
    for _ in range(a.memory_steps):
        sampled.append(0)
        secs.append(run.trainer.train_step().seconds)
        cur.append(round(current_rss_mb()))
    return {
        "frames": frames,
        "size": f"{a.height}x{a.width}",
        "atlas_arrays_mb": round(atlas_bytes(data) / 2**20),
        "rss_after_atlas_mb": round(rss_atlas),
        "rss_after_each_step_mb": cur,
        "peak_rss_mb": round(rss_mb()),
        "training_peak_over_atlas_mb": round(rss_mb() - rss_atlas),
        "sampled_frame_tensors_kb_per_step": [round(b / 1024) for b in sampled],
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None,
        "step_s": [round(s, 2) for s in secs],
    }


def _child(q, fn, *args):
    try:
        q.put(fn(*args))
    except Exception as e:  # noqa: BLE001 - report, keep benchmarking the rest
        q.put({"error": f"{type(e).__name__}: {e}"})


def in_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, *args))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="paper,draft", help="settings to compare (t2l.video presets)")
    ap.add_argument("--steps", type=int, default=3, help="measured (ours, reference) pairs per preset")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured pairs after step 0")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=432)
    ap.add_argument("--atlas", default="fit", choices=["fit", "exact"], help="fit (cached) or exact uv")
    ap.add_argument("--layer", default="fg", choices=["fg", "bg"])
    ap.add_argument(
        "--roi", action="store_true", help=f"ROI bootstrap on ({ROI!r}: relevancy once per frame)"
    )
    ap.add_argument("--ref-density", type=int, default=2, help="reference raster density / ours (linear)")
    ap.add_argument("--profile", action="store_true", help="split the backward with torch.profiler (CPU)")
    ap.add_argument("--run", type=int, default=0, help="also a real draft VideoRun of N steps + finish (RSS)")
    ap.add_argument("--memory", default="", help="clip lengths for memory vs length, e.g. 30,70,120")
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | tf32 (bf16/tf32: CUDA only)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny dry run: exact 7-frame 144x256 atlas, 1 pair")
    ap.add_argument(
        "--stability", type=int, default=0, help="N paper steps per precision (bf16/tf32 vs fp32)"
    )
    ap.add_argument("--stability-precisions", default="fp32,bf16,tf32")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    if a.quick:
        a.frames, a.height, a.width, a.atlas = 7, 144, 256, "exact"
        a.steps, a.warmup = 1, 0
        a.presets = "draft" if a.presets == "paper,draft" else a.presets
        a.run = min(a.run, 2)
        a.memory = "7,11" if a.memory else ""
        a.memory_steps = 2
        a.stability = min(a.stability, 3)

    import torch

    from t2l.device import resolve_device

    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    result = {
        "benchmark": "video_step",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": a.precision,
        "load_before": os.getloadavg()[0],
        "clip": f"{MODEL} random weights via load_clip",
        "atlas": f"{a.atlas} {a.frames} frames {a.width}x{a.height}",
    }
    clip = random_clip(dev)
    atlas_dir, data = load_data(a)
    result["settings"] = []
    for preset in [p for p in a.presets.split(",") if p]:
        try:
            r = bench_setting(a, data, atlas_dir, clip, dev, preset)
        except Exception as e:  # noqa: BLE001 - report and continue with the other parts
            r = {"preset": preset, "error": f"{type(e).__name__}: {e}"}
        result["settings"].append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    if a.stability:
        try:
            result["stability"] = stability(a, data, atlas_dir, clip, dev, a.stability)
        except Exception as e:  # noqa: BLE001
            result["stability"] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(result["stability"]), file=sys.stderr, flush=True)
    del clip
    if a.run:
        r = in_process(real_run, a, a.run)
        result["real_run"] = r
        draft = next((s for s in result["settings"] if s.get("preset") == "draft" and "error" not in s), None)
        if draft and "error" not in r:
            from t2l.video import PRESETS

            n = PRESETS["draft"]["steps"]
            full = math.ceil(n / 75)
            step = draft["ours_median_s"]
            extra = max(0.0, draft["first_step_s (with whole atlas)"] - step) * full
            setup = r["clip_load_s"] + r["prepare_relevancy_trainer_s"]
            fin = r["finish_s (edit, video, greenscreen, layer PNGs, report)"]
            result["draft_estimate (EXTRAPOLATED)"] = {
                "steps": n,
                "median_step_s": step,
                "whole_atlas_items": full,
                "setup_s": round(setup, 1),
                "finish_s": fin,
                "total_min": round((setup + n * step + extra + fin) / 60, 1),
            }
        print(json.dumps(r), file=sys.stderr, flush=True)
    if a.memory:
        result["memory_vs_length"] = []
        for n in [int(x) for x in a.memory.split(",")]:
            r = in_process(memory_case, a, n)
            result["memory_vs_length"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    for s in result["settings"]:
        if "error" in s:
            print(f"{s['preset']}: FAILED {s['error']}", file=sys.stderr)
        else:
            print(
                f"{s['preset']} ({s['views']} views, {a.layer}): ours {s['ours_median_s']} s/step, "
                f"reference-style {s['reference_median_s']} s/step: {s['speedup_median']}x",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
