"""Quality of a classifier from its logits: accuracy, NLL, calibration, per-class, confusion.

Plain functions on tensors (no files, no tracking), so the evaluate stage, the tests and a
notebook measure a model the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdflow.metrics import agreement_metrics, predict


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
