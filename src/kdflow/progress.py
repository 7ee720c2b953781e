"""What a training run measures and prints: an epoch's running loss and accuracy, one line
per epoch on stderr, and a live bar on a terminal.

Only rank 0 prints, so a run on many processes reads like a run on one.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor

from kdflow.distributed import all_reduce_, is_main


def fmt_time(seconds: float) -> str:
    """``42s`` or ``3m07s``: short enough for the end of an epoch line."""
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def diverged(losses: list[float], factor: float = 3.0) -> str | None:
    """What says the run blew up, or None: the last epoch's training loss is not finite, or
    ``factor`` times (and 0.1 above) the lowest before it. A run at too high a learning rate
    can leave a good basin and never come back, and its final accuracy would read as the
    method's: the run says so while there is time to stop it."""
    if not losses:
        return None
    last, before = losses[-1], [x for x in losses[:-1] if math.isfinite(x)]
    if not math.isfinite(last):
        return f"training loss is {last} at epoch {len(losses)}"
    low = min(before, default=math.inf)
    if last > factor * low and last - low > 0.1:
        return (f"training loss rose from {low:.4f} (epoch {losses.index(low) + 1}) to "
                f"{last:.4f} at epoch {len(losses)}")  # fmt: skip
    return None


def first_divergence(losses: list[float]) -> str | None:
    """``diverged`` at the first epoch it holds: a resumed run replays its epochs, and one that
    blew up and recovered before the interruption did blow up."""
    return next(filter(None, (diverged(losses[:i]) for i in range(1, len(losses) + 1))), None)


def eta(elapsed: float, done: int, left: int) -> float:
    """Seconds left at the mean pace of the epochs run so far in this process."""
    return elapsed / done * left


class Bar:
    """The bar of one epoch's steps with the running loss and accuracy (terminal only, so
    logs and CI output keep one line per epoch)."""

    def __init__(self, desc: str, steps: int) -> None:
        self.tqdm: Any = None
        if is_main() and sys.stderr.isatty():
            from tqdm import tqdm

            self.tqdm = tqdm(total=steps, desc=desc, leave=False, file=sys.stderr, mininterval=0.5)

    def update(self, step: int, totals: Tensor) -> None:
        """``totals`` = (loss sum, correct, samples, labelled samples) so far."""
        if self.tqdm is None:
            return
        self.tqdm.update(1)
        if step % 20 == 0:
            self.tqdm.set_postfix(
                loss=f"{totals[0] / totals[2]:.4f}",
                acc=f"{totals[1] / totals[3].clamp_min(1):.3f}",
            )

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


class Progress:
    """Messages of one training run, prefixed with its name (``[student]``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def say(self, msg: str) -> None:
        if is_main():
            print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def bar(self, epoch: int, epochs: int, steps: int) -> Bar:
        return Bar(f"{self.name} {epoch + 1}/{epochs}", steps)

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, float], left_s: float) -> None:
        """The epoch's line: loss, accuracy, validation accuracy if any, time and ETA."""
        val = f" val_acc {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else ""
        self.say(
            f"epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.4f} "
            f"acc {metrics['train_accuracy']:.4f}{val} "
            f"({metrics['epoch_seconds']:.1f}s, ETA {fmt_time(left_s)})"
        )


class Meter:
    """An epoch's running loss and train accuracy, summed over the processes at its end.

    Padding samples (``n`` leaves them out) count in no metric, unlabelled ones in no
    accuracy; loss components stay this rank's averages (they are for curves, not selection).
    """

    def __init__(self, device: torch.device, bar: Bar) -> None:
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # no fp64 on MPS
        self.device = device
        self.totals = torch.zeros(4, dtype=self.dtype, device=device)  # see Bar.update
        self.parts: dict[str, float] = {}
        self.bar = bar

    def add(
        self,
        step: int,
        loss: Tensor,
        logits: Tensor,
        y: Tensor,
        labelled: Tensor,
        n: int,
        parts: dict[str, Tensor],
    ) -> None:
        self.totals += torch.stack(
            [
                loss.detach().to(self.dtype) * n,
                ((logits.argmax(1) == y) & labelled).sum().to(self.dtype),
                torch.tensor(float(n), dtype=self.dtype, device=self.device),
                labelled.sum().to(self.dtype),
            ]
        )
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + float(v) * n
        self.bar.update(step, self.totals)

    def result(self) -> dict[str, float]:
        """``train_loss``, ``train_accuracy`` over all processes, ``train_<part>`` of this one."""
        self.bar.close()
        local = float(self.totals[2])
        all_reduce_(self.totals)
        count = float(self.totals[2])
        out = {
            "train_loss": float(self.totals[0]) / count,
            "train_accuracy": float(self.totals[1]) / max(float(self.totals[3]), 1.0),
        }
        out.update({f"train_{k}": v / local for k, v in self.parts.items()})
        return out
