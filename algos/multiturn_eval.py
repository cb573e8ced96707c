"""Evaluation on a multi-turn env: one episode per eval row, the same rows and seeds every call.

``evaluate_episodes(policy, env, num_prompts=N, seed=s, ...)`` plays row ``i`` of the eval split for
``i < N`` (all rows when the split is shorter, as a single-turn eval takes the first N prompts), one
episode each, through ``algos.multiturn.collect_episodes(group_size=1, indices=range(N))``. The env of row
``i`` is reset with ``episode_seed(s, i)`` and turn ``k`` samples with ``turn_seed(s, k)``, so two policies
evaluated with one ``seed`` play the same rows from the same env states: their episodes pair up one to
one, and the benchmark's paired statistics read them as they read the prompts of a single-turn eval.

Every metric is the mean over episodes of a per-episode value, and each record carries that value under
the metric's name, so the table's mean and the paired differences measure the same quantity:

    reward        the episode's return (the sum of its per-turn and final rewards): the main metric
    success_rate  1 when the episode terminated (the task ended, not the turn limit) with a positive return
    turns         assistant turns played
    invalid_rate  the share of the episode's turns that were invalid actions (0 for an episode of no turns)
    tool_calls    tool calls made
    tool_success  the share of the episode's tool calls that did not come back as an error; only episodes
                  that called a tool have one (None otherwise), and the metric exists only when some did
    nag           with ``base_records`` (the base model's records of the same call): the sign of the
                  return's gain over the base model's episode on the same row, as NAG is for one turn

Per-episode means, not pooled ratios: ``invalid_rate`` weighs each episode the same however many turns it
played (``algos.multiturn.episode_stats``' ``turns/invalid_rate`` pools the turns of a training batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from algos.multiturn import Trajectory, collect_episodes, episode_seed, multiturn_env
from algos.policy import Policy
from textenv.multiturn import MultiTurnEnv, render_conversation

EPISODE_METRICS = ("reward", "success_rate", "turns", "invalid_rate", "tool_calls", "tool_success")
TIE_TOL = 1e-9  # returns this close are a tie for NAG (as textenv.metrics)


def eval_rows(env: Any, split: str = "eval", num_prompts: int | None = None) -> int:
    """How many rows an eval of ``num_prompts`` plays: the first ``num_prompts`` of ``split``, at most all."""
    rows = len(_env(env).task.split(split))
    return rows if num_prompts is None else min(int(num_prompts), rows)


def _env(env: Any) -> MultiTurnEnv:
    inner = multiturn_env(env)
    if inner is None:
        raise TypeError(f"evaluate_episodes needs a multi-turn env (textenv.MultiTurnEnv), got {type(env).__name__}")
    return inner


def evaluate_episodes(policy: Policy, env: Any, *, split: str = "eval", num_prompts: int | None = None,
                      seed: int = 0, base_records: Sequence[dict[str, Any]] | None = None,
                      max_new_tokens: int = 16, temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0,
                      repetition_penalty: float = 1.0, greedy: bool = False
                      ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The metrics (see the module doc) and one record per episode of ``policy`` playing the first
    ``num_prompts`` rows of ``split`` of ``env``'s task, ``max_new_tokens`` per turn.

    A record holds ``index`` (the row), ``prompt`` (the first messages, rendered), ``completion`` (the rest
    of the conversation, rendered), every metric's per-episode value, and the counts behind them
    (``invalid_actions``, ``tool_errors``, ``terminated``, ``context_full``). ``base_records`` (from the same
    call on the base model) must hold the same rows; they add ``nag``.
    """
    template = _env(env)
    n = eval_rows(template, split, num_prompts)
    if n < 1:
        raise ValueError(f"{template.env_id}: evaluate_episodes needs num_prompts >= 1, got {num_prompts!r}")
    if base_records is not None and len(base_records) != n:
        raise ValueError(f"{template.env_id}: {len(base_records)} base records for {n} eval episodes; evaluate the "
                         "base model with the same num_prompts and split")

    def fresh() -> MultiTurnEnv:  # one task, the template's episode limits
        return MultiTurnEnv(template.task, split=split, max_length=template.action_space.max_length,
                            max_turns=template.max_turns,
                            max_observation_length=template.observation_space.max_length)

    indices = list(range(n))
    episodes = collect_episodes(policy, [fresh() for _ in indices], group_size=1, num_prompts=n, seed=seed,
                                split=split, indices=indices, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, greedy=greedy)
    records = []
    for i, trajectory in zip(indices, episodes.trajectories, strict=True):
        # collect_episodes reset row i's env with episode_seed(seed, i): the same reset gives its first messages.
        _, info = fresh().reset(seed=episode_seed(seed, i), options={"split": split, "index": i})
        records.append(episode_record(i, trajectory, info["messages"]))
    if base_records is not None:
        for i, (record, base) in enumerate(zip(records, base_records, strict=True)):
            if base.get("prompt") != record["prompt"] or not isinstance(base.get("reward"), int | float):
                raise ValueError(f"{template.env_id}: base record {i} is not the base model's episode on eval row {i} "
                                 f"(prompt {base.get('prompt')!r}, reward {base.get('reward')!r})")
            gain = record["reward"] - float(base["reward"])
            record["nag"] = 0.0 if abs(gain) <= TIE_TOL else float(np.sign(gain))
    return episode_metrics(records), records


def episode_record(index: int, trajectory: Trajectory, first_messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One episode's eval record (see ``evaluate_episodes``); ``first_messages`` are those its reset gave."""
    turns = trajectory.num_turns
    invalid = sum(trajectory.invalid)
    calls = int(trajectory.stats.get("tool_calls", 0))
    errors = int(trajectory.stats.get("tool_errors", 0))
    rest = trajectory.messages[len(first_messages):]
    return {
        "index": index, "prompt": render_conversation(first_messages),
        "completion": render_conversation(rest) if rest else "",
        "reward": trajectory.episode_return, "success_rate": float(trajectory.success), "turns": float(turns),
        "invalid_rate": invalid / turns if turns else 0.0, "tool_calls": float(calls),
        "tool_success": (calls - errors) / calls if calls else None,
        "invalid_actions": invalid, "tool_errors": errors, "terminated": trajectory.terminated,
        "context_full": trajectory.context_full,
    }


def episode_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean of each metric over the records that have it (``n``: the episodes); a metric no record has
    (``tool_success`` when no tool was called, ``nag`` without base records) is left out."""
    metrics = {"n": float(len(records))}
    for key in (*EPISODE_METRICS, "nag"):
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            metrics[key] = float(np.mean(values))
    return metrics
