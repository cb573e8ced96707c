"""GRAO (Wang et al., 2025, arXiv 2508.07750): Group Relative Alignment Optimization.

For each prompt q with reference answer y, sample G outputs, score them and y with the task's
reward, and maximise in one loss (see ``losses.grao_loss`` and shared/GRAO.md)::

    (1/G) sum_i [ A_i l(o_i)  +  beta A_y l(y)  +  lambda A_i (l(o_i) - l(y)) ]

exploration, imitation weighted by how good y is against the group, and the alignment regulariser.
l is the length-normalised log-likelihood under the current policy; there is no ratio, clip, KL
term or reference *policy*. Each term can be switched off for the paper's ablations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from algos import losses
from algos.agent import Agent, AgentConfig, ConfigError, register
from algos.rollout import collect


@dataclass
class GRAOConfig(AgentConfig):
    lr: float = 1e-4
    group_size: int = 8  # G
    beta: float = 0.5  # imitation weight
    lam: float = 0.6  # alignment-regulariser weight
    group: Literal["samples+reference", "samples"] = "samples+reference"  # who sets mu and sigma
    eps: float = 1e-6
    imitation: bool = True
    exploration: bool = True
    regularizer: bool = True
    num_iterations: int = 1  # gradient steps per rollout (1 = on-policy, pi_old = pi)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 1 or self.num_iterations < 1:
            raise ConfigError("GRAOConfig.group_size and num_iterations must be >= 1")
        if not (self.imitation or self.exploration or self.regularizer):
            raise ConfigError("GRAOConfig: at least one of imitation, exploration, regularizer must be on")


@register("grao")
class GRAO(Agent):
    config_class = GRAOConfig

    def update(self, env, rng: np.random.Generator) -> dict[str, float]:
        cfg = self.config
        examples = env.sample(cfg.batch_size, rng, "train", require="reference")
        rollout = collect(self.policy, env, examples, cfg, rng, reference_rewards=True)
        s = rollout.samples
        reference = (*self.policy.encode_prompts([ex.prompt for ex in examples]),
                     *self.policy.encode_completions([ex.reference for ex in examples]))
        ref_mask = reference[3]
        for _ in range(cfg.num_iterations):
            sample_logps = self.policy.logprobs(s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                                temperature=cfg.temperature)
            ref_logps = self.policy.logprobs(*reference, temperature=cfg.temperature)
            loss, stats = losses.grao_loss(
                losses.sequence_logprob(sample_logps, s.completion_mask).view_as(rollout.rewards),
                losses.sequence_logprob(ref_logps, ref_mask), rollout.rewards, rollout.reference_rewards,
                beta=cfg.beta, lam=cfg.lam, group=cfg.group, eps=cfg.eps, imitation=cfg.imitation,
                exploration=cfg.exploration, regularizer=cfg.regularizer)
            grad_norm = self.optimize(loss)
        trained = float(s.completion_mask.sum() + ref_mask.sum()) * cfg.num_iterations
        return {"loss": loss.item(), **stats, **rollout.stats, "grad_norm": grad_norm,
                "reward/reference_mean": rollout.reference_rewards.mean().item(),
                "tokens/trained": trained}
