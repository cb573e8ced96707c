"""PPO for language models (Ziegler et al., 2019; Ouyang et al., 2022), in the CleanRL/TRL shape.

A scalar value head reads the policy's last hidden state (shared trunk). Per-token rewards are the
KL penalty to the frozen reference, -kl_coef * KL_t, plus the sequence reward on the last token;
GAE(gamma, lambda) turns them into advantages; several epochs of minibatches optimise the clipped
policy loss plus the clipped value loss. The KL coefficient is fixed or adapted towards a target KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from algos import losses
from algos.agent import Agent, AgentConfig, ConfigError, register
from algos.rollout import collect


@dataclass
class PPOConfig(AgentConfig):
    lr: float = 1e-4
    group_size: int = 1  # samples per prompt (the benchmark sets it equal to GRPO/GRAO's G)
    ppo_epochs: int = 2
    num_minibatches: int = 2
    clip_eps: float = 0.2
    vf_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_kind: Literal["k1", "k3", "abs", "mse"] = "k1"
    target_kl: float | None = None  # adaptive KL controller (Ziegler et al.) when set
    kl_horizon: int = 10_000
    whiten_rewards: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("group_size", "ppo_epochs", "num_minibatches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"PPOConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.kl_coef < 0 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError("PPOConfig: kl_coef must be >= 0 and gamma, lam in [0, 1]")


@register("ppo")
class PPO(Agent):
    config_class = PPOConfig

    def setup(self) -> None:
        self.reference = self.policy.frozen_copy()
        hidden = self.policy.model.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1).to(self.policy.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.kl_coef = self.config.kl_coef

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"value_head": self.value_head}

    def state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef}

    def load_state(self, state: dict[str, Any]) -> None:
        self.kl_coef = state["kl_coef"]

    def policy_and_values(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        logps, hidden = self.policy.logprobs(*batch, return_hidden=True, temperature=self.config.temperature)
        return logps, self.value_head(hidden.float()).squeeze(-1)

    def update(self, env, rng: np.random.Generator) -> dict[str, float]:
        cfg = self.config
        rollout = collect(self.policy, env, env.sample(cfg.batch_size, rng, "train"), cfg, rng)
        s = rollout.samples
        batch = (s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)
        mask = s.completion_mask
        scores = rollout.rewards.flatten()
        if cfg.whiten_rewards and scores.numel() > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        with torch.no_grad():
            old_logps, old_values = self.policy_and_values(batch)
            ref_logps = self.reference.logprobs(*batch, temperature=cfg.temperature)
            kl = losses.kl_penalty(old_logps, ref_logps, kind=cfg.kl_kind) * mask
            token_rewards = -self.kl_coef * kl
            last = (mask.sum(-1) - 1).clamp(min=0)
            token_rewards[torch.arange(len(last), device=last.device), last] += scores
            advantages, returns = losses.gae(token_rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
            advantages = losses.masked_whiten(advantages, mask)

        n = mask.shape[0]
        minibatch = max(1, n // cfg.num_minibatches)
        for _ in range(cfg.ppo_epochs):
            order = torch.as_tensor(rng.permutation(n), device=mask.device)
            for start in range(0, n, minibatch):
                idx = order[start:start + minibatch]
                logps, values = self.policy_and_values(tuple(t[idx] for t in batch))
                pg_loss, pg_stats = losses.ppo_policy_loss(logps, old_logps[idx], advantages[idx], mask[idx],
                                                           clip_eps=cfg.clip_eps)
                vf_loss, vf_stats = losses.ppo_value_loss(values, old_values[idx], returns[idx], mask[idx],
                                                          clip_eps=cfg.vf_clip)
                loss = pg_loss + cfg.vf_coef * vf_loss
                grad_norm = self.optimize(loss)

        mean_kl = (kl.sum(-1)).mean().item()  # per-sequence KL, as the adaptive controller uses
        if cfg.target_kl is not None:
            error = float(np.clip(mean_kl / cfg.target_kl - 1, -0.2, 0.2))
            self.kl_coef *= 1 + error * n / cfg.kl_horizon
        return {"loss": loss.item(), **pg_stats, **vf_stats, **rollout.stats, "grad_norm": grad_norm,
                "kl": mean_kl, "kl_coef": self.kl_coef, "score/mean": rollout.rewards.mean().item(),
                "tokens/trained": float(mask.sum()) * cfg.ppo_epochs}
