"""PPO for language models (Ziegler et al., 2019; Ouyang et al., 2022), in the CleanRL/TRL shape.

A scalar value head reads the policy's last hidden state (shared trunk). Per-token rewards are the
KL penalty to the frozen reference, -kl_coef * KL_t, plus the sequence reward on the last token;
GAE(gamma, lambda) turns them into advantages; several epochs of minibatches optimise the clipped
policy loss plus the clipped value loss. The KL coefficient is fixed or adapted towards a target KL.

``group_size=1`` (the default) is a real PPO step: the advantages come from GAE against the value head
and are whitened over the whole batch, never relative to a group, so one sample per prompt learns.

On a multi-turn env (``textenv.MultiTurnEnv``) a step plays ``batch_size`` groups of ``group_size``
episodes (``algos.multiturn``, ``max_new_tokens`` per turn) and the whole token trajectory is the
"completion": values, reference log-probs and the policy attend to the env's tokens, but only the
model's sampled tokens (the loss mask) are actions. They alone get the KL penalty, each turn's reward
(the final reward included in the last turn's) goes on that turn's last sampled token, and GAE runs
over the model's tokens packed together (``losses.packed_gae``), so a turn bootstraps from the value
after the env's reply and ``gamma``/``lam`` count model tokens, as in single-turn PPO. Whitening and
both losses span the loss mask (of every process's episodes, on several: ``Agent.play``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from algos import fields, losses
from algos.agent import Agent, AgentConfig, Batch, StepTotals, register
from algos.multiturn import multiturn_env
from algos.policy import EncodedBatch
from algos.rollout import collect
from textenv.multiturn import MultiTurnEnv


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
    multiturn = True

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
        if (episodes_env := multiturn_env(env)) is not None:
            return self._episodes_batch(episodes_env, rng)
        examples = env.sample(cfg.batch_size, rng, "train")
        rollout = collect(self.policy, env, examples, cfg, rng, offset=self.engine.offset_of_share(len(examples)))
        samples, mask = rollout.samples.batch, rollout.samples.completion_mask
        old_logps, old_values, ref_logps = self._score(samples)
        # Whitening spans the step's whole batch: computed on every rank's rows, this rank keeps its own.
        token_rewards, kl = self.engine.over_batch(
            partial(losses.ppo_token_rewards, kl_coef=self.kl_coef, kl_kind=cfg.kl_kind, whiten=cfg.whiten_rewards),
            rollout.rewards.flatten(), old_logps, ref_logps, mask)
        advantages, returns = losses.gae(token_rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        return self._batch(len(rollout.examples), rollout.stats, rollout.rewards, samples, old_logps, old_values,
                           advantages, returns, kl)

    def _episodes_batch(self, env: MultiTurnEnv, rng: np.random.Generator) -> Batch:
        cfg = self.config
        episodes = self.play(env, int(rng.integers(2**31)), cfg.group_size)
        samples, mask = episodes.batch, episodes.batch.completion_mask  # mask: the model's tokens only
        old_logps, old_values, ref_logps = self._score(samples)  # attending to the env's tokens too

        def token_rewards_of(logps, ref_logps, mask, turn_index, turn_rewards, turn_mask):  # [M, T] inputs first
            return losses.ppo_turn_token_rewards(turn_rewards, turn_mask, turn_index, logps, ref_logps, mask,
                                                 kl_coef=self.kl_coef, kl_kind=cfg.kl_kind, whiten=cfg.whiten_rewards)

        # Whitening spans the step's whole batch (over_batch pads other ranks' rows with zeros: masked out).
        token_rewards, kl = self.engine.over_batch(token_rewards_of, old_logps, ref_logps, mask, episodes.turn_index,
                                                   episodes.turn_rewards, episodes.turn_mask)
        advantages, returns = losses.packed_gae(token_rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        return self._batch(len(episodes.returns), episodes.stats, episodes.returns, samples, old_logps, old_values,
                           advantages, returns, kl)

    def _score(self, samples: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rollout's log-probs and values, and the reference's log-probs, as the samples were drawn."""
        old_logps, old_values = self.policy_and_values(samples)
        return old_logps, old_values, self.policy.reference().logprobs(samples, temperature=self.config.temperature)

    def _batch(self, groups: int, stats: dict[str, float], scores: torch.Tensor, samples: EncodedBatch,
               old_logps: torch.Tensor, old_values: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
               kl: torch.Tensor) -> Batch:
        """Whiten the advantages over the loss mask, step the KL controller, log, and pack the step's batch."""
        cfg, mask = self.config, samples.completion_mask
        advantages = self.engine.over_batch(losses.masked_whiten, advantages, mask)
        sequence_kl = self.engine.gather(kl.sum(-1))  # per-sequence KL of the whole batch, as the controller uses
        mean_kl = sequence_kl.mean().item()
        if cfg.target_kl is not None:  # the next rollout's coefficient; this one's rewards are made
            self.kl_coef = losses.adaptive_kl_coef(self.kl_coef, mean_kl, cfg.target_kl, len(sequence_kl),
                                                   cfg.kl_horizon)
        stats = {**stats, "kl": mean_kl, "kl_coef": self.kl_coef, "score/mean": scores.mean().item()}
        return Batch(groups, stats, samples=samples, old_logps=old_logps, old_values=old_values,
                     advantages=advantages, returns=returns)

    def loss(self, batch: Batch, totals: StepTotals):
        cfg, mask, tokens = self.config, batch.samples.completion_mask, totals.tokens["samples"]
        logps, values = self.policy_and_values(batch.samples)
        pg_loss, pg_stats = losses.ppo_policy_loss(logps, batch.old_logps, batch.advantages, mask,
                                                   clip_eps=cfg.clip_eps, num_tokens=tokens)
        vf_loss, vf_stats = losses.ppo_value_loss(values, batch.old_values, batch.returns, mask,
                                                  clip_eps=cfg.vf_clip, num_tokens=tokens)
        return pg_loss + cfg.vf_coef * vf_loss, {**pg_stats, **vf_stats}
