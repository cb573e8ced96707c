"""Shared rollout for the online algorithms: G samples per prompt, one reward call, padded tensors; and the
encoding of reference answers (SFT's targets, GRAO's y) with errors that name the example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from algos.policy import ContextLengthError, EncodedBatch, Policy, Samples
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


def encode_references(policy: Policy, env: TextGenEnv, examples: list[Example], split: str = "train",
                      ) -> EncodedBatch:
    """The (prompt, reference answer) pairs of ``examples``, drawn from ``split``, as one batch.

    A pair too long for the model's context is an error naming the example's index in ``split``, with
    fixes that work for a reference: ``truncate_prompts`` only cuts prompts, so it cannot shorten one.
    """
    try:
        return policy.encode([ex.prompt for ex in examples], [ex.reference for ex in examples])
    except ContextLengthError as err:
        culprit = examples[err.row]
        index = next((i for i, ex in enumerate(env.task.split(split)) if ex is culprit), None)
        where = f"{env.env_id}: " + (f"{split} example {index}" if index is not None
                                     else f"the example in row {err.row} of the step's batch")
        if err.part == "completion":
            message = (f"{where} has a reference answer of {err.tokens} tokens (EOS included), which with its "
                       f"prompt cannot fit the model's context of {err.limit} positions. truncate_prompts cannot "
                       f"fix this (it only cuts prompts): shorten that reference or leave the example out of the "
                       f"task's {split!r} split, or use a model with a longer context")
        else:
            message = (f"{where}: its prompt and the longest reference answer of the step's batch take {err.tokens} "
                       f"tokens, past the model's context of {err.limit} positions; shorten that prompt or the "
                       f"long references, set truncate_prompts (cuts prompts from the left), or use a model with "
                       f"a longer context")
        raise ContextLengthError(message, err.part, err.row, err.tokens, err.limit) from err
