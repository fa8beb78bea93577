"""Re-apply a trained image generator without retraining: another size, or a similar image.

`t2l render RUN_DIR` dispatches here for image runs (run.json "kind": "image"). generator.pt
carries its own config, so no training flags are needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from t2l.errors import InputError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def _load_run(run_dir: Path) -> tuple[dict, dict]:
    rj, gp = run_dir / "run.json", run_dir / "generator.pt"
    try:
        info = json.loads(rj.read_text())
    except (OSError, ValueError) as e:
        raise InputError(
            f"{rj} is missing or unreadable ({e})", "pass a folder written by `t2l image`"
        ) from None
    if info.get("kind") != "image":
        raise InputError(
            f"{run_dir} is not an image run (run.json kind={info.get('kind')!r})", "pass a `t2l image` folder"
        )
    if not gp.exists():
        fix = (
            "finish the run with `t2l image ... --resume`"
            if info.get("status") == "interrupted"
            else "re-run `t2l image ... --overwrite` on that folder"
        )
        raise InputError(f"{gp} is missing (run status: {info.get('status')})", fix)
    import torch

    try:
        ckpt = torch.load(gp, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{gp} is unreadable ({e})", "rerun `t2l image --overwrite`") from None
    return info, ckpt


def render_image_run(
    run_dir: Path, out: Path, input: Path | None = None, size: int | None = None, device: str = "auto"
) -> dict:
    """Apply run_dir's generator to `input` (default: the run's own input) at working size `size`
    (shorter side; default: the run's) and write the layer and composites at the input's resolution.

    out: a folder (gets edit.png, composite.png, greenscreen.png, alpha.png) or an image file path
    (composite there, the RGBA layer beside it as <stem>_edit.png). Returns {"status", "outputs", ...}.
    """
    import torch

    from t2l.device import resolve_device
    from t2l.generator import Generator, GeneratorConfig
    from t2l.image import render_layer, write_layer_outputs
    from t2l.imageio import composite_uint8, pil_to_tensor, read_image, resize_short, save_png

    run_dir, out = Path(run_dir), Path(out)
    info, ckpt = _load_run(run_dir)
    gcfg = GeneratorConfig(**ckpt["generator_config"])
    size = int(size or ckpt.get("size") or info["config"]["size"])
    if size < gcfg.min_size:
        raise UsageError(
            f"--size {size} is below the generator's minimum side {gcfg.min_size}", f"use >= {gcfg.min_size}"
        )
    src = Path(input) if input is not None else Path(info["input"])
    image, notes = read_image(src)
    dev = resolve_device(device)
    gen = Generator(gcfg).to(dev)
    gen.load_state_dict(ckpt["generator"])
    work = pil_to_tensor(resize_short(image, size)).to(dev)
    original = np.asarray(image, dtype=np.uint8)
    with torch.no_grad():
        layer = render_layer(gen, work, original.shape[:2])
    if out.suffix.lower() in IMAGE_SUFFIXES:
        paths = {
            "composite": save_png(composite_uint8(layer, original), out),
            "edit": save_png(layer, out.with_name(f"{out.stem}_edit.png")),
        }
    else:
        out.mkdir(parents=True, exist_ok=True)
        paths = write_layer_outputs(layer, original, out)
    return {
        "status": "done",
        "run": str(run_dir),
        "input": str(src),
        "size": size,
        "device": str(dev),
        "notes": notes,
        "outputs": {k: str(v) for k, v in paths.items()},
    }
