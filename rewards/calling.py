"""How a reward function is called: by keyword, as TRL calls it, or positionally, as older rewards expect.

TRL passes everything by name (``prompts=``, ``completions=``, then each dataset column), so its
examples read ``def reward_len(completions, **kwargs)`` or ``def accuracy(completions, solution, **kwargs)``.
A reward with a parameter named ``completions`` is called that way here too, with ``references=``
beside the columns; it gets only the arguments it names unless it takes ``**kwargs``. Any other reward
is called positionally, ``fn(prompts, completions, references, **columns)``, as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

ARGUMENTS = ("prompts", "completions", "references")


def by_keyword(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature when it is called by keyword (it names ``completions``), else None."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    param = sig.parameters.get("completions")
    return sig if param is not None and param.kind is not param.POSITIONAL_ONLY else None


def call_reward(fn: Callable[..., Any], prompts: list[Any], completions: list[str], references: list[Any] | None,
                columns: dict[str, Any]) -> Any:
    """Call ``fn`` by keyword or positionally (see the module doc); a missing argument is named up front.

    Raises ``RewardError`` without the reward's name: the validating wrapper that calls this adds it.
    """
    from rewards.registry import RewardError

    sig = by_keyword(fn)
    if sig is None:
        return fn(prompts, completions, references, **columns)
    given = {"prompts": prompts, "completions": completions, "references": references, **columns}
    params = sig.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        given = {k: v for k, v in given.items() if k in sig.parameters}
    needed = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [name for name in needed if name not in given]
    if missing:
        raise RewardError(f"it takes {', '.join(map(repr, missing))}, which is neither an argument "
                          f"({', '.join(ARGUMENTS)}) nor a dataset column (columns: {sorted(columns)}); "
                          "put it in each Example's meta")
    return fn(**given)
