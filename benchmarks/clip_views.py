"""Seconds and GFLOP/s for a batch of CLIP views, forward + backward to the input, ViT-B/32-shaped.

The CLIP has random weights of the real ViT-B-32-quickgelu shape (no download), wrapped by
ClipBackbone.from_open_clip as load_clip wraps a pretrained one. One "step" = encode_image of
`--views` views of `--size` (or `--hw H W`) with gradients to the input, like the composite loss.

    .venv/bin/python benchmarks/clip_views.py                    # 16 views at 224, CPU
    .venv/bin/python benchmarks/clip_views.py --hw 224 320 --repeats 3 --relevancy

GFLOP counts: ViT-B/32 forward ~8.8 GFLOP per 224x224 view (50 tokens), scaled by token count.
"nominal" counts backward as 2x forward (weight + input gradients); the CLIP is frozen, so only
input gradients are computed and "effective" counts backward as 1x. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

VIT_B32_VIEW_GFLOP = 8.8  # forward, one 224x224 view (50 tokens)


def timed(fn, repeats: int, sync) -> list[float]:
    fn()  # warm-up: allocator, positional-table cache, threads
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="square view side (ignored with --hw)")
    ap.add_argument("--hw", type=int, nargs=2, metavar=("H", "W"), help="non-square views")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--relevancy", action="store_true", help="also time one relevancy map (1 image)")
    args = ap.parse_args()

    import open_clip
    import torch

    from t2l.clip.model import ClipBackbone
    from t2l.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    clip = ClipBackbone.from_open_clip(model, "ViT-B-32-quickgelu", "random weights").to(device)
    h, w = args.hw or (args.size, args.size)
    x = torch.rand(args.views, 3, h, w, device=device)
    tokens = (h // clip.patch_size) * (w // clip.patch_size) + 1
    fwd_gflop = args.views * VIT_B32_VIEW_GFLOP * tokens / 50

    def fwd():
        with torch.no_grad():
            clip.encode_image(x)

    def fwd_bwd():
        xi = x.detach().requires_grad_(True)
        clip.encode_image(xi).square().sum().backward()

    fwd_times = timed(fwd, args.repeats, sync)
    step_times = timed(fwd_bwd, args.repeats, sync)
    t_fwd, t_step = statistics.median(fwd_times), statistics.median(step_times)
    result = {
        "benchmark": "clip_views",
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes sharing the CPU skew timings
        "views": args.views,
        "view_hw": [h, w],
        "tokens": tokens,
        "repeats": args.repeats,
        "forward_s": round(t_fwd, 3),
        "forward_backward_s": round(t_step, 3),
        "forward_backward_min_s": round(min(step_times), 3),  # least disturbed repeat on a shared CPU
        "forward_gflop_per_s": round(fwd_gflop / t_fwd, 1),
        "nominal_gflop_per_s": round(3 * fwd_gflop / t_step, 1),  # backward counted as 2x forward
        "effective_gflop_per_s": round(2 * fwd_gflop / t_step, 1),  # input gradients only (frozen CLIP)
    }
    if args.relevancy:
        img = x[:1]
        result["relevancy_s"] = round(
            statistics.median(timed(lambda: clip.relevancy(img, "a cat"), args.repeats, sync)), 3
        )
    print(
        f"{args.views} views {h}x{w} on {device} ({result['threads']} threads): forward {t_fwd:.2f} s, "
        f"forward+backward {t_step:.2f} s (median of {args.repeats}); "
        f"{result['nominal_gflop_per_s']} GFLOP/s nominal, {result['effective_gflop_per_s']} effective",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
