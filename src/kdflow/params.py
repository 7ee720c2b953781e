"""Reading params.yaml: the schema (``kdflow.config``), then names and options against the
registries, once. What comes out is what every builder gets: options already validated.

A mistake becomes one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdflow.config import TRAINING_SECTIONS, Params
from kdflow.datasets import DATASETS
from kdflow.errors import ParamsError
from kdflow.losses import LOSSES
from kdflow.models import check_arch
from kdflow.registry import Registry
from kdflow.strategies import BASELINE, STRATEGIES


def _allowed(loc: tuple, model: type[BaseModel] = Params) -> list[str]:
    """The keys allowed at ``loc`` (for 'unknown key' messages)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def format_error(exc: ValidationError, prefix: str = "", schema: type[BaseModel] = Params) -> str:
    """The first validation error as one line: key, value, what is allowed."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "__root__")
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(top level)"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed(loc, schema)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"params.yaml: unknown key {key} (value {value!r}){hint}"
    if err["type"] == "missing":
        return f"params.yaml: missing key {key}"
    if isinstance(value, dict):  # a rule across keys of a section: the message names them
        return f"params.yaml: {key}: {msg}"
    return f"params.yaml: {key} = {value!r} is not allowed: {msg}"


def _name(reg: Registry, key: str, name: str) -> None:
    if name not in reg:
        raise ParamsError(
            f"params.yaml: {key} = {name!r} is not allowed: unknown {reg.kind}; "
            f"valid: {', '.join(reg.names())}"
        )


def validate_options(reg: Registry, where: str, name: str, block: dict[str, Any] | None) -> dict:
    """One method's options checked against the schema it registered, defaults filled in."""
    _name(reg, where, name)
    schema = reg.schema(name)
    if schema is None:
        if block:
            raise ParamsError(f"params.yaml: {where}.{name} = {block!r}: {name} takes no options")
        return {}
    try:
        return schema.model_validate(block or {}).model_dump()
    except ValidationError as exc:
        raise ParamsError(format_error(exc, f"{where}.{name}", schema)) from None


def _all_options(reg: Registry, where: str, given: dict, used: list[str]) -> dict[str, dict]:
    """Every block given, and every method in use, validated with its defaults."""
    return {
        n: validate_options(reg, where, n, given.get(n)) for n in dict.fromkeys([*given, *used])
    }


def check_registries(p: Params) -> Params:
    """Names against the registries; options validated once, and the rules a method declares."""
    _name(DATASETS, "data.dataset", p.data.dataset)
    for role in ("teacher", "student"):
        check_arch(getattr(p.models, role).arch, f"models.{role}.arch")
    _name(LOSSES, "distill.method", p.distill.method)
    methods = _all_options(LOSSES, "distill.methods", p.distill.methods, [p.distill.method])
    for s in p.transfer.strategies:
        _name(STRATEGIES, "transfer.strategies", s)
        if STRATEGIES.meta(s).get("from_scratch"):
            raise ParamsError(
                f"params.yaml: transfer.strategies = {p.transfer.strategies} lists {s!r}, which "
                f"starts from random weights, not a source: the {BASELINE} baseline is its own "
                f"stage (transfer-{BASELINE}); remove {s!r} from the list"
            )
    strategies = [*p.transfer.strategies, BASELINE]  # the baseline's options too
    options = _all_options(STRATEGIES, "transfer.options", p.transfer.options, strategies)
    for s in strategies:
        rule = STRATEGIES.meta(s).get("unaugmented")
        if rule and p.transfer.train.augment:
            raise ParamsError(f"params.yaml: transfer.train.augment must be false with {s}: {rule}")
    return p.model_copy(update={
        "distill": p.distill.model_copy(update={"methods": methods}),
        "transfer": p.transfer.model_copy(update={"options": options}),
    })  # fmt: skip


def parse_params(raw: Any) -> Params:
    """Validate a params mapping; raises ParamsError with one readable line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the top level must be a mapping of sections")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(format_error(exc)) from None
    return check_registries(params)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (a missing file is an error, not all defaults)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_params(raw)


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """``params`` with dotted keys set (``{"distill.methods.kd.temperature": 4}``), validated
    as params.yaml would be: what ``dvc exp run -S`` does, for sweeps and tests."""
    raw = params.model_dump()
    shared = {k: v for k, v in overrides.items() if k.startswith("train.defaults.")}
    for key, value in shared.items():  # the sections already hold the defaults: set each
        for outer, inner in TRAINING_SECTIONS:
            raw[outer][inner][key.rsplit(".", 1)[1]] = value
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_params(raw)
