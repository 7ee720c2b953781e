"""What a model costs to run: parameters, FLOPs, size on disk, CPU latency and throughput."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdflow.models import count_params


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (timings depend on them); returns the count in use."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def flops_per_image(model: nn.Module, example: Tensor) -> int:
    """FLOPs of one forward pass on one image (a multiply-add counts as 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example[:1])
    return int(counter.get_total_flops())


def size_on_disk_kb(path: str | Path) -> float:
    return os.path.getsize(path) / 1024.0


def weights_kb(model: nn.Module) -> float:
    """Size of the weights alone (a saved state dict): checkpoints also carry metadata."""
    import io

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return len(buf.getvalue()) / 1024.0


def batch_of(x: Tensor, n: int) -> Tensor:
    """``n`` images from ``x``, repeating them when the set is smaller than the batch."""
    if len(x) >= n:
        return x[:n].contiguous()
    reps = -(-n // len(x))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].contiguous()


def cpu_timing(
    models: dict[str, nn.Module],
    x: Tensor,
    repeats: int = 30,
    throughput_batch: int = 256,
    warmup: int = 5,
) -> dict[str, dict[str, float]]:
    """CPU latency at batch 1 (ms) and throughput at ``throughput_batch`` (images/s) per model.

    Medians of ``repeats`` timed runs after ``warmup`` untimed ones, under inference mode.
    The models take turns within each round, so a burst of load from another process hits
    all of them alike and their ratios (the speed-ups) stay fair.
    """
    nets = {name: m.cpu().eval() for name, m in models.items()}
    one, batch = batch_of(x, 1), batch_of(x, throughput_batch)
    lat: dict[str, list[float]] = {n: [] for n in nets}
    thr: dict[str, list[float]] = {n: [] for n in nets}

    def timed(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    with torch.inference_mode():
        for _ in range(warmup):
            for m in nets.values():
                m(one)
                m(batch)
        for _ in range(repeats):
            for n, m in nets.items():
                lat[n].append(timed(lambda m=m: m(one)))
                thr[n].append(timed(lambda m=m: m(batch)))
    threads = torch.get_num_threads()
    return {
        n: {
            "latency_ms": statistics.median(lat[n]) * 1e3,
            "throughput": throughput_batch / statistics.median(thr[n]),
            "threads": threads,
        }
        for n in nets
    }


def cost_metrics(
    models: dict[str, nn.Module],
    x: Tensor,
    checkpoints: dict[str, str | Path] | None = None,
    repeats: int = 30,
    throughput_batch: int = 256,
) -> dict[str, dict[str, float]]:
    """Parameters, FLOPs per image, size of the weights and CPU timings of each model."""
    timing = cpu_timing(models, x, repeats, throughput_batch)
    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        row: dict[str, float] = {
            "params": count_params(model),
            "flops": flops_per_image(model, x[:1]),
        }
        if checkpoints and name in checkpoints:
            row["size_kb"] = weights_kb(model)
        out[name] = {**row, **timing[name]}
    return out


def relative_to(reference: dict[str, float], row: dict[str, float]) -> dict[str, float]:
    """Compression (params ratio), latency speed-up and throughput ratio over a reference."""
    return {
        "compression": reference["params"] / row["params"],
        "speedup": reference["latency_ms"] / row["latency_ms"],
        "throughput_ratio": row["throughput"] / reference["throughput"],
    }
