"""SFT: completion-only cross-entropy on (prompt, reference answer) pairs from the env's task.

On a multi-turn env (``textenv.MultiTurnEnv``) the pairs are the task's oracle demonstrations
(``algos.multiturn.collect_demonstrations``): whole trajectories, trained on the assistant's tokens only
(the loss mask leaves out every environment and tool token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algos import losses
from algos.agent import Agent, AgentConfig, Batch, StepTotals, register
from algos.multiturn import multiturn_env
from algos.rollout import encode_references


@dataclass
class SFTConfig(AgentConfig):
    lr: float = 1e-4
    batch_size: int = 16


@register("sft")
class SFT(Agent):
    config_class = SFTConfig
    multiturn = True

    def make_batch(self, env, rng: np.random.Generator) -> Batch:
        if (episodes_env := multiturn_env(env)) is not None:
            demonstrations = self.demonstrate(episodes_env, int(rng.integers(2**31)))
            stats = {"demonstrations/return": demonstrations.stats["reward/mean"],  # the oracle's, not the model's
                     "demonstrations/turns": demonstrations.stats["episodes/turns"]}
            return Batch(len(demonstrations.trajectories), stats, answers=demonstrations.batch)
        examples = env.sample(self.config.batch_size, rng, "train", require="reference")
        return Batch(len(examples), answers=encode_references(self.policy, env, examples))

    def loss(self, batch: Batch, totals: StepTotals):  # token mean over the whole step, as TRL
        return losses.sft_loss(self.policy.logprobs(a := batch.answers), a.completion_mask, totals.tokens["answers"])
