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
    generation_chunk: int | None


def collect(policy: Policy, env: TextGenEnv, examples: list[Example], config: SamplingSettings,
            rng: np.random.Generator, answer_rewards: bool = False, offset: int = 0) -> Rollout:
    """Sample ``config.group_size`` completions per example and score them all with one reward call.

    The sampling seed is drawn from ``rng``, so a step's rollout is a function of the step's generator.
    Prompts are generated ``config.generation_chunk`` at a time (all at once when None), each chunk
    seeded by its offset in the step's batch: a prompt's samples are then the same whichever process
    generates it, whenever the chunks fall alike. ``offset`` is the index of ``examples[0]`` in the step's
    batch (this rank's share starts there: ``Engine.offset_of_share``). ``answer_rewards`` also scores
    each example's reference answer (GRAO's R(y)).
    """
    group_size, chunk = config.group_size, config.generation_chunk or len(examples)
    seed = int(rng.integers(2**31))
    samples = policy.generate([ex.prompt for ex in examples], num_samples=group_size,
                              temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                              repetition_penalty=config.repetition_penalty, max_new_tokens=config.max_new_tokens,
                              batch_size=chunk,
                              seed=[chunk_seed(seed, offset + start) for start in range(0, len(examples), chunk)])
    repeated = [ex for ex in examples for _ in range(group_size)]
    sampled_ids = [ids[mask.bool()].tolist() for ids, mask in zip(samples.completion_ids, samples.completion_mask,
                                                                   strict=True)]  # EOS included, as TRL's
    total, components = env.score(repeated, samples.texts, completion_ids=sampled_ids)
    rewards = torch.as_tensor(total, dtype=torch.float32, device=policy.device).view(len(examples), group_size)
    answers = None
    if answer_rewards:
        answers = torch.as_tensor(env.reference_rewards(examples), dtype=torch.float32, device=policy.device)
    return Rollout(examples, samples, rewards, answers, rollout_stats(rewards, samples, components))


def chunk_seed(step_seed: int, offset: int) -> int:
    """The sampling seed of the chunk of prompts that starts at ``offset`` in a step's batch."""
    return step_seed if offset == 0 else int(np.random.default_rng([step_seed, offset]).integers(2**31))


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
