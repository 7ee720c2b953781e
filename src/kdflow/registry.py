"""Name -> builder registries, so a new dataset, model, loss or strategy is one file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kdflow.errors import ParamsError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A named table of builders; ``get`` fails with the list of valid names."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._schemas: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded = package is None

    def register(self, name: str, schema: Any = None, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@REG.register("kd", schema=KDOptions)``; ``meta`` describes the entry
        (e.g. ``from_scratch=True``) for callers that must know before building it."""

        def deco(fn: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            if schema is not None:
                self._schemas[name] = schema
            self._meta[name] = dict(meta)
            return fn

        return deco

    def _load(self) -> None:
        # Import every module of the package once, so that dropping a file in registers it.
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def schema(self, name: str) -> Any:
        self._load()
        return self._schemas.get(name)

    def meta(self, name: str) -> dict[str, Any]:
        """What the entry declared at registration (empty if nothing)."""
        self.get(name)
        return self._meta[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def build(self, name: str, options: dict[str, Any] | None, *args: Any) -> Any:
        """The entry built from options that ``kdflow.params`` validated (not validated again):
        the builder gets its options object (None for an entry without options) first."""
        schema = self.schema(name)
        opts = schema.model_construct(**(options or {})) if schema is not None else None
        return self.get(name)(opts, *args)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise ParamsError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]
