"""Method configurations: turning user overrides (grid files, ``--set``) into a method's
frozen ``Config`` dataclass.

``resolve_config`` fills in the defaults and checks every override against the field's
type: unknown keys name the valid options, values given as strings on the command line
are parsed as YAML scalars (never executed), and a value of the wrong type is an error
naming ``method.option``. Range checks belong to each ``Config.__post_init__``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kdbench.method import Method, MethodConfig


def resolve_config(method_cls: type["Method"], overrides: dict[str, Any] | None = None) -> "MethodConfig":
    """Build ``method_cls.Config`` from its defaults and ``overrides``.

    Unknown keys are an error naming the valid fields; values given as strings (from the
    command line) are parsed as YAML scalars and checked against the field's type.
    """
    cfg_cls = method_cls.Config
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {method_cls.name} option(s) {unknown}; valid options: "
            + ", ".join(f"{n}={getattr(cfg_cls(), n)!r}" for n in fields)
        )
    hints = typing.get_type_hints(cfg_cls)
    values = {name: coerce(method_cls.name, name, value, hints.get(name)) for name, value in overrides.items()}
    try:
        return cfg_cls(**values)
    except (TypeError, ValueError) as exc:  # a Config.__post_init__ range check
        raise ValueError(f"{method_cls.name}: {exc}") from None


def coerce(owner: str, name: str, value: Any, hint: Any) -> Any:
    """Parse ``value`` (possibly a CLI string) into the type ``hint`` or raise a clear error."""
    if isinstance(value, str) and hint is not str:
        value = yaml.safe_load(value) if value.strip() else value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is None or hint is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{owner}.{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(owner, name, value, a)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{owner}.{name}: {value!r} fits none of the allowed types ({'; '.join(errors)})")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(coerce(owner, name, v, inner) for v in value) if origin is tuple else [coerce(owner, name, v, inner) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{owner}.{name} must be true/false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
        return value
    if hint is str:
        return str(value)
    return value


def config_dict(cfg: "MethodConfig") -> dict[str, Any]:
    """The resolved options as a plain dict (what a run key hashes)."""
    return dataclasses.asdict(cfg)
