"""Seconds per image training step, peak memory and achieved FLOP rate, with a ViT-B/32-shaped CLIP.

The CLIP has random weights of the real ViT-B-32-quickgelu shape (no download needed), wrapped by
ClipBackbone.from_open_clip exactly as load_clip wraps a pretrained one; the input is a synthetic
image. Steps run through the real ImageRun / Trainer code path (ROI prior on unless --no-roi).

    .venv/bin/python benchmarks/image_step.py --size 256 --views 16 --steps 5 --reference
    .venv/bin/python benchmarks/image_step.py --size 512 --views 16 --steps 3 --relevancy-gap 8

Every comparison is measured side by side: each round times one of our steps, then (with
--reference) one reference-style step, then (with --ablate-blocks) our step with open_clip's own
transformer blocks, then the matmul probe, so a shared machine's drift hits all of them alike.
Ratios and the share of the matmul probe are computed per round; medians are reported.
Prints one JSON object (and a readable summary on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VIT_B32_VIEW_GFLOP = 8.8  # forward, one 224x224 view (50 tokens)
GEN_GFLOP_512 = 151.0  # generator forward at 512x512; scales with pixels


def matmul_gflops(device, n: int = 2048, reps: int = 3, cpu_time: bool = False) -> float:
    """Measured fp32 matmul throughput on this machine (GFLOP/s), best of `reps`. cpu_time: per
    second of this process's CPU time (all threads) instead of wall time; see `--cpu-time`."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    clock = time.process_time if cpu_time else time.perf_counter
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t)
    return 2 * n**3 / best / 1e9


def step_gflop(h, w, view_hw, views, struct_hw, clip_bwd: float, bank: bool) -> float:
    """FLOPs of one single-crop step. clip_bwd: backward/forward ratio for the frozen CLIP (1 = input
    gradients only, which is what a frozen CLIP needs; 2 = the usual convention with weight gradients)."""
    tok = lambda hw: (hw[0] // 32) * (hw[1] // 32) + 1  # noqa: E731
    view = VIT_B32_VIEW_GFLOP * tok(view_hw) / 50
    struct = VIT_B32_VIEW_GFLOP * tok(struct_hw) / 50
    gen = GEN_GFLOP_512 * h * w / 512**2
    # composite + green-screen views and the output's structure pass, with input gradients
    clip_grad = (2 * views * view + struct) * (1 + clip_bwd)
    clip_nograd = (0 if bank else views * view) + struct  # input views (unless banked), input structure
    return gen * 3 + clip_grad + clip_nograd


def reference_step(run, clip, roi: str) -> float:
    """Seconds for the reference implementation's per-step work, on our ops: 4 CLIP batches of n views
    (composition, directional-output and green-screen back-propagated, directional-input not),
    2 structure passes and a relevancy forward+backward on the crop. Frozen CLIP (no weight grads),
    which favours the reference."""
    import torch

    from t2l.augment import apply_crop, render_views, sample_crop, sample_views
    from t2l.losses import composite, greenscreen
    from t2l.train import structure_resize

    tr, x = run.trainer, run.work
    cfg = tr.cfg
    t0 = time.perf_counter()
    g = tr.rng
    p = sample_crop(g, x.shape[-2], x.shape[-1], run.cfg.crop, run.cfg.generator.min_size)
    xc = apply_crop(x, p)
    rel = clip.relevancy(xc, roi)  # per-crop relevancy: forward + backward through CLIP
    rgba = tr.generator(xc)
    comp, screen = composite(rgba, xc), greenscreen(rgba)
    h, w = xc.shape[-2:]
    enc = lambda img: clip.encode_image(render_views(img, sample_views(g, h, w, cfg.views)))  # noqa: E731
    loss = enc(comp).sum() + enc(comp).sum() + enc(screen).sum()
    with torch.no_grad():
        enc(xc)
        ss_in = clip.self_similarity(structure_resize(xc, cfg.structure_short, cfg.structure_long_max))
    ss = clip.self_similarity(structure_resize(comp, cfg.structure_short, cfg.structure_long_max))
    loss = loss + (ss - ss_in).pow(2).mean() + (rgba[:, 3:] - rel[:, None]).pow(2).mean()
    loss.backward()
    tr.opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="square working size in px")
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="measured rounds (after 1 warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | tf32 (bf16/tf32: CUDA only)")
    ap.add_argument("--no-roi", action="store_true", help="no ROI bootstrap")
    ap.add_argument(
        "--relevancy-gap", type=int, default=0, help="compare once-cropped vs per-crop relevancy on N crops"
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--reference", action="store_true", help="also time a reference-style step in every round"
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time everything (steps and matmul probe) in process CPU seconds, not wall seconds: on a "
        "CPU shared with other jobs, waiting for a core then costs nothing (OpenMP spinning still counts)",
    )
    ap.add_argument(
        "--ablate-blocks",
        action="store_true",
        help="also time our step with open_clip's own blocks (blk(x)) instead of ClipBackbone.run_block",
    )
    a = ap.parse_args()

    import open_clip
    import torch
    from PIL import Image

    from t2l.augment import CropConfig, apply_crop, sample_crop, view_size
    from t2l.clip.model import ClipBackbone
    from t2l.device import resolve_device
    from t2l.image import ImageRun, resolve_config
    from t2l.prompts import make_prompts
    from t2l.train import structure_resize

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    clip = ClipBackbone.from_open_clip(model, "ViT-B-32-quickgelu", "random (benchmark)").to(dev)

    tmp = Path(tempfile.mkdtemp(prefix="t2l-bench-"))
    rs = np.random.RandomState(0)
    small = (rs.rand(16, 16, 3) * 255).astype(np.uint8)
    Image.fromarray(small).resize((a.size, a.size), Image.BICUBIC).save(tmp / "in.png")
    cfg, _ = resolve_config("paper", dev.type, size=a.size, views=a.views, precision=a.precision)
    prompts = make_prompts("rusty jeep", roi=None if a.no_roi else "car", src="jeep")
    run = ImageRun.prepare(tmp / "in.png", prompts, cfg, clip, dev, tmp / "out", seed=0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    events = run.events()
    warm = next(events).seconds  # setup (relevancy, input bank) + step 0, which adds the full image
    setup_and_first = time.perf_counter() - t0
    fast_block = ClipBackbone.run_block
    rounds: dict[str, list[float]] = {"ours": [], "reference": [], "open_clip_blocks": [], "matmul": []}

    clock = time.process_time if a.cpu_time else time.perf_counter

    def timed(fn) -> float:
        sync()
        t = clock()
        fn()
        sync()
        return clock() - t

    for _ in range(a.steps):
        rounds["ours"].append(timed(run.trainer.train_step))
        if a.reference:
            rounds["reference"].append(timed(lambda: reference_step(run, clip, "car")))
        if a.ablate_blocks:
            ClipBackbone.run_block = lambda self, blk, x: blk(x)
            try:
                rounds["open_clip_blocks"].append(timed(run.trainer.train_step))
            finally:
                ClipBackbone.run_block = fast_block
        rounds["matmul"].append(matmul_gflops(dev, cpu_time=a.cpu_time))
    secs = rounds["ours"]
    wall = time.perf_counter() - t0
    h, w = run.work.shape[-2:]
    measured = rounds["ours"]
    med = statistics.median(measured)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    tcfg = run.trainer.cfg
    view_hw = view_size(h, w, tcfg.views)
    crop_side = round(h * 1.0 * 0.925)  # mean crop: scale E=1.0, crop fraction E=0.925
    s_hw = tuple(structure_resize(torch.zeros(1, 1, crop_side, crop_side), 224, 380).shape[-2:])
    gf1 = step_gflop(crop_side, crop_side, view_hw, a.views, s_hw, clip_bwd=1.0, bank=run.cfg.input_bank > 0)
    gf2 = step_gflop(crop_side, crop_side, view_hw, a.views, s_hw, clip_bwd=2.0, bank=run.cfg.input_bank > 0)
    mm = statistics.median(rounds["matmul"])
    share = [gf1 / t / m for t, m in zip(rounds["ours"], rounds["matmul"], strict=True)]
    result = {
        "benchmark": "image_step",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": str(dev),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "size": a.size,
        "views": a.views,
        "precision": a.precision,
        "roi": not a.no_roi,
        "step_seconds": [round(s, 3) for s in secs],
        "clock": "process CPU s" if a.cpu_time else "wall s",
        "median_step_s": round(med, 3),
        "wall_s": round(wall, 2),
        "setup_and_first_step_s": round(setup_and_first, 2),  # wall s
        "first_step_s": round(warm, 2),  # wall s; step 0 adds the full image
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "relevancy_once_s": round(run.timings.get("relevancy_s", 0.0), 3),
        "input_bank_s": round(run.timings.get("input_bank_s", 0.0), 3),
        "min_step_s": round(min(measured), 3),
        "peak_mem_mib": round(peak, 1),
        "gflop_per_step": round(gf1, 1),
        "gflop_per_step_bwd2x": round(gf2, 1),
        "achieved_gflops": round(gf1 / med, 1),
        "matmul_gflops": [round(m, 1) for m in rounds["matmul"]],
        "fraction_of_matmul": round(statistics.median(share), 3),  # median over rounds of per-round shares
        "fraction_of_matmul_rounds": [round(f, 3) for f in share],
        "fraction_of_matmul_bwd2x": round(statistics.median(share) * gf2 / gf1, 3),
    }
    if a.relevancy_gap:
        x, rel = run.work, run.relevancy
        g = torch.Generator().manual_seed(1)
        diffs, corrs, t_crop = [], [], []
        for _ in range(a.relevancy_gap):
            p = sample_crop(g, x.shape[-2], x.shape[-1], CropConfig(), 129)
            once = apply_crop(rel, p, jitter=False)[0, 0]
            t = time.perf_counter()
            per = clip.relevancy(apply_crop(x, p, jitter=False), "car")[0].detach()
            t_crop.append(time.perf_counter() - t)
            diffs.append(float((once - per).abs().mean()))
            corrs.append(float(np.corrcoef(once.flatten().cpu().numpy(), per.flatten().cpu().numpy())[0, 1]))
        result["relevancy_gap"] = {
            "crops": a.relevancy_gap,
            "mean_abs_diff": round(statistics.mean(diffs), 4),
            "max_mean_abs_diff": round(max(diffs), 4),
            "mean_pearson_r": round(statistics.mean(corrs), 4),
            "per_crop_relevancy_s": round(statistics.median(t_crop), 3),
        }
    for name in ("reference", "open_clip_blocks"):
        other = rounds[name]
        if other:
            ratios = [o / t for o, t in zip(other, rounds["ours"], strict=True)]  # > 1: ours is faster
            result[name] = {
                "seconds": [round(t, 3) for t in other],
                "ratio_per_round": [round(r, 2) for r in ratios],
                "ratio_median": round(statistics.median(ratios), 2),
            }
    print(json.dumps(result))
    print(
        f"{a.size}px {a.views} views {dev}: {med:.2f} s/step, peak {peak:.0f} MiB, "
        f"{result['achieved_gflops']} GFLOP/s = {result['fraction_of_matmul']:.0%} of matmul ({mm:.0f} GFLOP/s)"
        + "".join(
            f"; {n} / ours {result[n]['ratio_median']}x"
            for n in ("reference", "open_clip_blocks")
            if n in result
        ),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
