"""The kind registry: every artifact kind, mlpack's own and third-party ones alike,
is an entry point in the `mlpack.kinds` group whose value is `module:KIND`.

mlpack declares its own kinds in its pyproject.toml; a plugin declares its
kinds the same way in its own. Loading a kind imports its module, which
imports no framework (see toolchain/kinds/base.py).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Annotated, Any, Union, get_args

from pydantic import Field

from toolchain.errors import UsageError
from toolchain.kinds.base import Kind

GROUP = "mlpack.kinds"
INSTALL_HINT = "install mlpack (`pip install -e .` in a checkout, or `make install`) so its entry points are registered"


def _describe(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"entry point {ep.name} = {ep.value}" + (f" (from {dist.name} {dist.version})" if dist else "")


def _check(ep, obj: Any) -> Kind:
    if not isinstance(obj, Kind):
        raise UsageError(
            f"{_describe(ep)} is a {type(obj).__name__}, not a toolchain.kinds.base.Kind instance",
            "point the entry point at the kind object, e.g. `my_kind:KIND`",
        )
    if obj.name != ep.name:
        raise UsageError(f"{_describe(ep)} names a kind called {obj.name!r}", "the entry point's name must be the kind's name")
    literal = obj.options.model_fields.get("kind")
    if literal is None or get_args(literal.annotation) != (obj.name,):
        raise UsageError(f"{_describe(ep)}: its options model {obj.options.__name__} needs `kind: Literal[{obj.name!r}]`")
    return obj


@lru_cache(maxsize=1)
def kinds() -> dict[str, Kind]:
    """Every registered kind by name, ordered by `Kind.order`, then name."""
    found: dict[str, Kind] = {}
    origin: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            raise UsageError(f"two target kinds are called {ep.name!r}: {origin[ep.name]} and {_describe(ep)}", "uninstall one of the plugins")
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must say which one it is
            raise UsageError(f"cannot load target kind {_describe(ep)}: {type(e).__name__}: {e}", "fix or uninstall that plugin") from None
        found[ep.name] = _check(ep, obj)
        origin[ep.name] = _describe(ep)
    if not found:
        raise UsageError("no target kinds are registered (the mlpack.kinds entry points are missing)", INSTALL_HINT)
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


def get(name: str) -> Kind:
    try:
        return kinds()[name]
    except KeyError:
        raise UsageError(f"unknown target kind {name!r}; registered kinds: {', '.join(kinds())}") from None


def names() -> tuple[str, ...]:
    return tuple(kinds())


@lru_cache(maxsize=1)
def target_union():
    """The recipe's `targets[]` type: a union of every kind's options, tagged by `kind`."""
    models = tuple(k.options for k in kinds().values())
    if len(models) == 1:
        return Annotated[models[0], Field()]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007 - a runtime tuple of types


def frameworks() -> dict[str, list[str]]:
    """Source framework -> the kinds that build from it."""
    out: dict[str, list[str]] = {}
    for k in kinds().values():
        for fw in sorted(k.frameworks):
            out.setdefault(fw, []).append(k.name)
    return out


@lru_cache(maxsize=1)
def runners() -> dict[str, str]:
    """Runner name -> "module:Class", from every kind's `runners`."""
    out: dict[str, str] = {}
    for k in kinds().values():
        for name, target in k.runners.items():
            if out.get(name, target) != target:
                raise UsageError(f"runner {name!r} is registered twice, as {out[name]} and {target} (kind {k.name})")
            out[name] = target
    return out


def runner_class(name: str):
    """The runner class registered under `name` (from a manifest: a registered name only, never an import path)."""
    target = runners().get(name)
    if target is None:
        raise UsageError(
            f"no runner called {name!r} is registered (runners: {', '.join(runners())})",
            "rebuild the artifact with this mlpack, or install the plugin that built it",
        )
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
