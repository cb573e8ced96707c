"""Pairwise judges R(o, y) in {-1, 0, 1}: is the completion o worse than, as good as, or better than y?

GRAO's alignment signal compares a sample with the reference answer, not on an absolute scale. The
judge is any callable the user brings (an LLM call, a human label lookup, a rule); this wrapper
fixes the contract and refuses anything outside {-1, 0, 1}, naming the judge and the row.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import numpy as np

from rewards.registry import RewardError, register, resolve


def _keyword_names(fn: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments ``fn`` takes besides the first three; None when it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[3:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _judge_name(fn: Any) -> str:
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


@register("pairwise_judge")
class PairwiseJudge:
    """Wrap ``judge_fn(prompt, completion, reference) -> -1 | 0 | 1`` as a reward.

    With ``batched=True`` the judge is called once as ``judge_fn(prompts, completions, references)``
    and returns a sequence (one verdict per row), which suits an LLM judge served in batches.
    Dataset columns (``Example.meta``) reach the judge as keyword arguments when it names them or
    takes ``**kwargs``: whole lists when batched, the row's value otherwise.
    """

    pairwise = True

    def __init__(self, judge_fn: Callable[..., Any], batched: bool = False, name: str | None = None):
        if not callable(judge_fn):
            raise RewardError(f"pairwise_judge: judge_fn must be callable, got {type(judge_fn).__name__}")
        self.judge_fn, self.batched = judge_fn, batched
        self.name = name or _judge_name(judge_fn)
        self._accepts = _keyword_names(judge_fn)

    def _verdict(self, value: Any, i: int) -> float:
        ok = isinstance(value, Real | np.number) and not isinstance(value, bool | np.bool_)
        if not ok or math.isnan(float(value)) or float(value) not in (-1.0, 0.0, 1.0):
            raise RewardError(f"judge {self.name!r} returned {value!r} at index {i}; expected -1, 0 or 1")
        return float(value)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        n = len(completions)
        if references is None:
            raise RewardError(f"judge {self.name!r} compares with references, got None for {n} completions")
        for i, ref in enumerate(references):
            if ref is None:
                raise RewardError(f"judge {self.name!r} needs a reference, but reference {i} is None")
        columns = {k: v for k, v in columns.items() if self._accepts is None or k in self._accepts}
        if self.batched:
            verdicts = list(self.judge_fn(list(prompts), list(completions), list(references), **columns))
            if len(verdicts) != n:
                raise RewardError(f"judge {self.name!r} returned {len(verdicts)} verdicts for {n} completions")
        else:
            verdicts = [self.judge_fn(p, c, r, **{k: v[i] for k, v in columns.items()})
                        for i, (p, c, r) in enumerate(zip(prompts, completions, references, strict=True))]
        return np.array([self._verdict(v, i) for i, v in enumerate(verdicts)])

    @classmethod
    def from_reward(cls, reward: Any, margin: float = 0.0) -> PairwiseJudge:
        """A judge from an absolute reward: sign(R(o) - R(y)), a tie when within ``margin``."""
        scorer = resolve(reward)

        def judge(prompts: list[str], completions: list[str], references: list[str]) -> list[int]:
            diff = scorer(prompts, completions, references) - scorer(prompts, references, references)
            return [0 if abs(d) <= margin else int(np.sign(d)) for d in diff]

        return cls(judge, batched=True, name=f"sign({scorer.name})")
