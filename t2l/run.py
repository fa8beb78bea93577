"""The run-folder lifecycle shared by image and video edits: checkpoint, resume, Ctrl-C, failures, run.json.

A run folder holds checkpoint.pt while a run is unfinished and run.json (written last) once it is
done. `TrainingRun` is the part of `ImageRun` (t2l/image.py) and `VideoRun` (t2l/video.py) that does
not depend on what is edited:

    run.events()      trains, yielding StepEvents; snapshots + checkpoints every cfg.save_every steps;
                      Ctrl-C -> checkpoint + run.json "interrupted" + Interrupted;
                      a non-finite loss -> checkpoint of the last good state + TrainingDiverged;
                      GPU out of memory -> ResourceError with the subclass's hint
    run.save_checkpoint() / load_resume_state(...)
                      the checkpoint carries the trainer state, the config, the prompts, the seed and
                      the run's identity (kind, input path and content hash, CLIP model and weights,
                      prompts, ...): resuming refuses a different input / CLIP / prompt with one line.

Subclasses provide: `kind`, `identity`, `_build_trainer()`, `_before_training()`,
`write_snapshot(step)`, `_oom_hint()` and `_run_info()` (their own run.json fields).

Steps rule (image, video and atlas alike): a run's `steps` is the TOTAL it reaches. On resume an
omitted value keeps the checkpoint's total; a value below the steps already done is refused.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

import t2l
from t2l.errors import InputError, Interrupted, ResourceError, T2LError, UsageError
from t2l.files import torch_save_atomic, write_json_atomic
from t2l.train import StepEvent, Trainer

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"


class TrainingDiverged(T2LError):
    """The loss became NaN or infinite; the last good state was saved."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (an input's identity for --resume)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    import open_clip

    return {
        "t2l": t2l.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def clip_identity(clip) -> dict:
    return {"model": str(getattr(clip, "model_name", "?")), "source": str(getattr(clip, "source", "?"))}


_IDENTITY_WORDS = {
    "kind": "kind of run",
    "input": "input",
    "input_sha256": "input content",
    "layer": "layer",
    "clip": "CLIP model",
    "prompts": "prompts",
}


def _check_identity(out_dir: Path, saved: dict, now: dict) -> None:
    """Refuse resuming a checkpoint whose identity differs from this run's, naming what differs."""
    for key in _IDENTITY_WORDS:
        if key not in saved or key not in now or saved[key] == now[key]:
            continue
        if key == "kind":
            problem = f"{out_dir} holds an unfinished {saved[key]} run, not a {now[key]} run"
        elif key == "input_sha256":
            problem = f"{now.get('input')} has changed since the checkpoint in {out_dir} was saved"
        else:
            problem = (
                f"the checkpoint in {out_dir} was made with {_IDENTITY_WORDS[key]} {_show(saved[key])}, "
                f"not {_show(now[key])}"
            )
        raise InputError(problem, "resume with what the run started with, or start it over (--overwrite)")


def _show(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {v[k]!r}" for k in v if v[k] not in (None, [], ()))
    return repr(v)


def load_resume_state(out_dir: Path, identity: dict, steps: int | None = None) -> dict | None:
    """Read out_dir/checkpoint.pt for a resume: None when there is none.

    Checks the saved identity against `identity` (InputError naming the difference) and applies the
    steps rule: `steps` (the total to reach) must not be below the steps already done (UsageError).
    """
    ckpt = Path(out_dir) / CHECKPOINT
    if not ckpt.exists():
        return None
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(
            f"checkpoint {ckpt} is unreadable ({e})", "start the run over (--overwrite)"
        ) from None
    saved = dict(state.get("identity") or {})
    saved.setdefault("kind", state.get("kind", "image"))
    _check_identity(Path(out_dir), saved, identity)
    done = int(state["trainer"]["step"])
    if steps is not None and steps < done:
        raise UsageError(
            f"steps {steps} is below the {done} steps this run has already done",
            f"ask for {done} or more steps in all, or leave steps out to finish the planned run",
        )
    return state


def prepare_resume(
    out_dir: Path, identity: dict, resume: bool, cfg, seed, from_dict, steps=None, precision=None
) -> tuple[dict | None, object, int | None, list[str]]:
    """What `prepare` of a run needs for --resume: (state or None, config, seed, notes).

    With `resume` and a checkpoint, the checkpoint's config (rebuilt by `from_dict`) and seed win,
    except `steps` (the total to reach) and `precision` when given; the identity is checked
    (load_resume_state). Configs provide describe() for the note.
    """
    notes: list[str] = []
    state = load_resume_state(out_dir, identity, steps) if resume else None
    if resume and state is None:
        notes.append(f"no checkpoint in {out_dir}; starting from step 0")
    if state is not None:
        cfg = with_steps(from_dict(state["config"]), steps)
        if precision is not None:
            cfg = replace(cfg, train=replace(cfg.train, precision=precision))
        seed = int(state["seed"])
        notes.append(
            f"resuming {out_dir} from step {state['trainer']['step']}/{cfg.train.steps} "
            f"({cfg.describe()}: the checkpoint's settings)"
        )
    return state, cfg, seed, notes


def with_steps(cfg, steps: int | None):
    """cfg (an ImageConfig / VideoConfig with a .train TrainConfig) with train.steps = steps (None: as is)."""
    return cfg if steps is None else replace(cfg, train=replace(cfg.train, steps=steps))


class TrainingRun:
    """Mixin for a run dataclass with fields prompts, cfg, clip, device, out_dir, seed, notes,
    resume_state, timings, step_seconds, last_event and trainer (see ImageRun)."""

    kind = "?"

    # ---- what subclasses provide ----------------------------------------------------------------

    @property
    def identity(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_trainer(self) -> Trainer:  # pragma: no cover - abstract
        raise NotImplementedError

    def _before_training(self) -> None:
        """Work done once before the first step (relevancy maps, banks): not counted as training."""

    def write_snapshot(self, step: int) -> Path | None:
        return None

    def _oom_hint(self) -> str:
        return "use a smaller preset or fewer views"

    def _run_info(self) -> dict:
        return {}

    # ---- progress ------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return int(self.cfg.train.steps)

    @property
    def done_steps(self) -> int:
        if self.trainer is not None:
            return self.trainer.step
        return int(self.resume_state["trainer"]["step"]) if self.resume_state else 0

    # ---- checkpoint ----------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        path = self.out_dir / CHECKPOINT
        torch_save_atomic(
            {
                "kind": self.kind,
                "trainer": self.trainer.state_dict(),
                "config": self.cfg.to_dict(),
                "prompts": self.prompts.to_dict(),
                "seed": self.seed,
                "identity": self.identity,
            },
            path,
        )
        return path

    def _prepare_trainer(self) -> Trainer:
        trainer = self._build_trainer()
        if self.resume_state is not None:
            trainer.load_state_dict(self.resume_state["trainer"])
        return trainer

    # ---- training ------------------------------------------------------------------------------

    def events(self) -> Iterator[StepEvent]:
        """Train, yielding a StepEvent per step (see the module docstring for failures)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        try:
            self._before_training()
            self.trainer = self._prepare_trainer()
            t0 = time.perf_counter()
            for ev in self.trainer.run():
                self.step_seconds.append(ev.seconds)
                self.last_event = ev
                if ev.snapshot:
                    self.write_snapshot(ev.step)
                    self.save_checkpoint()
                yield ev
            # trained: keep the result safe while the outputs are written (a Ctrl-C or an encoder failure
            # there resumes straight into finish()); finish() deletes it after run.json
            self.save_checkpoint()
        except KeyboardInterrupt:
            if self.trainer is None:
                raise
            self.save_checkpoint()
            self._write_run_json("interrupted", {})
            raise Interrupted(
                f"interrupted at step {self.trainer.step}/{self.total_steps}; checkpoint saved in {self.out_dir}",
                "rerun the same command with --resume to continue",
            ) from None
        except FloatingPointError as e:
            self.save_checkpoint()  # the trainer still holds the state before the failed step
            self._write_run_json("diverged", {})
            raise TrainingDiverged(
                f"training diverged: {e}; the state after step {self.trainer.step} is saved in {self.out_dir}",
                "resume with --precision fp32 (if it was bf16), or start over with another --seed",
            ) from None
        except oom:
            raise ResourceError(f"GPU out of memory ({self._memory_context()})", self._oom_hint()) from None
        finally:
            self.timings["train_s"] = self.timings.get("train_s", 0.0) + time.perf_counter() - t0

    def _memory_context(self) -> str:
        return f"{self.cfg.train.views.n} views"

    # ---- run.json ------------------------------------------------------------------------------

    def _write_run_json(self, status: str, paths: dict) -> dict:
        ev = self.last_event
        secs = self.step_seconds
        info = {
            "kind": self.kind,
            "status": status,
            **self._run_info(),
            "prompts": self.prompts.to_dict(),
            "seed": self.seed,
            "device": str(self.device),
            "config": self.cfg.to_dict(),
            "clip": clip_identity(self.clip),
            "versions": versions(),
            "steps_done": self.trainer.step if self.trainer else 0,
            "timings": {
                **{k: round(v, 3) for k, v in self.timings.items()},
                "steps_this_session": len(secs),
                "median_step_s": round(statistics.median(secs), 4) if secs else None,
            },
            "final_losses": ({"total": ev.loss, **ev.losses, "lr": ev.lr} if ev else {}),
            "notes": self.notes,
            "outputs": {k: str(v) for k, v in paths.items()},
        }
        write_json_atomic(self.out_dir / RUN_JSON, info)
        return info


def output_state(out_dir: Path) -> str:
    """'done' (run.json says done), 'partial' (a checkpoint but no finished run) or 'empty'."""
    import json

    rj = Path(out_dir) / RUN_JSON
    if rj.exists():
        try:
            if json.loads(rj.read_text()).get("status") == "done":
                return "done"
        except (OSError, ValueError):
            pass
    return "partial" if (Path(out_dir) / CHECKPOINT).exists() else "empty"
