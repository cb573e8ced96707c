"""The batched API under any env a user hands to a learner, with the reward wrappers around it honoured.

Algorithms train through ``sample`` / ``score`` / ``reference_rewards`` (one reward call per batch),
which live on the innermost ``TextGenEnv``. Reaching it through ``env.unwrapped`` would silently skip
a ``TransformReward`` the user wrapped around the env, so ``batched(env)`` walks the wrapper chain
instead: reward wrappers are applied to every batched reward (in the order ``step`` applies them),
wrappers that cannot change a reward are passed through, and any other wrapper is refused by name.
A ``TextVectorEnv`` (``make_vec``) is accepted too: its sub-envs share one ``TextGenEnv``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics, TimeLimit

from textenv.env import TaskScoring, TextVectorEnv
from textenv.task import Example

# Episodes are one step long and these only watch or bound them: they never change a reward.
_PASSIVE = (OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics, TimeLimit)


def batched(env: Any) -> TaskScoring:
    """The ``TaskScoring`` env that ``env`` wraps, with ``env``'s reward wrappers applied to its rewards."""
    transforms: list[Callable[[np.ndarray], np.ndarray]] = []
    layer = env
    while not isinstance(layer, TaskScoring):
        if not isinstance(layer, gym.Wrapper | gym.vector.VectorWrapper | TextVectorEnv):
            raise TypeError(f"cannot train on {env!r}: {type(layer).__name__} is not a textenv environment "
                            f"(make one with textenv.make or textenv.make_vec)")
        if isinstance(layer, gym.RewardWrapper):
            transforms.append(np.vectorize(layer.reward, otypes=[np.float64]))
        elif isinstance(layer, gym.vector.VectorRewardWrapper):
            transforms.append(layer.rewards)
        elif not isinstance(layer, (*_PASSIVE, TextVectorEnv)):
            raise TypeError(
                f"cannot train on {env!r}: the batched training API cannot honour the wrapper "
                f"{type(layer).__name__}; pass the env without it, or change rewards with a gymnasium "
                f"RewardWrapper (e.g. TransformReward), which is applied to every batched reward")
        layer = layer.env
    return _Rewarded(layer, transforms[::-1]) if transforms else layer


class _Rewarded:
    """A ``TaskScoring`` env whose batched rewards pass through reward wrappers, innermost first."""

    def __init__(self, env: TaskScoring, transforms: list[Callable[[np.ndarray], np.ndarray]]):
        self._env, self._transforms = env, transforms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def _apply(self, rewards: np.ndarray) -> np.ndarray:
        for transform in self._transforms:
            rewards = np.asarray(transform(np.asarray(rewards, dtype=np.float64)), dtype=np.float64)
        return rewards

    def score(self, examples: Sequence[Example], completions: Sequence[str],
              completion_ids: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        total, components = self._env.score(examples, completions, completion_ids=completion_ids)
        return self._apply(total), components

    def reference_rewards(self, examples: Sequence[Example]) -> np.ndarray:
        return self._apply(self._env.reference_rewards(examples))
