"""Measure trained models: quality on a test set, cost on the CPU, and export for deployment.

Plain functions on models and tensors (no DVC, no MLflow), so the evaluate stage, the tests
and a notebook all measure a model the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdflow.engine import agreement_metrics, predict
from kdflow.errors import KdflowError
from kdflow.io import atomic_write_bytes, ensure_dir
from kdflow.models import count_params

# --------------------------------------------------------------------------- quality


def _probs(logits: Tensor) -> Tensor:
    return F.softmax(logits.double(), dim=1).float()


def expected_calibration_error(logits: Tensor, y: Tensor, bins: int = 15) -> float:
    """Top-label ECE (L1) with equal-width confidence bins, as torchmetrics defines it."""
    from torchmetrics.classification import MulticlassCalibrationError

    metric = MulticlassCalibrationError(num_classes=logits.shape[1], n_bins=bins, norm="l1")
    return float(metric(_probs(logits), y))


def reliability_bins(logits: Tensor, y: Tensor, bins: int = 15) -> list[dict[str, float]]:
    """Per-bin mean confidence, accuracy and count: the data of a reliability diagram.

    Bins are ``[k/bins, (k+1)/bins)`` with confidence 1.0 in the last bin, the binning
    torchmetrics uses, so sum(count/n * |accuracy - confidence|) equals the ECE above.
    """
    conf, pred = _probs(logits).max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    idx = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, bins - 1)
    rows = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        rows.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "confidence": float(conf[mask].mean()) if n else float("nan"),
                "accuracy": float(correct[mask].mean()) if n else float("nan"),
                "count": n,
            }
        )
    return rows


def per_class_accuracy(logits: Tensor, y: Tensor) -> list[float]:
    """Recall of each class: where a small student loses against its teacher."""
    from torchmetrics.classification import MulticlassAccuracy

    metric = MulticlassAccuracy(num_classes=logits.shape[1], average=None)
    return [float(v) for v in metric(logits.argmax(1), y)]


def confusion_matrix(logits: Tensor, y: Tensor) -> Tensor:
    """Counts with rows = true class, columns = predicted class."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    metric = MulticlassConfusionMatrix(num_classes=logits.shape[1])
    return metric(logits.argmax(1), y).long()


def quality_metrics(
    logits: Tensor, y: Tensor, bins: int = 15, teacher_logits: Tensor | None = None
) -> dict[str, float]:
    """Accuracy, NLL, ECE and (given teacher logits) agreement / KL to the teacher."""
    out = {
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "nll": float(F.cross_entropy(logits.float(), y)),
        "ece": expected_calibration_error(logits, y, bins),
    }
    if teacher_logits is not None:
        out.update(agreement_metrics(logits, teacher_logits))
    return out


def evaluate_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bins: int = 15,
    teacher_logits: Tensor | None = None,
    batch_size: int = 1024,
) -> tuple[dict[str, float], Tensor]:
    """Quality metrics of ``model`` on (x, y); also returns the logits for plots and reuse."""
    logits = predict(model, x, batch_size=batch_size)
    return quality_metrics(logits, y, bins, teacher_logits), logits


# --------------------------------------------------------------------------- cost


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


def _batch_of(x: Tensor, n: int) -> Tensor:
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
    one, batch = _batch_of(x, 1), _batch_of(x, throughput_batch)
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
    """Parameters, FLOPs per image, checkpoint size and CPU timings of each model."""
    timing = cpu_timing(models, x, repeats, throughput_batch)
    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        row: dict[str, float] = {
            "params": count_params(model),
            "flops": flops_per_image(model, x[:1]),
        }
        if checkpoints and name in checkpoints:
            row["size_kb"] = size_on_disk_kb(checkpoints[name])
        out[name] = {**row, **timing[name]}
    return out


def relative_to(reference: dict[str, float], row: dict[str, float]) -> dict[str, float]:
    """Compression (params ratio), latency speed-up and throughput ratio over a reference."""
    return {
        "compression": reference["params"] / row["params"],
        "speedup": reference["latency_ms"] / row["latency_ms"],
        "throughput_ratio": row["throughput"] / reference["throughput"],
    }


# --------------------------------------------------------------------------- export


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _export_example(example: Tensor) -> Tensor:
    # A batch of 1 lets torch.export specialise the batch axis to 1: export with 2 or more.
    return example if len(example) >= 2 else _batch_of(example, 2)


def export_onnx(model: nn.Module, example: Tensor, path: str | Path) -> str:
    """Export to ONNX with a dynamic batch axis; returns the exporter used.

    Tries the torch.export-based exporter first and falls back to the TorchScript one. The
    file appears only once complete (written to a temporary name, then renamed).
    """
    import onnx

    path = Path(path)
    ensure_dir(path.parent)
    model = model.cpu().eval()
    example = _export_example(example.cpu())
    tmp = _tmp_for(path)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    exporter = "dynamo"
    try:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=True,
                    verbose=False,
                    external_data=False,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    **names,
                )
        except Exception:
            exporter = "torchscript"
            tmp.unlink(missing_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    opset_version=17,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    **names,
                )
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdflowError(f"could not export the model to ONNX ({msg[:300]})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return exporter


def export_torchscript(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Trace the model to TorchScript (loadable from C++ without kdflow), written atomically."""
    model = model.cpu().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit is deprecated upstream but still the C++ format
        traced = torch.jit.trace(model, _export_example(example.cpu()))
        torch.jit.save(traced, buf)
    return atomic_write_bytes(path, buf.getvalue())


def onnx_logits(onnx_path: str | Path, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Run an exported model with onnxruntime on the CPU, batch by batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = [
        torch.from_numpy(sess.run(None, {name: x[i : i + batch_size].numpy()})[0])
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def onnx_parity(
    onnx_path: str | Path, model: nn.Module, x: Tensor, batch_size: int = 1024
) -> dict[str, float]:
    """How far the ONNX file's logits are from PyTorch's on all of ``x``."""
    ref = predict(model.cpu(), x, batch_size=batch_size)
    got = onnx_logits(onnx_path, x, batch_size).float()
    if got.shape != ref.shape:
        raise KdflowError(
            f"ONNX model {onnx_path} returns logits of shape {tuple(got.shape)}, "
            f"PyTorch {tuple(ref.shape)}"
        )
    same = got.argmax(1) == ref.argmax(1)
    return {
        "max_abs_diff": float((got - ref).abs().max()) if len(x) else 0.0,
        "agreement": float(same.float().mean()) if len(x) else 1.0,
        "mismatches": int((~same).sum()),
        "images": len(x),
    }
