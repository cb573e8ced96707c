"""GRPO (Shao et al., 2024, DeepSeekMath): group-relative advantages, clipped ratio, k3 KL.

``loss_type`` and ``scale_rewards`` use TRL's names. The KL coefficient defaults to 0.04, the
DeepSeekMath value, rather than TRL's current 0: the GRAO paper compares against GRPO as published,
and on tiny models the KL anchor keeps the policy from collapsing onto one degenerate answer.
Set ``beta=0`` for the Dr. GRPO / DAPO recipe (no reference copy is then made). ``group_size`` must be
at least 2: the advantages are rewards relative to the group's, so one sample alone never has any.

On a multi-turn env (``textenv.MultiTurnEnv``) a step plays ``batch_size`` groups of ``group_size``
episodes (``algos.multiturn``); each episode's return is its reward, and its whole token trajectory is
the "completion", with the loss mask on the sampled tokens only. ``max_new_tokens`` is then per turn
(``dr_grpo`` still divides by it, a constant). ``credit="per_turn"`` gives each turn's tokens the
group-relative advantage of that turn's discounted return-to-go instead (``losses.turn_advantages``,
discount ``turn_gamma``). On several processes each plays its share of the groups (``Agent.play``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from algos import losses
from algos.agent import Agent, AgentConfig, Batch, ConfigError, StepTotals, register
from algos.multiturn import multiturn_env
from algos.rollout import collect
from textenv.multiturn import MultiTurnEnv


@dataclass
class GRPOConfig(AgentConfig):
    lr: float = 1e-4
    group_size: int = 8  # G samples per prompt
    beta: float = 0.04  # k3 KL to the reference policy (0 = no reference model)
    clip_eps: float = 0.2  # ratio clip, lower side (and upper unless clip_eps_high is set)
    clip_eps_high: float | None = None  # DAPO's clip-higher; None = symmetric
    loss_type: losses.GRPOLossType = "grpo"  # how token losses are averaged (TRL's names)
    scale_rewards: losses.RewardScale = "group"  # the std that divides advantages
    credit: Literal["outcome", "per_turn"] = "outcome"  # multi-turn: one advantage per episode, or per turn
    turn_gamma: float = 1.0  # multi-turn, credit="per_turn": the discount of later turns' rewards

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("group_size", ge=2, why="advantages are relative to the group, so a group of one sample has "
                     "advantage 0 and every step's loss and gradient would be 0 (TRL refuses it too)")
        self.require("beta", ge=0)
        self.require("clip_eps", gt=0, lt=1)  # the ratio is clipped below at 1 - clip_eps > 0
        self.require("clip_eps_high", gt=0)
        self.require("turn_gamma", ge=0, le=1)
        if self.credit not in ("outcome", "per_turn"):
            raise ConfigError(f"GRPOConfig: credit must be 'outcome' or 'per_turn', got {self.credit!r}")


@register("grpo")
class GRPO(Agent):
    config_class = GRPOConfig
    multiturn = True

    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def make_batch(self, env, rng: np.random.Generator) -> Batch:
        cfg = self.config
        if (episodes_env := multiturn_env(env)) is not None:
            return self._episodes_batch(episodes_env, rng)
        examples = env.sample(cfg.batch_size, rng, "train")
        rollout = collect(self.policy, env, examples, cfg, rng, offset=self.engine.offset_of_share(len(examples)))
        advantages = self.engine.over_batch(partial(losses.group_advantages, scale=cfg.scale_rewards), rollout.rewards)
        return self._batch(len(rollout.examples), rollout.stats, rollout.samples.batch, advantages.flatten())

    def _episodes_batch(self, env: MultiTurnEnv, rng: np.random.Generator) -> Batch:
        cfg = self.config
        episodes = self.play(env, int(rng.integers(2**31)), cfg.group_size)
        if cfg.credit == "outcome":
            advantages = self.engine.over_batch(partial(losses.group_advantages, scale=cfg.scale_rewards),
                                                episodes.returns).flatten()
        else:
            per_turn = self.engine.over_batch(
                partial(losses.turn_advantages, group_size=cfg.group_size, gamma=cfg.turn_gamma,
                        scale=cfg.scale_rewards), episodes.turn_rewards, episodes.turn_mask)
            advantages = losses.per_turn_to_tokens(per_turn, episodes.turn_index)  # [M, T]: each token its turn's
        return self._batch(len(episodes.returns), episodes.stats, episodes.batch, advantages)

    def _batch(self, groups: int, stats: dict[str, float], samples, advantages) -> Batch:
        cfg, temperature = self.config, self.config.temperature  # score as the samples were drawn
        return Batch(
            groups, stats, samples=samples, advantages=advantages,
            ref_logps=self.policy.reference().logprobs(samples, temperature) if cfg.beta > 0 else None,
            old_logps=self.policy.logprobs(samples, temperature) if cfg.num_iterations > 1 else None)

    def loss(self, batch: Batch, totals: StepTotals):
        cfg, mask = self.config, batch.samples.completion_mask
        logps = self.policy.logprobs(batch.samples, cfg.temperature)
        old_logps = logps.detach() if batch.old_logps is None else batch.old_logps
        return losses.grpo_loss(
            logps, old_logps, batch.advantages, mask, ref_logps=batch.ref_logps, beta=cfg.beta,
            clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high, loss_type=cfg.loss_type,
            max_completion_length=cfg.max_new_tokens, num_sequences=totals.rows["samples"],
            num_tokens=totals.tokens["samples"])
