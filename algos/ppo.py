"""PPO for language models (Ziegler et al., 2019; Ouyang et al., 2022), in the CleanRL/TRL shape.

A scalar value head reads the policy's last hidden state (shared trunk). Per-token rewards are the
KL penalty to the frozen reference, -kl_coef * KL_t, plus the sequence reward on the last token;
GAE(gamma, lambda) turns them into advantages; several epochs of minibatches optimise the clipped
policy loss plus the clipped value loss. The KL coefficient is fixed or adapted towards a target KL.

``group_size=1`` (the default) is a real PPO step: the advantages come from GAE against the value head
and are whitened over the whole batch, never relative to a group, so one sample per prompt learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from algos import fields, losses
from algos.agent import Agent, AgentConfig, Batch, StepTotals, register
from algos.policy import EncodedBatch
from algos.rollout import collect


@dataclass
class PPOConfig(AgentConfig):
    lr: float = 1e-4
    group_size: int = 1  # samples per prompt (the benchmark sets it equal to GRPO/GRAO's G)
    num_iterations: int = 2  # PPO epochs over each rollout
    num_minibatches: int = 2  # optimiser steps per epoch
    clip_eps: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip around the rollout's values
    vf_coef: float = 0.5  # weight of the value loss
    gamma: float = 1.0  # discount over tokens
    lam: float = 0.95  # GAE lambda
    kl_coef: float = 0.05  # per-token KL penalty to the reference policy (initial value if adaptive)
    kl_kind: losses.KLKind = "k1"  # KL estimator
    target_kl: float | None = None  # adaptive KL controller (Ziegler et al.) when set
    kl_horizon: int = 10_000  # the adaptive controller's horizon, in samples
    whiten_rewards: bool = False  # rescale token rewards to unit variance, keeping their mean (TRL)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("group_size", ge=1)  # no group baseline here: the value head is the baseline
        self.require("clip_eps", gt=0, lt=1)  # the ratio is clipped below at 1 - clip_eps > 0
        for key in ("vf_clip", "target_kl"):
            self.require(key, gt=0)
        for key in ("vf_coef", "kl_coef"):
            self.require(key, ge=0)
        for key in ("gamma", "lam"):
            self.require(key, ge=0, le=1)
        self.require("kl_horizon", ge=1)


@register("ppo")
class PPO(Agent):
    config_class = PPOConfig

    def needs_reference(self) -> bool:
        return True

    def setup(self) -> None:
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
        """The adaptive KL coefficient of a saved run: a finite number >= 0 (a bad one names the key)."""
        self.kl_coef = fields.checked("kl_coef", state["kl_coef"], float, ValueError)
        fields.check_bounds("kl_coef", self.kl_coef, ValueError, ge=0)

    def policy_and_values(self, samples: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logps, hidden = self.policy.logprobs_and_hidden(samples, temperature=self.config.temperature)
        return logps, self.value_head(hidden.float()).squeeze(-1)

    def make_batch(self, env, rng: np.random.Generator) -> Batch:
        cfg = self.config
        examples = env.sample(cfg.batch_size, rng, "train")
        rollout = collect(self.policy, env, examples, cfg, rng, offset=self.engine.offset_of_share(len(examples)))
        samples, mask = rollout.samples.batch, rollout.samples.completion_mask
        old_logps, old_values = self.policy_and_values(samples)
        ref_logps = self.policy.reference().logprobs(samples, temperature=cfg.temperature)
        # Whitening spans the step's whole batch: computed on every rank's rows, this rank keeps its own.
        token_rewards, kl = self.engine.over_batch(
            partial(losses.ppo_token_rewards, kl_coef=self.kl_coef, kl_kind=cfg.kl_kind, whiten=cfg.whiten_rewards),
            rollout.rewards.flatten(), old_logps, ref_logps, mask)
        advantages, returns = losses.gae(token_rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = self.engine.over_batch(losses.masked_whiten, advantages, mask)
        sequence_kl = self.engine.gather(kl.sum(-1))  # per-sequence KL of the whole batch, as the controller uses
        mean_kl = sequence_kl.mean().item()
        if cfg.target_kl is not None:  # the next rollout's coefficient; this one's rewards are made
            self.kl_coef = losses.adaptive_kl_coef(self.kl_coef, mean_kl, cfg.target_kl, len(sequence_kl),
                                                   cfg.kl_horizon)
        stats = {**rollout.stats, "kl": mean_kl, "kl_coef": self.kl_coef, "score/mean": rollout.rewards.mean().item()}
        return Batch(len(rollout.examples), stats, samples=samples, old_logps=old_logps, old_values=old_values,
                     advantages=advantages, returns=returns)

    def loss(self, batch: Batch, totals: StepTotals):
        cfg, mask, tokens = self.config, batch.samples.completion_mask, totals.tokens["samples"]
        logps, values = self.policy_and_values(batch.samples)
        pg_loss, pg_stats = losses.ppo_policy_loss(logps, batch.old_logps, batch.advantages, mask,
                                                   clip_eps=cfg.clip_eps, num_tokens=tokens)
        vf_loss, vf_stats = losses.ppo_value_loss(values, batch.old_values, batch.returns, mask,
                                                  clip_eps=cfg.vf_clip, num_tokens=tokens)
        return pg_loss + cfg.vf_coef * vf_loss, {**pg_stats, **vf_stats}
