"""The resume checkpoint: the whole training state after an epoch, so a killed run goes on.

It is written after the first epoch, then at most every ``SAVE_EVERY_S`` seconds, and after the
last: on small data an epoch takes a fraction of a second, and writing a MobileNet's state
(weights and Adam's moments, 18 MB) after each of 125 took 8 s of an 80 s stage. A kill loses
at most that long, or one epoch where epochs are longer; the resumed run is the same either way.

A checkpoint is resumed only by the run that would have written it: same params and data (the
stage's fingerprint) and the same number of processes, since the shards and the per-rank
augmentation differ with the world size and the resumed run would not be the one asked for.

Global rank 0 alone writes it, and alone reads it: what it finds (a state, or nothing) is
broadcast, so the ranks of another node, which may not see its files, resume from the same
epoch with the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from kdflow.distributed import initialized, is_main, world_size
from kdflow.errors import KdflowError
from kdflow.io import atomic_torch_save, clean_stale_tmp, safe_load

FORMAT = "kdflow.trainer/1"
SAVE_EVERY_S = 30.0

# (epoch, history, best) of an interrupted run
Resumed = tuple[int, list[dict[str, float]], dict[str, Any]]


def mismatch(state: dict[str, Any], fingerprint: str, world: int) -> str | None:
    """Why a checkpoint's state may not be resumed by this run, or None if it may."""
    if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
        return "belongs to other params or data"
    if state.get("world_size") != world:
        return (
            f"was written by {state.get('world_size', 'an unknown number of')} process(es), "
            f"this run has {world}"
        )
    return None


def from_rank0(read: Callable[[], Any]) -> Any:
    """``read()`` on global rank 0, its result on every rank (one process: just ``read()``).

    Should rank 0 fail, every rank fails with it instead of waiting in the broadcast.
    """
    if not initialized() or world_size() == 1:
        return read()
    box: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", read())
        except Exception as exc:  # re-raised below, once the others know
            error, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise KdflowError(f"rank 0 could not read the resume checkpoint ({value})")
    return value


class ObjectiveExtra:
    """An objective's ``extra_state``/``load_extra_state`` as a resume part (an adversary's
    discriminator and optimizer); checkpoints written before it existed restore ``{}``."""

    optional = True

    def __init__(self, objective: Any) -> None:
        self.objective = objective

    def state_dict(self) -> dict[str, Any]:
        return self.objective.extra_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective.load_extra_state(state)


class ResumeCheckpoint:
    """``last.pt`` in a stage's checkpoint directory; ``parts`` are the stateful objects
    (model, objective, optimizer, scheduler) saved and restored by name."""

    def __init__(
        self,
        ckpt_dir: str | Path,
        fingerprint: str,
        world: int,
        parts: dict[str, Any],
        say: Callable[[str], None],
    ) -> None:
        self.path = Path(ckpt_dir) / "last.pt"
        self.fingerprint = fingerprint
        self.world = world
        self.parts = parts
        self.say = say
        self.saved_at: float | None = None

    def save(self, epoch: int, history: list, best: dict, last: bool = False) -> None:
        """Write the state after ``epoch`` epochs (atomic: a kill leaves the previous one), if
        it is the first or ``last`` epoch or the previous save is ``SAVE_EVERY_S`` old."""
        now = time.monotonic()
        if not last and self.saved_at is not None and now - self.saved_at < SAVE_EVERY_S:
            return
        self.saved_at = now
        state: dict[str, Any] = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "world_size": self.world,
            "epoch": epoch,
        }
        state.update({k: part.state_dict() for k, part in self.parts.items()})
        state.update({"history": history, "best": best})
        atomic_torch_save(self.path, state)

    def read(self) -> dict[str, Any] | None:
        """The checkpoint's state if this run may resume it; None (and why) to start over."""
        clean_stale_tmp(self.path.parent)
        if not self.path.is_file():
            return None
        try:
            state = safe_load(self.path, "resume checkpoint")
        except KdflowError as exc:
            self.say(f"{exc}; starting over")
            return None
        why = mismatch(state, self.fingerprint, self.world)
        if why:
            self.say(f"{self.path} {why}; starting over")
            return None
        return state

    def load(self) -> Resumed | None:
        """Restore the parts on every rank from what global rank 0 read; None to start over."""
        state = from_rank0(self.read)
        if state is None:
            return None
        for k, part in self.parts.items():
            if k not in state and getattr(part, "optional", False):
                part.load_state_dict({})
            else:
                part.load_state_dict(state[k])
        return int(state["epoch"]), list(state["history"]), dict(state["best"])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
