"""Named intermediate features: the stages losses index by number, and taps by module name.

Every kdflow model returns ``features`` = its stages' outputs, then the outputs of the modules
tapped by name (``layer3``, ``blocks.4``), in tap order. Taps are forward hooks that exist
only for the duration of one forward, so a plain forward, a deepcopy and ``torch.export``
see the bare model.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from kdflow.errors import KdflowError, ParamsError
from kdflow.outputs import Outputs


@contextmanager
def capture(root: nn.Module, names: list[str]) -> Iterator[dict[str, Any]]:
    """The outputs of ``root``'s submodules ``names`` during the enclosed forward (the last
    call wins for a module called twice)."""
    store: dict[str, Any] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            store[name] = out

        handles.append(root.get_submodule(name).register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def collect(store: dict[str, Any], names: list[str]) -> list[Tensor]:
    """The captured outputs in ``names`` order; a module that did not run is one line."""
    missing = [n for n in names if n not in store]
    if missing:
        raise KdflowError(f"layer {missing[0]!r} did not run in the model's forward")
    return [store[n] for n in names]


class Features:
    """Mixin for kdflow models: the forward every model shares (logits, or all ``Outputs``),
    stage names, and taps of other modules by name."""

    _taps: list[str]

    def forward_all(self, x: Tensor) -> Outputs:
        feats, emb = self.backbone(x)  # type: ignore[attr-defined]
        return Outputs(self.head(emb), feats, emb)  # type: ignore[attr-defined]

    def forward(self, x: Tensor, with_features: bool = False) -> Tensor | Outputs:
        # One entry point (also under DDP, which only syncs gradients through forward).
        if with_features:
            return self.forward_all(x)
        return self.head(self.embed(x))  # type: ignore[attr-defined]

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head.parameters()}  # type: ignore[attr-defined]
        return [p for p in self.parameters() if id(p) not in head]  # type: ignore[attr-defined]

    def stage_names(self) -> list[str]:  # pragma: no cover - interface
        """Module names (relative to ``tap_root``) whose outputs are the stage features."""
        raise NotImplementedError

    def tap_root(self) -> nn.Module:
        """The module whose names layers are given in (the original network's)."""
        return self  # type: ignore[return-value]

    def layer_names(self) -> list[str]:
        """Every module a loss may name."""
        root = self.tap_root()  # kdflow's own head is not a layer; a body's "head" may be
        return [n for n, _ in root.named_modules() if n and not (root is self and _is_head(n))]

    def clear_taps(self) -> None:
        self._taps = []

    def tap(self, name: str, where: str, who: str = "model") -> int:
        """Index in ``features`` of module ``name``'s output: its stage, or a new tap after the
        stages. ``where`` (the params key) goes into the one-line error for a wrong name."""
        stages = self.stage_names()
        if name in stages:
            return stages.index(name)
        names = self.layer_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise ParamsError(
                f"params.yaml: {where} = {name!r}: the {who} has no such layer "
                f"(stages: {', '.join(stages) or 'none'}{hint})"
            )
        if name not in self._taps:
            self._taps.append(name)
        return len(stages) + self._taps.index(name)

    def stage_index(self, index: int, where: str, who: str = "model") -> int:
        """A stage index as today (negative counts from the last stage), made non-negative."""
        n = len(self.stage_names())
        if not -n <= index < n:
            raise ParamsError(
                f"params.yaml: {where} = {index} is out of range: the {who} has {n} stage(s)"
            )
        return index % n

    def feature_index(self, layer: int | str, where: str, who: str = "model") -> int:
        """Where ``layer`` (a stage index or a module name) is in ``features``."""
        if isinstance(layer, str):
            return self.tap(layer, where, who)
        return self.stage_index(layer, where, who)


def _is_head(name: str) -> bool:
    return name == "head" or name.startswith("head.")
