"""Plain values checked against type hints and bounds: the one validator behind every Agent config and
every file ``algos`` reads back (``agent.json``, ``history.json``, ``policy.json``, an algorithm's state).

A config and a file fail the same way: the error names what holds the value (``GRPOConfig.beta``, or
``…/agent.json: key 'step'``), what was expected and what was found, and it is the caller's own error
type (``ConfigError`` for configs, ``CheckpointError`` for files). An int where a float is allowed
becomes that float, so a value too large for a float (``10**400``) is refused here, not in the optimiser.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

Record = TypeVar("Record")


def arms(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union hint (``int | None`` -> ``(int, NoneType)``); a plain hint alone."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` has type ``hint``: bools are not numbers, an int is a float, a Literal is one of
    its choices, and ``list[X]`` / ``dict[K, V]`` look at every element."""
    if len(union := arms(hint)) > 1:
        return any(accepts(arm, value) for arm in union)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return not isinstance(value, bool) and any(value == a and type(value) is type(a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(accepts(args[0], v) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(accepts(args[0], k) and accepts(args[1], v) for k, v in value.items())
    checks = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str), list: lambda v: isinstance(v, list),
              dict: lambda v: isinstance(v, dict)}
    return checks.get(hint, lambda v: True)(value)


def describe(hint: Any) -> str:
    """``int | None`` -> "int or None"; a Literal lists its choices."""
    if len(union := arms(hint)) > 1:
        return " or ".join(describe(arm) for arm in union)
    if typing.get_origin(hint) is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a whole file's content has no place in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def checked(name: str, value: Any, hint: Any, error: type[Exception]) -> Any:
    """``value`` if it has type ``hint``, with an int made a float where only a float is allowed; a float
    must be finite. Anything else raises ``error`` naming ``name`` (e.g. ``"GRPOConfig.beta"``)."""
    if not accepts(hint, value):
        raise error(f"{name} must be {describe(hint)}, got {type(value).__name__} {short_repr(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and not any(accepts(a, value) for a in arms(hint)
                                                                         if a is not float):
        try:
            value = float(value)
        except OverflowError:
            raise error(f"{name} must be a finite number, got {short_repr(value)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value}")
    return value


def check_bounds(name: str, value: Any, error: type[Exception], *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None, why: str = "") -> None:
    """Raise ``error`` naming ``name`` unless ``value`` lies within the bounds (None, an unset option, passes).

    One bound reads "must be >= 1"; a lower and an upper one read as an interval, "must be in [0, 0.5)".
    ``why`` says what the rule protects against."""
    if value is None:
        return
    low, high = (ge, "[") if ge is not None else (gt, "("), (le, "]") if le is not None else (lt, ")")
    inside = ((ge is None or value >= ge) and (gt is None or value > gt)
              and (le is None or value <= le) and (lt is None or value < lt))
    if inside:
        return
    if low[0] is not None and high[0] is not None:
        rule = f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    else:
        rule = next(f"{op} {b}" for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None)
    raise error(f"{name} must be {rule}, got {value}" + (f": {why}" if why else ""))


def read_record(cls: type[Record], values: Any, source: str, error: type[Exception]) -> Record:
    """A ``cls`` (a dataclass) from ``values`` read back from ``source`` (a file): a JSON object holding
    every field without a default, each of its field's type. Keys it does not know are left out (a newer
    version may write more); anything else raises ``error`` naming the file (unless ``source`` is empty,
    for a caller that names it itself) and the key."""
    def at(text: str) -> str:
        return f"{source}: {text}" if source else text

    if not isinstance(values, Mapping):
        raise error(at(f"expected a JSON object, got {type(values).__name__}"))
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    missing = [f.name for f in fields if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(at(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"))
    known = {f.name: checked(at(f"key {f.name!r}"), values[f.name], hints[f.name], error)
             for f in fields if f.name in values}
    return cls(**known)
