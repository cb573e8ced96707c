"""How a reward function is called, and in which form it receives the completions: the one rule.

Three kinds of reward, told apart by their signature alone (never by trying a call):

- **TRL reward functions** name ``completions`` and not ``references``, e.g. ``def reward_len(completions,
  **kwargs)`` or ``def accuracy(completions, solution, **kwargs)``. They are called by keyword with what
  TRL's GRPOTrainer passes, in TRL's forms: for a conversational prompt each completion is a list with one
  assistant message, ``[{"role": "assistant", "content": text}]``, and each prompt the list of messages
  (a prompt whose final assistant message the model continued is passed without it, and that message's
  content leads the completion's, see ``rewards.messages.trl_reward_inputs``); for a text prompt both
  are text. ``completion_ids`` (the sampled token ids, one list per completion) come when a policy sampled
  the completions (the algorithms' rollout, ``TokenEnv``); every dataset column arrives by name, and
  ``references`` too when the function takes ``**kwargs``.
- **The project's signature** ``fn(prompts, completions, references=None, **columns)`` names ``references``
  (every built-in reward does): called by keyword, with completions and references as text.
- **Positional rewards** (no parameter named ``completions``): ``fn(prompts, completions, references,
  **columns)``, completions as text.

A keyword-called reward gets only the arguments it names unless it takes ``**kwargs``. Naming one that is
not there is an error that says which it is and where it would come from; TRL's trainer-only arguments
(``trainer_state``, ``log_extra``, ``log_metric``, ``environments``) do not exist outside its trainer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from rewards.messages import trl_reward_inputs

ARGUMENTS = ("prompts", "completions", "references")
TRL_TRAINER_ARGUMENTS = ("trainer_state", "log_extra", "log_metric", "environments")


def by_keyword(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature when it is called by keyword (it names ``completions``), else None."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    param = sig.parameters.get("completions")
    return sig if param is not None and param.kind is not param.POSITIONAL_ONLY else None


def is_trl_reward(fn: Callable[..., Any]) -> bool:
    """True for a TRL reward function: called by keyword, and it does not name ``references`` (see the module doc)."""
    sig = by_keyword(fn)
    return sig is not None and "references" not in sig.parameters


def _missing_message(name: str, trl: bool) -> str:
    if name == "completion_ids":
        return ("'completion_ids' (the sampled token ids), which only come with completions a policy sampled "
                "(the algorithms' rollout, TokenEnv), not with text given to step() or score()")
    if trl and name in TRL_TRAINER_ARGUMENTS:
        return f"{name!r}, which TRL's GRPOTrainer passes from inside its trainer; no trainer runs here"
    return f"{name!r}, which is neither an argument ({', '.join(ARGUMENTS)}) nor a dataset column"


def call_reward(fn: Callable[..., Any], prompts: list[Any], completions: list[str], references: list[Any] | None,
                columns: dict[str, Any], completion_ids: Sequence[Sequence[int]] | None = None) -> Any:
    """Call ``fn`` the way the module doc says, its arguments in the forms it expects.

    Raises ``RewardError`` without the reward's name: the validating wrapper that calls this adds it.
    """
    from rewards.registry import RewardError

    sig = by_keyword(fn)
    if sig is None:
        return fn(prompts, completions, references, **columns)
    given: dict[str, Any] = {"prompts": prompts, "completions": completions, "references": references, **columns}
    trl = "references" not in sig.parameters
    if trl:
        pairs = [trl_reward_inputs(p, c) for p, c in zip(prompts, completions, strict=True)]
        given["prompts"], given["completions"] = [p for p, _ in pairs], [c for _, c in pairs]
        if completion_ids is not None:
            given["completion_ids"] = [list(ids) for ids in completion_ids]
    params = sig.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        given = {k: v for k, v in given.items() if k in sig.parameters}
    needed = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [name for name in needed if name not in given]
    if missing:
        raise RewardError(f"it takes {'; and '.join(_missing_message(name, trl) for name in missing)} "
                          f"(columns: {sorted(columns)}); a dataset column reaches the reward from each Example's meta")
    return fn(**given)
