"""Reward functions with one signature: ``fn(prompts, completions, references=None, **columns)``."""

from rewards.registry import (
    RewardError,
    ValidatedReward,
    check_values,
    get,
    list_rewards,
    register,
    resolve,
    unregister,
)

__all__ = [
    "RewardError",
    "ValidatedReward",
    "check_values",
    "get",
    "list_rewards",
    "register",
    "resolve",
    "unregister",
]
