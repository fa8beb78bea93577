#!/usr/bin/env bash
# GPU benchmarks of t2l in one go (~8 minutes on a CUDA machine): image, atlas, video, bf16/TF32 stability.
#
# Writes ONE log, $OUT/gpu-bench.log (OUT defaults to benchmarks/.cache/gpu), with the device name
# (nvidia-smi) and every figure; the raw JSON of each section lies beside it. Extrapolated figures are
# marked "EXTRAPOLATED". Each section has its own timeout; a failed or timed-out section is reported
# ("FAILED: ...") and the script goes on with the next one. Exit status 0 unless setup itself fails.
#
# Through the device tool (the machine copies the working tree; it has no internet):
#     run(command="bash benchmarks/gpu.sh", timeout_s=590)          # $OUT is set there; the log comes back
# Locally:
#     OUT=/tmp/gpu bash benchmarks/gpu.sh
#     QUICK=1 DEVICE=cpu OUT=/tmp/gpu-dry bash benchmarks/gpu.sh     # dry run of every section on a CPU
#
# Python: .venv/bin/python when it imports torch (and t2l); otherwise a venv in /tmp made with
# --system-site-packages and an offline `pip install --no-deps --no-build-isolation -e .`; as a last
# resort python3 with PYTHONPATH=. (the machine must already have torch, open_clip, madgrad, av, cv2).
#
# Sections (CUDA, full mode):
#   image      benchmarks/image_step.py 512 px, 16 views, 30 steps -> s/step, x1000 (EXTRAPOLATED), peak GPU MiB
#   atlas      benchmarks/atlas_fit.py easy, 70 frames 432x768, quality preset shortened to 300 steps
#              -> fit s/step x the preset's budget (EXTRAPOLATED), PSNR at 300 steps, peak GPU MiB
#   video      benchmarks/video_step.py paper preset, 70 frames 768x432 (exact atlas), ours vs
#              reference-style -> s/step x3000 (EXTRAPOLATED), peak GPU MiB; memory at 70 and 120 frames
#   stability  benchmarks/video_step.py --stability 200: fp32, bf16, tf32 from one seed -> finite, final loss
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=${QUICK:-0}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$ROOT/benchmarks/.cache/gpu}
mkdir -p "$OUT"
LOG=$OUT/gpu-bench.log
: >"$LOG"
FAILED=()

say() { echo "$*" | tee -a "$LOG"; }

# ---- python ------------------------------------------------------------------------------------
pick_python() {
    local ok='import torch, open_clip, madgrad, t2l'
    if [ -x .venv/bin/python ] && .venv/bin/python -c "$ok" 2>/dev/null; then
        PY=$ROOT/.venv/bin/python
        return
    fi
    local V=/tmp/t2l-gpu-venv
    if [ ! -x $V/bin/python ]; then
        python3 -m venv --system-site-packages $V 2>>"$LOG" || true
        [ -x $V/bin/python ] && $V/bin/python -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || true
    fi
    if [ -x $V/bin/python ] && $V/bin/python -c "$ok" 2>/dev/null; then
        PY=$V/bin/python
        return
    fi
    PY=python3
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    $PY -c "$ok" >>"$LOG" 2>&1 || say "WARNING: $PY cannot import torch/open_clip/madgrad/t2l: sections will fail"
}

# section NAME TIMEOUT_S CMD...: run with a timeout, stdout+stderr into the log, never stop the script
section() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "==== $name (timeout ${limit}s) $(date -u +%H:%M:%S) ===="
    local t0=$SECONDS rc=0
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        FAILED+=("$name (rc=$rc$([ $rc -eq 124 ] && echo ', timed out'))")
        say "FAILED: $name rc=$rc after $((SECONDS - t0)) s"
    else
        say "---- $name done in $((SECONDS - t0)) s"
    fi
}

say "t2l GPU benchmarks $(date -u '+%Y-%m-%d %H:%M UTC')  quick=$QUICK device=$DEVICE  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say "host: $(uname -srm), $(nproc) cores; uptime: $(uptime)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" || true
else
    say "nvidia-smi: not found"
fi
pick_python
say "python: $PY"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 | tee -a "$LOG" || true

if [ "$QUICK" = 1 ]; then
    IMG=(--size 256 --views 2 --steps 1)
    ATL=(--cases easy --frames 5 --height 144 --width 256 --preset draft --steps 5)
    VID=(--quick --run 0 --memory 1)
    STAB=(--quick --presets "" --stability 3)
    T_IMG=240 T_ATL=240 T_VID=600 T_STAB=300
else
    IMG=(--size 512 --views 16 --steps 30)
    ATL=(--cases easy --frames 70 --height 432 --width 768 --preset quality --steps 300)
    VID=(--presets paper --atlas exact --frames 70 --height 432 --width 768 --steps 10 --warmup 3 --memory 70,120 --memory-steps 5)
    STAB=(--presets "" --atlas exact --frames 70 --height 432 --width 768 --stability 200)
    T_IMG=75 T_ATL=120 T_VID=150 T_STAB=120
fi

section image "$T_IMG" sh -c "$PY benchmarks/image_step.py --device $DEVICE --threads 0 ${IMG[*]} > '$OUT/image.json'"
section atlas "$T_ATL" $PY benchmarks/atlas_fit.py --device "$DEVICE" "${ATL[@]}" --json "$OUT/atlas.json"
section video "$T_VID" $PY benchmarks/video_step.py --device "$DEVICE" "${VID[@]}" --json "$OUT/video.json"
section stability "$T_STAB" $PY benchmarks/video_step.py --device "$DEVICE" "${STAB[@]}" --json "$OUT/stability.json"

# ---- summary -----------------------------------------------------------------------------------
say ""
say "==== summary ===="
OUT=$OUT $PY - <<'EOF' 2>&1 | tee -a "$LOG" || say "FAILED: summary"
import json, math, os
from pathlib import Path

out = Path(os.environ["OUT"])


def load(name):
    p = out / name
    if not p.exists() or not p.stat().st_size:
        print(f"{name}: no result")
        return None
    try:
        return json.loads(p.read_text().strip().splitlines()[-1] if name == "image.json" else p.read_text())
    except Exception as e:  # noqa: BLE001
        print(f"{name}: unreadable ({e})")
        return None


im = load("image.json")
if im:
    s = im["median_step_s"]
    print(f"image {im['size']} px {im['views']} views {im['device']}: {s} s/step (median of {len(im['step_seconds']) - 1}), "
          f"1000 steps ~{s * 1000:.0f} s EXTRAPOLATED; peak {im['peak_mem_mib']} MiB")
at = load("atlas.json")
for r in at or []:
    if "error" in r:
        print(f"atlas {r.get('case')}: FAILED {r['error']}")
        continue
    from t2l.atlas.run import PRESETS

    budget = PRESETS[r["preset"]].steps(r["frames"])
    per = r["fit_s"] / max(1, r["steps"])
    rest = r["total_s"] - r["fit_s"]
    print(f"atlas {r['case']} {r['frames']} frames {r['size']} {r['preset']} {r['device']}: {r['steps']} steps in "
          f"{r['fit_s']} s ({per:.3f} s/step), PSNR {r['psnr']} dB at {r['steps']} steps; full budget {budget} steps "
          f"~{(rest + per * budget) / 60:.1f} min EXTRAPOLATED; gpu peak {r['gpu_peak_mb']} MB, rss {r['peak_rss_mb']} MB")
vi = load("video.json")
if vi:
    for s in vi.get("settings", []):
        if "error" in s:
            print(f"video {s['preset']}: FAILED {s['error']}")
            continue
        n = s["preset_steps"]
        est = s["setup_s"] + s["ours_median_s"] * n + max(0, s["first_step_s (with whole atlas)"] - s["ours_median_s"]) * math.ceil(n / 75)
        print(f"video {s['preset']} {vi['atlas']} {vi['device']}: ours {s['ours_median_s']} s/step vs reference-style "
              f"{s['reference_median_s']} ({s['speedup_median']}x); {n} steps ~{est / 60:.1f} min EXTRAPOLATED "
              f"(training only); peak GPU {s['gpu_peak_mib']} MiB")
        print(f"  where the time goes (s/step): {json.dumps(s['where_the_time_goes_s_per_step'])}")
    for m in vi.get("memory_vs_length", []):
        print(f"video memory {m.get('frames')} frames: {json.dumps(m)}")
st = load("stability.json")
if st:
    for prec, d in (st.get("stability") or {}).items():
        print(f"stability {prec}: {json.dumps(d)}")
EOF

say ""
if [ ${#FAILED[@]} -gt 0 ]; then
    say "FAILED sections: ${FAILED[*]}"
else
    say "all sections finished"
fi
say "end $(date -u +%H:%M:%S), log: $LOG"
