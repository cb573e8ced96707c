"""The reward registry and the validating wrapper every reward is called through.

A reward is any callable with TRL's reward-function signature::

    fn(prompts, completions, references=None, **columns) -> array of float, one per completion

Extra dataset columns arrive as keyword lists. A reward object may also define
``components(prompts, completions, references=None, **columns) -> dict[str, array]`` whose values
sum to the total (composites do), and ``pairwise = True`` when it is a judge R(o, y) that compares a
completion with the reference (then the reference scores 0 against itself).

A reward with a parameter named ``completions`` is called by keyword, as TRL calls its reward
functions (``def reward_len(completions, **kwargs)``); one that also does not name ``references`` is a TRL
reward function and gets TRL's forms (messages for conversational prompts, ``completion_ids``); see
``rewards.calling`` for the rule.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rewards.calling import call_reward

RewardFn = Callable[..., Any]

_REGISTRY: dict[str, Callable[..., Any]] = {}


class RewardError(ValueError):
    """A reward was misused or returned something unusable; the message names the reward."""


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a reward function, or a class/factory whose instances are rewards.

    ``rewards.get(name, **kw)`` instantiates a class with ``kw``; for a plain function ``kw`` are
    bound with ``functools.partial``.
    """

    def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
        if not isinstance(name, str) or not name:
            raise RewardError(f"reward name must be a non-empty string, got {name!r}")
        if name in _REGISTRY:
            raise RewardError(f"reward {name!r} is already registered (by {_REGISTRY[name]!r})")
        _REGISTRY[name] = obj
        return obj

    return decorator


def unregister(name: str) -> None:
    """Remove a registered reward (mostly for tests and notebooks that re-run a cell)."""
    _REGISTRY.pop(name, None)


def list_rewards() -> list[str]:
    return sorted(_REGISTRY)


def _unknown(name: str) -> RewardError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return RewardError(f"unknown reward {name!r}{hint} Known rewards: {', '.join(list_rewards())}")


def get(name: str, /, **kwargs: Any) -> ValidatedReward:
    """Build the registered reward ``name`` with ``kwargs``, wrapped in validation.

    ``name`` is positional-only so a reward may itself take a ``name`` keyword (e.g. a judge's label).
    """
    if name not in _REGISTRY:
        raise _unknown(name)
    obj = _REGISTRY[name]
    if inspect.isclass(obj):
        try:
            fn = obj(**kwargs)
        except TypeError as err:
            raise RewardError(f"reward {name!r}: bad arguments {sorted(kwargs)}: {err}") from err
    else:
        fn = functools.partial(obj, **kwargs) if kwargs else obj
    return ValidatedReward(fn, name=name)


def resolve(spec: str | RewardFn | ValidatedReward, name: str | None = None) -> ValidatedReward:
    """Turn a registered name, a plain callable or an already wrapped reward into a ValidatedReward."""
    if isinstance(spec, ValidatedReward):
        return spec
    if isinstance(spec, str):
        return get(spec)
    if callable(spec):
        return ValidatedReward(spec, name=name)
    raise RewardError(f"a reward must be a registered name or a callable, got {type(spec).__name__}")


def _callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


FLOAT32_MAX = float(np.finfo(np.float32).max)  # rewards become float32 tensors in the losses


def _numbers(values: Any, who: str) -> np.ndarray:
    """``values`` as float64. A torch tensor is detached first: a reward is a signal, never part of the
    policy's graph. Strings (even "1.5") are refused rather than parsed: they mean a bug in the reward."""
    if callable(getattr(values, "detach", None)):
        values = values.detach().cpu()
    try:
        raw = np.asarray(values)
        if raw.dtype.kind in "USOc":
            items = list(values) if isinstance(values, list | tuple) else raw.reshape(-1).tolist()
            bad = next((i for i, v in enumerate(items) if isinstance(v, str | bytes | complex | np.complexfloating)),
                       None)
            if bad is not None:
                raise TypeError(f"value {items[bad]!r} at index {bad} is not a real number")
        return raw.astype(np.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise RewardError(f"{who} returned non-numeric values ({type(values).__name__}): {err}") from err


def check_values(values: Any, n: int, who: str) -> np.ndarray:
    """Validate a reward's output: numeric, exactly 1-D of length ``n``, finite in float32. ``who`` names the
    culprit. Nothing is reshaped: an ``(n, 1)`` or ``(1, n)`` array or a nested list is refused, because
    flattening would silently accept a reward that scores something other than one value per completion
    (a batch of logits, a transposed matrix)."""
    arr = _numbers(values, who)
    if arr.ndim == 0:
        raise RewardError(f"{who} returned a scalar (shape ()); expected one value per completion, shape ({n},)")
    if arr.ndim != 1:
        raise RewardError(f"{who} returned an array of shape {arr.shape}; expected one value per completion, "
                          f"a 1-D sequence of shape ({n},)")
    if arr.shape[0] != n:
        raise RewardError(f"{who} returned {arr.shape[0]} values for {n} completions")
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~(np.abs(arr) <= FLOAT32_MAX))
    if bad.size:
        i = int(bad[0])
        what = "non-finite value" if not np.isfinite(arr[i]) else "value too large for float32"
        raise RewardError(f"{who} returned a {what} ({arr[i]}) at index {i}"
                          f"{f' and {bad.size - 1} more' if bad.size > 1 else ''}")
    return arr


class ValidatedReward:
    """Wraps a reward so every call is checked, and every error names the reward (and its caller)."""

    def __init__(self, fn: RewardFn, name: str | None = None):
        if not callable(fn):
            raise RewardError(f"reward {name!r} is not callable: {fn!r}")
        self.fn = fn
        self.name = name or _callable_name(fn)

    @property
    def pairwise(self) -> bool:
        """True for a judge R(o, y) in {-1, 0, 1} that compares each completion with its reference."""
        fn = self.fn.func if isinstance(self.fn, functools.partial) else self.fn
        return bool(getattr(fn, "pairwise", False))

    def _who(self, where: str | None) -> str:
        return f"reward {self.name!r}" + (f" (in {where})" if where else "")

    def _check_inputs(self, prompts: Sequence[str], completions: Sequence[str],
                      references: Sequence[str | None] | None, columns: dict[str, Any], who: str,
                      completion_ids: Sequence[Sequence[int]] | None = None) -> None:
        n = len(completions)
        if completion_ids is not None and len(completion_ids) != n:
            raise RewardError(f"{who}: got {len(completion_ids)} completion_ids for {n} completions")
        if len(prompts) != n:
            raise RewardError(f"{who}: got {len(prompts)} prompts for {n} completions")
        for i, c in enumerate(completions):
            if not isinstance(c, str):
                raise RewardError(f"{who}: completion {i} is {type(c).__name__}, expected str")
        if references is not None and len(references) != n:
            raise RewardError(f"{who}: got {len(references)} references for {n} completions")
        for key, col in columns.items():
            if len(col) != n:
                raise RewardError(f"{who}: column {key!r} has {len(col)} values for {n} completions")

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              references: Sequence[str | None] | None = None, *, where: str | None = None,
              completion_ids: Sequence[Sequence[int]] | None = None,
              **columns: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return ``(total, components)``; components is ``{name: total}`` for a simple reward.

        ``completion_ids`` (the sampled token ids, when a policy sampled the completions) reach only TRL
        reward functions, which TRL hands them to (see ``rewards.calling``).
        """
        who = self._who(where)
        prompts, completions = list(prompts), list(completions)
        references = None if references is None else list(references)
        self._check_inputs(prompts, completions, references, columns, who, completion_ids)
        n = len(completions)
        if n == 0:
            return np.zeros(0), {}
        has_parts = callable(getattr(self.fn, "components", None))
        try:
            out = call_reward(self.fn.components if has_parts else self.fn, prompts, completions, references, columns,
                              completion_ids)
        except RewardError as err:
            raise RewardError(f"{who}: {err}") from err
        except Exception as err:
            raise RewardError(f"{who} raised {type(err).__name__}: {err}") from err
        if not has_parts:
            total = check_values(out, n, who)
            return total, {self.name: total}
        if not isinstance(out, dict) or not out:
            raise RewardError(f"{who}: components() must return a non-empty dict of arrays")
        parts = {k: check_values(v, n, f"{who} component {k!r}") for k, v in out.items()}
        return np.sum(list(parts.values()), axis=0), parts

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, *, where: str | None = None,
                 completion_ids: Sequence[Sequence[int]] | None = None, **columns: Any) -> np.ndarray:
        return self.score(prompts, completions, references, where=where, completion_ids=completion_ids,
                          **columns)[0]

    def reference_rewards(self, prompts: Sequence[str], references: Sequence[str], *,
                          where: str | None = None, **columns: Any) -> np.ndarray:
        """R(y) for each reference answer: 0 for a pairwise judge (y ties with itself), else the reward of y."""
        if self.pairwise:
            return np.zeros(len(references))
        return self(prompts, references, references, where=where, **columns)

    def __repr__(self) -> str:
        return f"ValidatedReward({self.name!r})"
