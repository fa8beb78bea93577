"""Preview videos of a saved atlas folder: reconstruction.mp4 and checkerboard.mp4 (to watch, not data).

The producer (the fitter's runner, NLA import) writes them AFTER save_atlas, so the folder is complete
and loadable before any encoder runs: a missing or failing encoder costs a preview, never a fit.

    save_atlas(folder, data)
    notes = write_previews(folder, data)   # [] when both were written; else one note per failure
"""

from __future__ import annotations

import json
from pathlib import Path

from t2l.atlas.folder import AtlasData, working_fps
from t2l.atlas.render import checkerboard_edit, iter_render
from t2l.files import write_json_atomic
from t2l.video_write import write_mp4

PREVIEWS = {"reconstruction_mp4": "reconstruction.mp4", "checkerboard": "checkerboard.mp4"}


def _reconstruction(data: AtlasData):
    return data.reconstruction


def _checkerboard(data: AtlasData):
    grid = {lay.name: checkerboard_edit(lay) for lay in data.layers}
    return (out for out, _ in iter_render(data, grid, data.frames))


def write_previews(folder: str | Path, data: AtlasData) -> list[str]:
    """Encode reconstruction.mp4 and checkerboard.mp4 into `folder` (saved by save_atlas) and list them
    in its atlas.json. Returns one note per preview that could not be written (the atlas is fine)."""
    folder = Path(folder)
    fps = working_fps(data.info)
    written, notes = {}, []
    for key, frames in (("reconstruction_mp4", _reconstruction), ("checkerboard", _checkerboard)):
        path = folder / PREVIEWS[key]
        try:
            write_mp4(path, frames(data), fps)
        except Exception as e:  # noqa: BLE001 - a preview is optional; whatever the encoder did, keep the atlas
            notes.append(f"{path.name} not written ({type(e).__name__}: {e}); the atlas itself is complete")
            continue
        written[key] = PREVIEWS[key]
    if written:
        index_path = folder / "atlas.json"
        index = json.loads(index_path.read_text())
        index["files"].update(written)
        write_json_atomic(index_path, index)
    return notes
