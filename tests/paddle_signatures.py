"""Signatures of paddle.inference.Config methods, parsed from the installed Paddle's own pybind docstrings.

Contract tests record the calls the predictor factory makes and bind each to these signatures, so a wrong
method name, argument name, order or arity fails here although no GPU or TensorRT is present.
"""
from __future__ import annotations

import inspect
import re
from typing import Any

import paddle.inference

_SIG_LINE = re.compile(r"^(?:\d+\.\s*)?(\w+)\((.*)\)\s*->")


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[({<":
            depth += 1
        elif ch in "])}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _parameter(text: str) -> inspect.Parameter:
    name_type, has_default, _ = text.partition("=")
    name = name_type.split(":")[0].strip()
    default = object() if has_default else inspect.Parameter.empty
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)


def signatures(method: str) -> list[inspect.Signature]:
    """All overloads of ``paddle.inference.Config.<method>`` as inspect.Signature objects."""
    func = getattr(paddle.inference.Config, method)
    sigs = []
    for line in (func.__doc__ or "").splitlines():
        match = _SIG_LINE.match(line.strip())
        if match and match.group(1) == method:
            sigs.append(inspect.Signature([_parameter(p) for p in _split_top_level(match.group(2))]))
    if not sigs:
        raise AssertionError(f"no signature found in the docstring of Config.{method}")
    return sigs


def bind(method: str, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """Bind a recorded call (self excluded) to the real signature; TypeError when it does not fit."""
    errors = []
    for sig in signatures(method):
        try:
            return sig.bind(None, *args, **kwargs)
        except TypeError as e:
            errors.append(str(e))
    raise TypeError(f"Config.{method}{args}{kwargs} fits no overload: {errors}")


class RecordingConfig:
    """Stands in for paddle.inference.Config: records every call; only real Config methods exist."""

    def __init__(self, *args: Any):
        self.calls: list[tuple[str, tuple, dict]] = [("__init__", args, {})]

    def __getattr__(self, name: str):
        if name.startswith("_") or not hasattr(paddle.inference.Config, name):
            raise AttributeError(f"paddle.inference.Config has no method {name!r}")

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def call(self, name: str) -> inspect.BoundArguments:
        """The bound arguments of the one call to ``name``."""
        found = [c for c in self.calls if c[0] == name]
        if len(found) != 1:
            raise AssertionError(f"expected one call to {name}, got {len(found)}: {self.names()}")
        return bind(name, found[0][1], found[0][2])


def recording_predictor(build_config, configs: list, fed: list, input_names: list[str]) -> type:
    """A stand-in for the Paddle Predictor in TRT calibration contract tests (there is no GPU here): it records
    the ``paddle.inference.Config`` calls the factory makes (via ``build_config(plan, config_cls=...)``) into
    ``configs`` and every feed dict it is run with into ``fed``, and returns no outputs."""

    class RecordingPredictor:
        output_names = ["out"]

        def __init__(self, plan):
            self.input_names = list(input_names)
            configs.append(build_config(plan, config_cls=RecordingConfig))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def run(self, feeds):
            fed.append(feeds)
            return {}

    return RecordingPredictor
