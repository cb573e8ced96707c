"""Evaluation metrics of the GRAO paper, computed from a task's reward.

- ``reward``: mean R(o).
- ``ras`` (relative adversarial score): the win rate against the reference answer y. With a pairwise
  judge R(o, y) in {-1, 0, 1} a win is R(o, y) > 0; with an absolute reward it is R(o) > R(y).
  ``tie`` is the rate of R(o, y) = 0, resp. R(o) = R(y) (the paper reports win and tie rates).
- ``nag`` (normalised alignment gain): the mean of sign(R(o_post) - R(o_pre)) against base
  completions of the same prompts; with a pairwise judge the judge compares the two directly,
  R(o_post, o_pre), as the paper's LLM judge does.

Each extra task metric m (``task.metrics``) gets the same treatment as keys ``m``, ``m_ras``,
``m_tie`` and ``m_nag``, and everything is repeated per subset (``task.subset_key``) as
``"<subset>/<key>"``, e.g. ``"helpful/ras"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards import ValidatedReward
from textenv.task import Example, Task, TaskError, columns_of, message_text

TIE_TOL = 1e-9


def _outcomes(reward: ValidatedReward, examples: Sequence[Example], completions: Sequence[str],
              base: Sequence[str] | None, where: str) -> dict[str, np.ndarray]:
    """Per-example arrays: value R(o), win/tie vs the reference (NaN without one), gain vs base."""
    prompts, cols = [ex.prompt for ex in examples], columns_of(examples)
    refs = [None if ex.reference is None else message_text(ex.reference) for ex in examples]
    has_ref = np.array([r is not None for r in refs])
    value = reward(prompts, completions, refs if has_ref.any() else None, where=where, **cols)
    out = {"value": value}
    if has_ref.any():
        idx = np.flatnonzero(has_ref)
        sub = [examples[i] for i in idx]
        if reward.pairwise:
            diff = value[idx]
        else:
            diff = value[idx] - reward.reference_rewards([ex.prompt for ex in sub], [refs[i] for i in idx],
                                                         where=where, **columns_of(sub))
        win, tie = np.full(len(examples), np.nan), np.full(len(examples), np.nan)
        win[idx], tie[idx] = diff > TIE_TOL, np.abs(diff) <= TIE_TOL
        out |= {"ras": win, "tie": tie}
    if base is not None:
        if reward.pairwise:
            gain = reward(prompts, completions, list(base), where=where, **cols)
        else:
            gain = value - reward(prompts, base, refs if has_ref.any() else None, where=where, **cols)
        out["nag"] = np.sign(np.where(np.abs(gain) <= TIE_TOL, 0.0, gain))
    return out


def _means(outcomes: dict[str, np.ndarray], prefix: str, rows: np.ndarray) -> dict[str, float]:
    out = {}
    for key, arr in outcomes.items():
        vals = arr[rows]
        vals = vals[~np.isnan(vals)]
        if vals.size:
            out[f"{prefix}{key}"] = float(vals.mean())
    return out


def evaluate_completions(env_or_task: Any, examples: Sequence[Example], completions: Sequence[str],
                         base_completions: Sequence[str] | None = None) -> dict[str, float]:
    """Mean reward, RAS, tie rate, NAG (with ``base_completions``), extra metrics, all per subset too.

    ``env_or_task`` is a ``Task`` or an env built on one (``env.unwrapped.task``). RAS and tie are
    computed over the examples that have a reference answer and are left out when none has.
    """
    return evaluate_examples(env_or_task, examples, completions, base_completions)[0]


def evaluate_examples(env_or_task: Any, examples: Sequence[Example], completions: Sequence[str],
                      base_completions: Sequence[str] | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``evaluate_completions``'s metrics plus one record per example, from the same reward calls.

    A record holds ``prompt``, ``reference``, ``completion``, ``subset`` (with a ``subset_key``) and the
    per-example value behind every metric: ``reward``, ``ras`` (1 win / 0 not), ``tie``, ``nag``
    (sign of the gain over the base completion), ``m``, ``m_ras``, ... ; None where undefined (no
    reference). Paired statistics over the same prompts need these, not the means.
    """
    env = getattr(env_or_task, "unwrapped", env_or_task)
    task = env if isinstance(env, Task) else getattr(env, "task", None)
    if not isinstance(task, Task):
        raise TypeError(f"evaluate_completions needs a Task or a textenv env, got {type(env_or_task).__name__}")
    where = getattr(env, "env_id", task.name)
    n = len(examples)
    if n == 0:
        raise TaskError(f"{where}: evaluate_completions got no examples")
    if len(completions) != n or (base_completions is not None and len(base_completions) != n):
        raise TaskError(f"{where}: got {len(completions)} completions and "
                        f"{None if base_completions is None else len(base_completions)} base completions "
                        f"for {n} examples")
    named = {"": task.reward, **{f"{k}_": m for k, m in task.metrics.items()}}
    outcomes: dict[str, np.ndarray] = {}
    for prefix, reward in named.items():
        for key, arr in _outcomes(reward, examples, completions, base_completions, where).items():
            name = (prefix + key) if key != "value" else (prefix.rstrip("_") or "reward")
            outcomes[name] = arr
    everything = np.arange(n)
    result = {"n": float(n), **_means(outcomes, "", everything)}
    labels = [None] * n
    if task.subset_key is not None:
        labels = [str(ex.meta[task.subset_key]) if task.subset_key in ex.meta else None for ex in examples]
        for label in sorted({s for s in labels if s is not None}):
            rows = np.array([i for i, s in enumerate(labels) if s == label])
            result[f"{label}/n"] = float(rows.size)
            result |= _means(outcomes, f"{label}/", rows)
    records = []
    for i, ex in enumerate(examples):
        record: dict[str, Any] = {"prompt": ex.prompt, "reference": ex.reference, "completion": completions[i]}
        if task.subset_key is not None:
            record["subset"] = labels[i]
        record |= {k: (None if np.isnan(v[i]) else float(v[i])) for k, v in outcomes.items()}
        records.append(record)
    return result, records
