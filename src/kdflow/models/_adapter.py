"""Any image classifier (timm, torchvision, a user's nn.Module) behind kdflow's model interface.

The network keeps its own module names under ``body`` (so losses name layers as its authors
did: ``layer3``, ``blocks.4``); its classifier is replaced by kdflow's ``head`` (sized for
the task's classes) so the pooled embedding, the head and the backbone's parameters are
apart, which is what transfer strategies need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from kdflow.errors import ParamsError
from kdflow.models._features import Features, capture, collect

_OPENED = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # containers whose children are steps
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class Adapted(Features, nn.Module):
    """``body`` (the network without its classifier) -> pooled embedding -> ``head``.

    ``timm_api``: the body is a timm model, whose ``forward_features`` /
    ``forward_head(pre_logits=True)`` give the embedding; otherwise ``body(x)`` does (its last
    ``nn.Linear`` was replaced by ``nn.Identity``). ``head_name`` is that classifier's name in
    the original network's state dicts, which weights files use.
    """

    def __init__(
        self,
        body: nn.Module,
        feat_dim: int,
        num_classes: int,
        stages: list[str],
        head_name: str,
        timm_api: bool = False,
    ) -> None:
        super().__init__()
        self.body = body
        self.feat_dim = feat_dim
        self.head = nn.Linear(feat_dim, num_classes)
        self.head_name = head_name
        self.timm_api = timm_api
        self._stages = list(stages)
        self._taps: list[str] = []

    def stage_names(self) -> list[str]:
        return list(self._stages)

    def tap_root(self) -> nn.Module:
        return self.body

    def _pooled(self, x: Tensor) -> Tensor:
        if self.timm_api:
            out = self.body.forward_head(self.body.forward_features(x), pre_logits=True)
        else:
            out = self.body(x)
        return out.flatten(1)

    def backbone(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        names = self._stages + self._taps
        with capture(self.body, names) as store:
            emb = self._pooled(x)
        return collect(store, names), emb

    def embed(self, x: Tensor) -> Tensor:
        return self._pooled(x)

    def own_names(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state dict of the original network (or of this model) in this model's names: the
        classifier becomes ``head.*``, everything else goes under ``body.``."""
        if state and all(k.startswith(("body.", "head.")) for k in state):
            return dict(state)
        heads = tuple(f"{h}." for h in self.head_name.split(",") if h)
        out = {}
        for k, v in state.items():
            head = next((h for h in heads if k.startswith(h)), None)
            out[f"head.{k[len(head) :]}" if head else f"body.{k}"] = v
        return out


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def drop_classifier(body: nn.Module, arch: str) -> tuple[str, int]:
    """Replace the network's last ``nn.Linear`` (its classifier) by ``nn.Identity``; returns its
    name and input size (the embedding size)."""
    linears = [(n, m) for n, m in body.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ParamsError(f"{arch} has no nn.Linear classifier to replace with the task's head")
    name, fc = linears[-1]
    replace_module(body, name, nn.Identity())
    return name, fc.in_features


def adapt_channels(body: nn.Module, in_channels: int, arch: str) -> None:
    """Give the first convolution ``in_channels`` inputs (a new one, same geometry)."""
    convs = [(n, m) for n, m in body.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs or convs[0][1].in_channels == in_channels:
        return
    name, c = convs[0]
    if c.groups != 1:
        raise ParamsError(
            f"{arch}: cannot give its first (grouped) convolution {in_channels} inputs"
        )
    geometry: dict[str, Any] = {"stride": c.stride, "padding": c.padding, "dilation": c.dilation}
    new = nn.Conv2d(
        in_channels, c.out_channels, c.kernel_size, **geometry,
        bias=c.bias is not None, padding_mode=c.padding_mode,
    )  # fmt: skip
    replace_module(body, name, new)


def _steps(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The modules along the network's main path: containers are opened, blocks are not."""
    for name, child in module.named_children():
        if isinstance(child, _OPENED):
            yield from _steps(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _promote(body: nn.Module, name: str) -> str:
    """``layer1.1`` -> ``layer1`` when it is the Sequential's last step (the same output)."""
    while "." in name:
        parent, _, leaf = name.rpartition(".")
        seq = body.get_submodule(parent)
        if not isinstance(seq, nn.Sequential) or list(seq._modules)[-1] != leaf:
            break
        name = parent
    return name


def find_stages(body: nn.Module, run: Callable[[], object]) -> list[str]:
    """The last module of each spatial resolution along the main path (4-d outputs only), found
    by running ``run()`` once: the stages a loss indexes by number."""
    seen: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 4:
            seen.append((name, tuple(out.shape[2:])))

    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: record(n, out))
        for n, m in _steps(body)
        if not isinstance(m, _GLOBAL_POOLS)
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    last = {n: i for i, (n, _) in enumerate(seen)}  # a tap keeps a module's last call
    ends = [
        n
        for i, (n, size) in enumerate(seen)
        if (i + 1 == len(seen) or seen[i + 1][1] != size) and last[n] == i
    ]
    return [_promote(body, n) for n in ends]


@torch.no_grad()
def settle(model: Adapted, arch: str, in_channels: int, image_size: int) -> None:
    """One eval-mode forward of blank images: the network must run on the task's input; a
    network without declared stages gets them found on the way."""
    was = model.training
    model.eval()
    x = torch.zeros(2, in_channels, image_size, image_size)
    try:
        if not model._stages:
            model._stages = find_stages(model.body, lambda: model._pooled(x))
        out = model.forward_all(x)
    except (RuntimeError, ValueError, AssertionError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ParamsError(
            f"{arch} does not run on {in_channels}x{image_size}x{image_size} input ({first})"
        ) from None
    finally:
        model.train(was)
    if out.embedding is None or out.embedding.shape[1] != model.feat_dim:
        got = None if out.embedding is None else tuple(out.embedding.shape[1:])
        raise ParamsError(f"{arch}: its pooled output is {got}, not {model.feat_dim}-d")
