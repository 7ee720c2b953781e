"""The ``champion`` alias of ``kdflow-distilled``: moved only on evidence.

A new distilled version becomes the champion when there is none yet, or when it is better than
the champion on the same test images with McNemar's exact test p < 0.05
(``kdflow.stats.compare``). The champion is loaded from the registry without unpickling (its
logged kdflow checkpoint, ``weights_only``) and must come from the same prepared data (its data
hash): otherwise these test images may hold its training images and nothing is compared. The
decision, both accuracies and p are logged on a run (the pipeline's parent) and fit one line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from kdflow.errors import KdflowError
from kdflow.tracking import models
from kdflow.tracking.store import call, open_store

NAME = "kdflow-distilled"
CHAMPION = "champion"
ALPHA = 0.05


@dataclass
class Decision:
    promoted: bool
    champion: str  # the champion version after the decision
    candidate: str
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None = None
    p: float | None = None
    name: str = NAME

    def line(self) -> str:
        if self.promoted:
            return f"champion: {self.name} v{self.champion} ({self.reason})"
        return f"champion stays {self.name} v{self.champion}: v{self.candidate} {self.reason}"

    def tags(self) -> dict[str, str]:
        return {
            "kdflow.champion.decision": "promoted" if self.promoted else "kept",
            "kdflow.champion.version": f"{self.name}/{self.champion}",
            "kdflow.champion.candidate": f"{self.name}/{self.candidate}",
            "kdflow.champion.reason": self.reason,
        }

    def metrics(self) -> dict[str, float]:
        out = {"champion.candidate_accuracy": self.candidate_accuracy}
        if self.champion_accuracy is not None:
            out["champion.champion_accuracy"] = self.champion_accuracy
        if self.p is not None:
            out["champion.mcnemar_p"] = self.p
        return out


def _champion_predictions(uri: str, name: str, x: Any, data_hash: str) -> tuple[Any, str | None]:
    """The champion's predicted classes on ``x``, or None and why they cannot be compared."""
    from kdflow.checkpoint import load_model
    from kdflow.metrics import predict

    with tempfile.TemporaryDirectory(prefix="kdflow-champion-") as tmp:
        path = models.fetch_checkpoint(f"models:/{name}@{CHAMPION}", uri, tmp)
        if path is None:
            return None, "has no kdflow checkpoint logged with it"
        try:
            model, ckpt = load_model(path, f"champion {name}")
        except KdflowError as exc:
            return None, f"does not load ({exc})"
    if ckpt.get("data_hash") != data_hash:
        return None, f"was trained on other prepared data ({str(ckpt.get('data_hash'))[:12]})"
    return predict(model, x).argmax(1), None


def promote(uri: str, weights: Path, pred: Any, test: tuple[Any, Any], data_hash: str,
            log_to: str | None = None, name: str = NAME) -> Decision | None:  # fmt: skip
    """``decide``, then record the decision on ``log_to`` (default: the pipeline run that made
    the candidate, else its own run). None when no registered version wrote ``weights``."""
    client = open_store(uri)
    cand = call(uri, "find the model version", models.version_of, client, weights, name)
    if cand is None:
        return None
    decision = decide(uri, client, cand, pred, test, data_hash, name)
    if log_to is None:
        tags = call(uri, "read the candidate's run", client.get_run, cand.run_id).data.tags
        log_to = tags.get("mlflow.parentRunId") or cand.run_id
    record(uri, log_to, decision)
    return decision


def decide(uri: str, client: Any, cand: Any, pred: Any, test: tuple[Any, Any], data_hash: str,
           name: str = NAME) -> Decision:  # fmt: skip
    """Move ``champion`` to version ``cand`` if it earns it (``pred``: its predicted classes
    on the ``test`` split)."""
    from kdflow.stats import compare

    x, y = test
    new = str(cand.version)
    accuracy = float((pred == y).float().mean())
    try:
        old = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        old = None

    def keep(reason: str, *figures: float) -> Decision:
        return Decision(False, str(old), new, reason, accuracy, *figures, name=name)

    def move(reason: str, *figures: float) -> Decision:
        call(uri, "set the champion", client.set_registered_model_alias, name, CHAMPION, new)
        return Decision(True, new, new, reason, accuracy, *figures, name=name)

    if old is None:
        return move(f"no champion yet; test accuracy {accuracy:.4f}")
    if old == new:
        return keep("is the champion")
    champ_pred, why = _champion_predictions(uri, name, x, data_hash)
    if champ_pred is None:
        return keep(f"not compared: v{old} {why}")
    res = compare(pred, champ_pred, y)
    acc, p = (res["accuracy_a"], res["accuracy_b"]), res["mcnemar_p"]
    figures = f"test accuracy {acc[0]:.4f} vs {acc[1]:.4f}, McNemar p = {p:.3g}"
    if res["difference"] > 0 and p < ALPHA:
        return move(f"replaces v{old}: {figures} < {ALPHA}", acc[1], p)
    return keep(f"is not better on the same test images ({figures}; needs p < {ALPHA})", acc[1], p)


def record(uri: str, run_id: str, decision: Decision) -> None:
    """The decision on ``run_id``: tags (what, why) and metrics (accuracies, p)."""
    client = mlflow.MlflowClient()
    for k, v in decision.tags().items():
        call(uri, "log the champion decision", client.set_tag, run_id, k, v)
    for k, v in decision.metrics().items():
        call(uri, "log the champion decision", client.log_metric, run_id, k, v)
