"""State dicts of the original networks (torchvision, timm, a user's module) in kdflow's names.

A weights file holds the network as its authors named it (``layer1.0.conv1.weight``,
``fc.weight``); a kdflow model holds it under ``stem``/``stages`` (the hand-adapted ``tv_*``
nets) or ``body`` (``Adapted``), with the classifier as ``head``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from kdflow.models._adapter import Adapted

# torchvision names -> the Net layout of tv_resnet* / tv_mobilenet_v3_small, and back
_TV_RESNET = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^fc\.", "head.")] + [
    (rf"^layer{i}\.", f"stages.{i - 1}.") for i in range(1, 5)
]
_TV_RESNET_BACK = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."), (r"^head\.", "fc.")] + [
    (rf"^stages\.{i - 1}\.", f"layer{i}.") for i in range(1, 5)
]
# tv_mobilenet_v3_small slices ``features`` into stages, keeping each block's index
_MOBILENET_STAGES = [(0, 2), (2, 4), (4, 9), (9, 13)]
_MOBILENET_BACK = [(r"^stages\.\d+\.", "features."), (r"^head\.", "classifier.")]


def _sub(rules: list[tuple[str, str]], key: str) -> str:
    for pat, rep in rules:
        key = re.sub(pat, rep, key)
    return key


def _resnet(key: str) -> str:
    return _sub(_TV_RESNET, key)


def _mobilenet(key: str) -> str:
    m = re.match(r"^features\.(\d+)\.", key)
    if m:
        n = int(m.group(1))
        stage = next((i for i, (lo, hi) in enumerate(_MOBILENET_STAGES) if lo <= n < hi), None)
        return key if stage is None else f"stages.{stage}.{key[len('features.') :]}"
    return re.sub(r"^classifier\.", "head.", key)


def own_names(model: nn.Module, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``state`` under ``model``'s names (the classifier as ``head.*``), and for each of the
    model's and the file's keys the name the file uses (for messages)."""
    own = model.state_dict()
    if isinstance(model, Adapted):
        renamed = model.own_names(state)
        names = {k: k.removeprefix("body.") for k in own}
        return renamed, {**names, **dict(zip(renamed, state, strict=True))}
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        rename, back = _resnet, _TV_RESNET_BACK
    elif "features.0.0.weight" in state and "stages.0.0.0.weight" in own:
        rename, back = _mobilenet, _MOBILENET_BACK
    else:
        return dict(state), {k: k for k in [*own, *state]}
    renamed = {rename(k): v for k, v in state.items()}
    names = {k: _sub(back, k) for k in own}
    return renamed, {**names, **{rename(k): k for k in state}}
