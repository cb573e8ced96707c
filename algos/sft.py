"""SFT: completion-only cross-entropy on (prompt, reference answer) pairs from the env's task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algos import losses
from algos.agent import Agent, AgentConfig, Batch, StepTotals, register
from algos.rollout import encode_references


@dataclass
class SFTConfig(AgentConfig):
    lr: float = 1e-4
    batch_size: int = 16


@register("sft")
class SFT(Agent):
    config_class = SFTConfig

    def make_batch(self, env, rng: np.random.Generator) -> Batch:
        examples = env.sample(self.config.batch_size, rng, "train", require="reference")
        return Batch(len(examples), answers=encode_references(self.policy, env, examples))

    def loss(self, batch: Batch, totals: StepTotals):  # token mean over the whole step, as TRL
        return losses.sft_loss(self.policy.logprobs(a := batch.answers), a.completion_mask, totals.tokens["answers"])
