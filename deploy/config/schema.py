"""Typed conversion of plain YAML data into dataclasses, with errors that name the key, the file and a fix."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from deploy.errors import ConfigError

# Resolves a relative path found at a dotted key to an absolute one (relative to the file that set the key).
PathResolver = Callable[[str, str], Path]


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _fail(where: str, key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {_describe(value)}")


def closest_match(name: str, valid: list[str], cutoff: float = 0.5) -> str | None:
    """The valid name closest to ``name`` (a likely typo), or None when none is close (similarity < cutoff)."""
    match = difflib.get_close_matches(name, valid, n=1, cutoff=cutoff)
    return match[0] if match else None


def closest_key(key: str, valid: list[str]) -> str:
    """The hint for an unknown key: the closest valid key, or the list of valid keys."""
    match = closest_match(key, valid)
    if match:
        return f"did you mean '{match}'?"
    return "valid keys: " + ", ".join(sorted(valid))


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_keys(raw: Any, cls: type, prefix: str, where: str) -> None:
    """Fail on the first key in ``raw`` that ``cls`` (recursively) does not define."""
    if not isinstance(raw, dict):
        return
    types_ = field_types(cls)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            valid = [f"{prefix}{k}" for k in types_]
            raise ConfigError(f"{where}: unknown key '{dotted}'; {closest_key(dotted, valid)}")
        inner = _unwrap_optional(types_[key])
        if dataclasses.is_dataclass(inner):
            check_keys(value, inner, f"{dotted}.", where)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def convert(value: Any, tp: Any, key: str, where: Callable[[str], str], resolve: PathResolver | None = None) -> Any:
    """Convert ``value`` found at dotted ``key`` to type ``tp``; ``where(key)`` names the file for errors."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for arg in non_none:
            try:
                return convert(value, arg, key, where, resolve)
            except ConfigError:
                continue
        raise _fail(where(key), key, tp, value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value if value is not None else {}, key, where, resolve)
    if origin is Literal:
        return _convert_literal(value, tp, key, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where(key), key, tp, value)
        (item_tp,) = typing.get_args(tp)[:1]
        return [convert(v, item_tp, f"{key}[{i}]", where, resolve) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where(key), key, tp, value)
        _, val_tp = typing.get_args(tp)
        return {str(k): convert(v, val_tp, f"{key}.{k}", where, resolve) for k, v in value.items()}
    return _convert_scalar(value, tp, key, where, resolve)


def _convert_literal(value: Any, tp: Any, key: str, where: Callable[[str], str]) -> Any:
    choices = typing.get_args(tp)
    if isinstance(value, bool) and ("off" if not value else "on") in choices:
        return "off" if not value else "on"  # YAML 1.1 reads an unquoted off / on as a boolean
    if isinstance(value, str):
        for choice in choices:
            if value.lower() == str(choice).lower():
                return choice
    raise _fail(where(key), key, tp, value)


def _convert_scalar(value: Any, tp: Any, key: str, where: Callable[[str], str], resolve: PathResolver | None) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str) and value:
            return resolve(key, value) if resolve else Path(value)
    raise _fail(where(key), key, tp, value)


def build_dataclass(cls: type, raw: Any, prefix: str, where: Callable[[str], str],
                    resolve: PathResolver | None = None) -> Any:
    """Build ``cls`` from a mapping, converting every field; missing fields keep their defaults."""
    if not isinstance(raw, dict):
        raise _fail(where(prefix), prefix or "<top level>", cls, raw)
    dotted = f"{prefix}." if prefix else ""
    types_ = field_types(cls)
    unknown = [k for k in raw if k not in types_]
    if unknown:
        key = f"{dotted}{unknown[0]}"
        valid = [f"{dotted}{k}" for k in types_]
        raise ConfigError(f"{where(key)}: unknown key '{key}'; {closest_key(key, valid)}")
    kwargs = {name: convert(value, types_[name], f"{dotted}{name}", where, resolve) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where(prefix)}: {prefix or cls.__name__}: {e}") from e
