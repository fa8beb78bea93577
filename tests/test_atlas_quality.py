"""Silent failures of `t2l atlas` made loud: scene cuts, truncated files, fades, the quality report."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from t2l.atlas.cuts import find_cuts
from t2l.atlas.fit import AtlasFitter, FitConfig
from t2l.atlas.flow import compute_flows
from t2l.atlas.report import quality_report
from t2l.atlas.synthetic import SyntheticConfig, make_clip
from t2l.cli import app
from t2l.video_read import read_video
from t2l.video_write import write_mp4

runner = CliRunner()
FAST = ["--steps", "0", "--size", "96", "--seed", "0", "--layers", "1"]


def _shot(seed: int, frames: int = 8, **kw) -> np.ndarray:
    return make_clip(SyntheticConfig(frames=frames, height=54, width=96, seed=seed, **kw)).frames


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    """8 frames of one shot, then 8 of another (mirrored, other textures): a hard cut at frame 8."""
    path = tmp_path_factory.mktemp("cut") / "cut.mp4"
    write_mp4(path, np.concatenate([_shot(1), _shot(7)[:, ::-1]]), Fraction(30))
    return path


def test_find_cuts_hard_cut_not_fades_or_fast_motion():
    a, b = _shot(1), _shot(7)[:, ::-1]
    assert find_cuts(np.concatenate([a, b])) == [8]
    # a fade out to black and back in, within one shot: exposure changes, no cut
    g = np.array([1, 0.7, 0.4, 0.1, 0, 0, 0.3, 0.8])[:, None, None, None]
    assert find_cuts((a * g).astype(np.uint8)) == []
    # a fast pan (12 px per frame at 96 px) is motion, not a cut
    assert find_cuts(_shot(3, pan=(12.0, 2.0), speed=(9.0, 0.0))) == []


def test_default_window_stops_at_the_cut(cut_video, tmp_path):
    r = runner.invoke(app, ["atlas", str(cut_video), "-o", str(tmp_path / "a"), *FAST])
    assert r.exit_code == 0, r.stderr
    assert "scene cut at frame 8: fitting frames 0-7" in r.stderr and "--start 8" in r.stderr
    index = json.loads((tmp_path / "a" / "atlas.json").read_text())
    assert index["frames"] == 8 and index["meta"]["quality"]["scene_cut_at"] == 8
    # the next shot, from its first frame: no cut inside, all 8 frames
    r = runner.invoke(app, ["atlas", str(cut_video), "-o", str(tmp_path / "b"), "--start", "8", *FAST])
    assert r.exit_code == 0, r.stderr
    assert "scene cut" not in r.stderr
    assert json.loads((tmp_path / "b" / "atlas.json").read_text())["frames"] == 8


def test_explicit_window_across_a_cut_is_refused(cut_video, tmp_path):
    r = runner.invoke(app, ["atlas", str(cut_video), "-o", str(tmp_path / "a"), "--max-frames", "12", *FAST])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: frames 0-11 of ") and "cross a scene cut at frame 8" in line
    assert "--start 0 --max-frames 8, then --start 8" in line
    assert not (tmp_path / "a").exists()


def test_truncated_file_is_reported(tmp_path):
    frames = _shot(2, frames=40)
    full = tmp_path / "full.mp4"
    write_mp4(full, frames, Fraction(30))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _, info = read_video(full)
    assert info.header_frames == 40 and info.decoded_frames == 40 and info.short_of_header() == 0
    got, info = read_video(cut)
    assert 3 <= len(got) < 40 and info.header_frames == 40 and info.short_of_header() == 40 - len(got)
    r = runner.invoke(app, ["atlas", str(cut), "-o", str(tmp_path / "a"), *FAST])
    assert r.exit_code == 0, r.stderr
    assert f"decodes only {len(got)} of the 40 frames its header announces" in r.stderr
    assert "re-download or re-export" in r.stderr.lower()
    q = json.loads((tmp_path / "a" / "atlas.json").read_text())["meta"]["quality"]
    assert "truncated" in [w["code"] for w in q["warnings"]] and q["decoded_frames"] == len(got)


def test_report_flags_empty_and_sparse_foreground_and_disagreeing_masks():
    T, H, W = 8, 20, 30
    psnr = [40.0] * 6 + [22.0, 31.0]
    alpha = np.zeros((T, H, W), np.float32)
    masks = np.zeros((T, H, W), bool)
    masks[:, 5:15, 5:15] = True
    rep = quality_report(psnr, alpha, masks)
    codes = [w["code"] for w in rep["warnings"]]
    assert codes == ["low_psnr", "empty_fg"] and rep["fg_empty_frames"] == list(range(T))
    assert rep["worst"][0] == {"frame": 6, "source_frame": 6, "psnr": 22.0} and rep["low_frames"] == [6]
    alpha[:3, 5:15, 5:15] = 1  # fg in 3 of 8 frames only
    rep = quality_report([40.0] * T, alpha, masks)
    assert [w["code"] for w in rep["warnings"]] == ["sparse_fg", "masks_disagree"]
    assert "empty in 5 of 8 frames (3-7)" in rep["warnings"][0]["message"]
    alpha[:] = 0
    alpha[:, 5:15, 5:15] = 1
    rep = quality_report([40.0] * T, alpha, masks)
    assert rep["warnings"] == [] and rep["mask_iou"] == 1.0 and rep["fg_share"] > 0


def test_report_names_source_frames_and_spares_frames_the_given_masks_leave_empty():
    """With --start 4 --stride 2 the messages count what --start and a video player count (the JSON
    lists stay fitted indices, the folder's PNG numbers). A box's or a mask folder's empty frames mean
    "nothing in front here": an object entering late does not make the foreground "lost" there."""
    from t2l.video_read import VideoInfo

    T, H, W = 8, 20, 30
    info = VideoInfo("clip.mp4", W, H, Fraction(25), 0, tuple(range(T)), False, tuple(range(4, 20, 2)))
    psnr = [40.0] * 5 + [22.0, 21.0, 31.0]
    alpha = np.zeros((T, H, W), np.float32)
    masks = np.zeros((T, H, W), bool)
    masks[4:, 5:15, 5:15] = True  # the object enters at fitted frame 4 (source 12)
    alpha[4:, 5:15, 5:15] = 1
    rep = quality_report(psnr, alpha, masks, info)
    low = rep["warnings"][0]["message"]
    assert rep["low_frames"] == [5, 6] and "(14-16; worst 21.0 dB at frame 16)" in low
    sparse = [w["message"] for w in rep["warnings"] if w["code"] == "sparse_fg"]
    assert sparse and "empty in 4 of 8 frames (4-10)" in sparse[0]  # automatic masks: counted
    rep = quality_report(psnr, alpha, masks, info, masks_given=True)
    assert [w["code"] for w in rep["warnings"]] == ["low_psnr"] and rep["fg_empty_frames"] == [0, 1, 2, 3]
    alpha[6:] = 0  # lost in 2 of the 4 frames the masks mark
    rep = quality_report(psnr, alpha, masks, info, masks_given=True)
    sparse = [w["message"] for w in rep["warnings"] if w["code"] == "sparse_fg"]
    assert sparse and "empty in 2 of the 4 frames its masks mark (16-18)" in sparse[0]
    alpha[:] = 0
    rep = quality_report(psnr, alpha, masks, info, masks_given=True)
    assert "empty_fg" in [w["code"] for w in rep["warnings"]]
    alpha[2:, 0:4, 20:30] = 1  # opacity away from the masks (and before they start)
    rep = quality_report(psnr, alpha, masks, info, masks_given=True)
    off = [w["message"] for w in rep["warnings"] if w["code"] == "masks_disagree"]
    worst = {int(x) for x in off[0].split("worst frames ")[1].split(")")[0].split(", ")}
    assert len(worst) == 3 and worst <= {8, 10, 12, 14, 16, 18}  # source numbers of fitted frames 2-7


def test_frames_both_leave_empty_agree_despite_stray_alpha_specks():
    """tree-box: masks empty until the hand came, the fitted alpha empty there but for a few stray
    texels > 0.5; those frames scored IoU 0 and made a false masks_disagree (0.39 on a fit whose alpha
    follows its masks at 0.92)."""
    T, H, W = 4, 50, 50
    masks = np.zeros((T, H, W), bool)
    masks[2:, 10:30, 10:30] = True
    alpha = masks.astype(np.float32)
    alpha[0, 0, :2] = 1.0  # 2 of 2500 px: under the 0.1% that counts as empty
    rep = quality_report([40.0] * T, alpha, masks)
    assert rep["mask_iou"] == 1.0 and rep["fg_empty_frames"] == [0, 1]
    alpha[1, 40:50, 40:50] = 1.0  # a real blob where the masks say nothing is: disagreement
    assert quality_report([40.0] * T, alpha, masks)["mask_iou"] == 0.75


def test_black_and_fading_frames_reconstruct_dark():
    torch.manual_seed(0)
    clip = make_clip(SyntheticConfig(frames=8, height=54, width=96, seed=4, pan=(2.0, 0.5), object_size=0.01))
    g = np.array([0.0, 0.3, 0.6, 1, 1, 1, 1, 1])[:, None, None, None]
    frames = (clip.frames * g).round().astype(np.uint8)
    fitter = AtlasFitter(frames, None, compute_flows(frames), FitConfig(steps=30, seed=0))
    for _ in fitter.run():
        pass
    res = fitter.export()
    assert res.reconstruction[0].max() <= 3  # black stays black (no atlas content painted onto it)
    assert res.gain[0].max() < 0.02 and abs(res.gain[2].mean() - 0.6) < 0.1
    assert min(res.psnr[1:]) > 28  # the fading frames do not pull the atlas dark either


def test_low_psnr_warning_names_the_box_unless_one_was_given(monkeypatch):
    """A few poor frames are mostly an object the background kept (bigbuckbunny's ghost): the fix names
    --fg-box; after --fg-box it does not ask for a box again."""
    import t2l.cli.atlas as cli_atlas

    lines = []
    monkeypatch.setattr(cli_atlas, "info", lines.append)
    rep = quality_report([40.0] * 7 + [22.0], np.zeros((8, 20, 30), np.float32), None)
    low = [w for w in rep["warnings"] if w["code"] == "low_psnr"]
    assert low
    cli_atlas._print_report(rep, low)
    assert "--fg-box x0,y0,x1,y1" in lines[-1] and "--max-frames" in lines[-1]
    cli_atlas._print_report(rep, low, box=True)
    assert "--fg-box" not in lines[-1] and "--max-frames" in lines[-1]
