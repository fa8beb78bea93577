"""Benchmark atlas fitting on synthetic clips with known ground truth.

For each case: wall time of every stage, reconstruction PSNR, foreground IoU (automatic masks and
the fitted opacity against the true mask), drift in px/frame (along the trusted DIS flow and along
the TRUE motion) and peak resident memory. Each case runs in a fresh process so peak memory is its own.

    .venv/bin/python benchmarks/atlas_fit.py                      # default: 30 frames 240x432, draft
    .venv/bin/python benchmarks/atlas_fit.py --preset quality --device cuda
    .venv/bin/python benchmarks/atlas_fit.py --cases easy,fast --frames 30 --json out.json

Drift: for trusted forward-flow pixels p of frame t belonging to a layer (alpha > 0.5 for fg),
|uv_t(p) - uv_{t+1}(p + flow(p))| in atlas pixels divided by the atlas-pixel-per-frame-pixel scale
(measured per layer: the median sqrt|det J| of its mapping, ~1.5 by default; t2l.atlas.fit.atlas_scale).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

CASES = {
    # camera pan and object speed in px/frame at 432 px width
    "easy": {"pan": (2.5, 0.6), "speed": (3.0, 0.8), "detail": 1.0},
    "fast": {"pan": (6.0, 1.5), "speed": (7.0, -2.0), "detail": 1.5},
    # camera zoom + roll, object spinning and changing size (not a similarity: the grids must absorb it)
    "hard": {
        "pan": (5.0, 1.0),
        "zoom": 0.004,
        "rotate": 0.3,
        "speed": (6.0, -2.0),
        "spin": 1.5,
        "breathe": 0.08,
        "detail": 1.5,
    },
    # real photos (examples/chelsea.png as background, examples/coffee.png as the object): flat areas, sharp edges
    "photo": {
        "pan": (4.0, 1.0),
        "zoom": 0.003,
        "rotate": 0.2,
        "speed": (5.0, -1.5),
        "spin": 1.0,
        "breathe": 0.05,
    },
}


def run_case(
    name: str, frames: int, height: int, width: int, preset: str, device: str, steps: int | None
) -> dict:
    import numpy as np
    import torch

    from t2l.atlas.fit import AtlasFitter, drift
    from t2l.atlas.flow import FlowConfig, compute_flows, endpoint_error
    from t2l.atlas.masks import iou, motion_masks
    from t2l.atlas.run import PRESETS, AtlasConfig
    from t2l.atlas.synthetic import SyntheticConfig, make_clip
    from t2l.device import resolve_device

    dev = resolve_device(device)
    images = {}
    if name == "photo":  # the repository's CC0 example photos (examples/README.md)
        import numpy as np
        from PIL import Image

        ex = Path(__file__).resolve().parent.parent / "examples"
        images = {role: np.asarray(Image.open(ex / f).convert("RGB")) for role, f in
                  (("background", "chelsea.png"), ("texture", "coffee.png"))}  # fmt: skip
    clip = make_clip(SyntheticConfig(frames=frames, height=height, width=width, **CASES[name]), **images)
    p = PRESETS[preset]
    times = {}
    t0 = time.perf_counter()
    flows = compute_flows(clip.frames, FlowConfig(preset=p.flow))
    times["flow_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    masks, _ = motion_masks(flows, frames=clip.frames)
    times["masks_s"] = time.perf_counter() - t0
    cfg = AtlasConfig(preset=preset, steps=steps, seed=0).fit_config(frames)  # as `t2l atlas` fits
    t0 = time.perf_counter()
    fitter = AtlasFitter(clip.frames, masks, flows, cfg, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times["init_s"] = time.perf_counter() - t0
    init_psnr = float(np.mean(fitter.export().psnr))
    t0 = time.perf_counter()
    for _ in fitter.run():
        pass
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = fitter.export()
    times["export_s"] = time.perf_counter() - t0
    truth = {"forward": clip.flow, "forward_valid": np.ones(clip.flow.shape[:3], bool)}
    return {
        "case": name,
        "preset": preset,
        "device": str(dev),
        "frames": frames,
        "size": f"{height}x{width}",
        "steps": cfg.steps,
        "total_s": round(sum(times.values()), 1),
        **{k: round(v, 2) for k, v in times.items()},
        "psnr_init": round(init_psnr, 2),
        "psnr": round(float(np.mean(res.psnr)), 2),
        "psnr_min": round(float(np.min(res.psnr)), 2),
        "iou_masks": round(iou(masks, clip.masks), 3),
        "iou_alpha": round(iou(res.alpha > 0.5, clip.masks), 3),
        "drift_flow": {k: round(v, 3) for k, v in res.consistency.items()},
        "drift_true": {
            lay["name"]: round(drift(lay["uv"], lay["uv_to_px"], truth, res.alpha, lay["name"]), 3)
            for lay in res.layers
        },
        "flow_epe_trusted": round(endpoint_error(flows["forward"], clip.flow, flows["forward_valid"]), 3),
        "trusted_frac": round(float(flows["forward_valid"].mean()), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }


def _child(q, *args):
    try:
        q.put(run_case(*args))
    except Exception as e:  # noqa: BLE001 - report and keep benchmarking the other cases
        q.put({"case": args[0], "error": f"{type(e).__name__}: {e}"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="easy,fast,hard")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=432)
    ap.add_argument("--preset", default="draft", choices=["draft", "quality"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for name in args.cases.split(","):
        q = ctx.Queue()
        p = ctx.Process(
            target=_child,
            args=(q, name, args.frames, args.height, args.width, args.preset, args.device, args.steps),
        )
        p.start()
        results.append(q.get())
        p.join()
        print(json.dumps(results[-1]), flush=True)
    print(
        f"\nmachine: {platform.machine()} {mp.cpu_count()} cores, {platform.platform()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    cols = ["case", "preset", "device", "frames", "size", "steps", "total_s", "fit_s", "psnr_init", "psnr", "iou_masks",
            "iou_alpha", "drift_flow", "drift_true", "peak_rss_mb"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, r.get("error", ""))) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
