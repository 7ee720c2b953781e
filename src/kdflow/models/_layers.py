"""Layer options of the feature losses (FitNets, AT, RKD) resolved against the two models.

A layer is a stage index, as always (``-1``: the last stage), or a module name of that network
(``layer3``, ``blocks.4``, ``stages.2.1``). Names are tapped on the model, so its ``features``
gain that module's output after the stages; every layer becomes a non-negative index into
``features``, which is what the losses' builders and ``forward`` use.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdflow.errors import ParamsError
from kdflow.models._features import Features

Layer = int | str


def _index(model: nn.Module, layer: Layer, where: str, who: str) -> int:
    if isinstance(model, Features):
        return model.feature_index(layer, where, who)
    if isinstance(layer, str):
        raise ParamsError(f"params.yaml: {where} = {layer!r}: the {who} has no named layers")
    return layer


def _pairs(
    layers: list[Any], student: nn.Module, teacher: nn.Module, where: str
) -> list[list[int]]:
    """AT's ``layers``: a pair index (int), a name in both networks, or [student, teacher]."""
    from kdflow.losses.at import pair_stages

    out = []
    for entry in layers:
        if isinstance(entry, int):
            n_s = len(student.stage_names()) if isinstance(student, Features) else 0
            n_t = len(teacher.stage_names()) if isinstance(teacher, Features) else 0
            pairs = pair_stages(n_s, n_t)
            if not -len(pairs) <= entry < len(pairs):
                raise ParamsError(
                    f"params.yaml: {where} contains {entry}, out of range for {len(pairs)} "
                    "paired stage(s)"
                )
            out.append(list(pairs[entry]))
            continue
        s, t = (entry, entry) if isinstance(entry, str) else entry
        out.append([_index(student, s, where, "student"), _index(teacher, t, where, "teacher")])
    return out


def resolve_layers(
    method: str, options: dict[str, Any], student: nn.Module, teacher: nn.Module
) -> dict[str, Any]:
    """``distill.methods.<method>`` options with ``student_layer`` / ``teacher_layer`` / ``layers``
    as indices into each model's ``features``; named modules are tapped (earlier taps are
    cleared). Call it before probing feature shapes and building the loss."""
    for model in (student, teacher):
        if isinstance(model, Features):
            model.clear_taps()
    out = dict(options)
    where = f"distill.methods.{method}"
    for who, model in (("student", student), ("teacher", teacher)):
        key = f"{who}_layer"
        if out.get(key) is not None:
            out[key] = _index(model, out[key], f"{where}.{key}", who)
    if out.get("layers") is not None:
        out["layers"] = _pairs(out["layers"], student, teacher, f"{where}.layers")
    return out
