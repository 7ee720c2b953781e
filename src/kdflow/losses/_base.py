"""Shared pieces of the distillation losses."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdflow.errors import ParamsError
from kdflow.outputs import Outputs

ZSCORE_EPS = 1e-7  # added to the std, as in Sun et al.'s code: a constant logit vector stays finite


class DistillLoss(nn.Module):
    """Base: subclasses set ``needs_features`` when they read intermediate features.

    Methods that need only teacher logits can use the teacher-output cache. A method with
    state that is neither a parameter nor a buffer of the module (an adversary's optimizer)
    returns it from ``extra_state`` so that resume checkpoints carry it.
    """

    needs_features: ClassVar[bool] = False

    def forward(  # pragma: no cover - interface
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """State beyond ``state_dict()`` that a resumed run needs (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned (an empty dict: nothing was saved)."""


def ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the labelled images of the batch (target -1: no label).

    With ``train.student.label_fraction`` < 1 the teacher's soft targets cover every image and the
    labels only some; a batch without any label contributes no hard-label loss.
    """
    labelled = target >= 0
    if bool(labelled.all()):
        return F.cross_entropy(logits, target)
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], target[labelled])


def zscore(logits: Tensor) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): ``(z - mean(z)) / (std(z) + 1e-7)`` per
    sample over the classes, with the sample std (n - 1) as in the paper's code.

    A teacher and a student then share a temperature without having to match the range of
    each other's logits: only their relations transfer. Computed in float32 at least (a
    bf16 std under autocast would move the targets).
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + ZSCORE_EPS)


def layer_index(layer: int | str, dims: list[tuple[int, ...]], key: str, who: str) -> int:
    """``layer`` as an index into ``Outputs.features`` (whose shapes are ``dims``).

    Layer names (layer3, blocks.4) are resolved to indices against the models before a loss is
    built (``kdflow.models.resolve_layers``); a name or an index out of range here is the
    user's, so it stops with one line naming ``key``."""
    if isinstance(layer, str):
        raise ParamsError(
            f"params.yaml: {key} = {layer!r}: a layer name needs the models "
            "(kdflow.models.resolve_layers) before the loss is built"
        )
    if not -len(dims) <= layer < len(dims):
        raise ParamsError(
            f"params.yaml: {key} = {layer} is out of range: the {who} has {len(dims)} "
            "feature map(s)"
        )
    return layer % len(dims)
