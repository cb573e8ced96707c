"""Shared rollout for the online algorithms: G samples per prompt, one reward call, padded tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from algos.policy import Policy, Samples
from textenv import Example, TextGenEnv


@dataclass
class Rollout:
    """A batch of B prompts with G sampled completions each (sample ``b*G + i`` is ``o_i`` of prompt ``b``)."""

    examples: list[Example]  # [B]
    samples: Samples  # M = B*G rows
    rewards: torch.Tensor  # [B, G]
    answer_rewards: torch.Tensor | None  # [B], R(y) of the reference answers
    stats: dict[str, float]

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]


class SamplingSettings(Protocol):
    """What ``collect`` reads from an algorithm's config."""

    group_size: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_new_tokens: int


def collect(policy: Policy, env: TextGenEnv, examples: list[Example], config: SamplingSettings,
            rng: np.random.Generator, answer_rewards: bool = False) -> Rollout:
    """Sample ``config.group_size`` completions per example and score them all with one reward call.

    The sampling seed is drawn from ``rng``, so a step's rollout is a function of the step's generator.
    ``answer_rewards`` also scores each example's reference answer (GRAO's R(y)).
    """
    group_size = config.group_size
    samples = policy.generate([ex.prompt for ex in examples], num_samples=group_size,
                              temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                              repetition_penalty=config.repetition_penalty, max_new_tokens=config.max_new_tokens,
                              seed=int(rng.integers(2**31)))
    repeated = [ex for ex in examples for _ in range(group_size)]
    total, components = env.score(repeated, samples.texts)
    rewards = torch.as_tensor(total, dtype=torch.float32, device=policy.device).view(len(examples), group_size)
    answers = None
    if answer_rewards:
        answers = torch.as_tensor(env.reference_rewards(examples), dtype=torch.float32, device=policy.device)
    return Rollout(examples, samples, rewards, answers, rollout_stats(rewards, samples, components))


def rollout_stats(rewards: torch.Tensor, samples: Samples,
                  components: dict[str, np.ndarray]) -> dict[str, float]:
    """What an RL practitioner watches: reward spread, dead groups, lengths, length-cap hits."""
    lengths = samples.lengths.float()
    stats = {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std(unbiased=False).item(),
        "reward/group_std": rewards.std(dim=1, unbiased=False).mean().item(),
        # Groups whose rewards are all equal have zero group-relative advantage: no signal.
        "reward/frac_equal_groups": (rewards.max(1).values == rewards.min(1).values).float().mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/clipped_ratio": samples.truncated.float().mean().item(),
        "tokens/generated": lengths.sum().item(),
    }
    if len(components) > 1:
        stats.update({f"reward/{k}": float(np.mean(v)) for k, v in components.items()})
    return stats
