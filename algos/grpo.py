"""GRPO (Shao et al., 2024, DeepSeekMath): group-relative advantages, clipped ratio, k3 KL.

``loss_type`` and ``scale_rewards`` use TRL's names. The KL coefficient defaults to 0.04, the
DeepSeekMath value, rather than TRL's current 0: the GRAO paper compares against GRPO as published,
and on tiny models the KL anchor keeps the policy from collapsing onto one degenerate answer.
Set ``beta=0`` for the Dr. GRPO / DAPO recipe (no reference copy is then made).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from algos import losses
from algos.agent import Agent, AgentConfig, ConfigError, register
from algos.rollout import collect


@dataclass
class GRPOConfig(AgentConfig):
    lr: float = 1e-4
    group_size: int = 8  # G samples per prompt
    beta: float = 0.04  # k3 KL to the reference policy
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # DAPO's clip-higher; None = symmetric
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = 1  # optimisation passes over each rollout (mu in the paper)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 1 or self.num_iterations < 1:
            raise ConfigError("GRPOConfig.group_size and num_iterations must be >= 1")
        if self.beta < 0 or self.clip_eps <= 0:
            raise ConfigError(f"GRPOConfig.beta must be >= 0 and clip_eps > 0, got {self.beta}, {self.clip_eps}")


@register("grpo")
class GRPO(Agent):
    config_class = GRPOConfig

    def setup(self) -> None:
        self.reference = self.policy.frozen_copy() if self.config.beta > 0 else None

    def update(self, env, rng: np.random.Generator) -> dict[str, float]:
        cfg = self.config
        rollout = collect(self.policy, env, env.sample(cfg.batch_size, rng, "train"), cfg, rng)
        s = rollout.samples
        batch = (s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)
        T = cfg.temperature  # log-probs of the distribution the samples came from
        advantages = losses.group_advantages(rollout.rewards, scale=cfg.scale_rewards).flatten()
        with torch.no_grad():
            ref_logps = self.reference.logprobs(*batch, temperature=T) if self.reference is not None else None
            old_logps = self.policy.logprobs(*batch, temperature=T) if cfg.num_iterations > 1 else None
        for _ in range(cfg.num_iterations):
            logps = self.policy.logprobs(*batch, temperature=T)
            loss, stats = losses.grpo_loss(
                logps, logps.detach() if old_logps is None else old_logps, advantages, s.completion_mask,
                ref_logps=ref_logps, beta=cfg.beta, clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                loss_type=cfg.loss_type, max_completion_length=cfg.max_new_tokens)
            grad_norm = self.optimize(loss)
        return {"loss": loss.item(), **stats, **rollout.stats, "grad_norm": grad_norm,
                "tokens/trained": float(s.completion_mask.sum()) * cfg.num_iterations}
