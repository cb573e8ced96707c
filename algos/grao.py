"""GRAO (Wang et al., 2025, arXiv 2508.07750): Group Relative Alignment Optimization.

For each prompt q with reference answer y, sample G outputs, score them and y with the task's
reward, and maximise in one loss (see ``losses.grao_loss`` and docs/GRAO.md)::

    (1/G) sum_i [ A_i l(o_i)  +  beta A_y l(y)  +  lambda A_i (l(o_i) - l(y)) ]

exploration, imitation weighted by how good y is against the group, and the alignment regulariser.
l is the length-normalised log-likelihood under the current policy; there is no ratio, clip, KL
term or reference *policy*. Each term can be switched off for the paper's ablations.

On a multi-turn env (``textenv.MultiTurnEnv``) a step plays ``batch_size`` groups of ``group_size``
episodes (``algos.multiturn``) and the task's oracle plays each group's episode once more: that
demonstration trajectory is y, and R(y) its return. l(.) is then the mean log-prob of the model's own
tokens of a trajectory (the loss mask leaves out every environment and tool token). The advantages stay
outcome advantages of whole episodes: GRAO's three terms are defined on sequence-level A_i and A_y.
On several processes each plays its share of the groups (``Agent.play``).

``group_size=1`` is allowed with the default ``group="samples+reference"``: mu and sigma are then over
the sample and y, so the sample is scored against the reference and the step learns. With
``group="samples"`` one sample has advantage 0, so the config refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from algos import losses
from algos.agent import Agent, AgentConfig, Batch, ConfigError, StepTotals, register
from algos.multiturn import multiturn_env
from algos.rollout import collect, encode_references
from textenv.multiturn import MultiTurnEnv


@dataclass
class GRAOConfig(AgentConfig):
    lr: float = 1e-4
    group_size: int = 8  # G samples per prompt
    beta: float = 0.5  # imitation weight
    lam: float = 0.6  # alignment-regulariser weight
    group: losses.GRAOGroup = "samples+reference"  # whose rewards set mu and sigma
    eps: float = 1e-6  # added to sigma; an all-equal group gets zero advantages
    imitation: bool = True  # the beta term (off: the paper's ablation)
    exploration: bool = True  # the A_i l(o_i) term
    regularizer: bool = True  # the lambda term
    score_temperature: Literal["sampling"] | float = "sampling"  # l(.) at the sampling temperature, or e.g. 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        # One sample is a group when the reference answer is in it: then mu and sigma are over two rewards
        # and the sample is scored against y. Without y, one sample's advantage is always 0.
        if self.group == "samples":
            self.require("group_size", ge=2, why="with group='samples' the advantages are relative to the "
                         "samples alone, so one sample has advantage 0 and every step's loss would be 0")
        self.require("group_size", ge=1)
        for key in ("beta", "lam"):
            self.require(key, ge=0)
        self.require("eps", gt=0)
        if self.score_temperature != "sampling":
            self.require("score_temperature", gt=0)
        if not (self.imitation or self.exploration or self.regularizer):
            raise ConfigError("GRAOConfig: at least one of imitation, exploration, regularizer must be on")


@register("grao")
class GRAO(Agent):
    config_class = GRAOConfig
    multiturn = True

    def make_batch(self, env, rng: np.random.Generator) -> Batch:
        cfg = self.config
        if (episodes_env := multiturn_env(env)) is not None:
            return self._episodes_batch(episodes_env, rng)
        examples = env.sample(cfg.batch_size, rng, "train", require="reference")
        rollout = collect(self.policy, env, examples, cfg, rng, answer_rewards=True,
                          offset=self.engine.offset_of_share(len(examples)))
        answers = encode_references(self.policy, env, examples)
        stats = {**rollout.stats, "reward/reference_mean": rollout.answer_rewards.mean().item()}
        return Batch(len(examples), stats, samples=rollout.samples.batch, answers=answers,
                     rewards=rollout.rewards, answer_rewards=rollout.answer_rewards)

    def _episodes_batch(self, env: MultiTurnEnv, rng: np.random.Generator) -> Batch:
        cfg = self.config
        seed = int(rng.integers(2**31))  # the episodes and the demonstrations play the same rows and states
        episodes, demonstrations = self.play(env, seed, cfg.group_size), self.demonstrate(env, seed)
        answer_rewards = demonstrations.returns.view(-1)
        stats = {**episodes.stats, "reward/reference_mean": answer_rewards.mean().item()}
        return Batch(len(answer_rewards), stats, samples=episodes.batch, answers=demonstrations.batch,
                     rewards=episodes.returns, answer_rewards=answer_rewards)

    def loss(self, batch: Batch, totals: StepTotals):
        cfg, samples, answers = self.config, batch.samples, batch.answers
        temperature = cfg.temperature if cfg.score_temperature == "sampling" else cfg.score_temperature
        sample_logps, answer_logps = (self.policy.logprobs(b, temperature) for b in (samples, answers))
        return losses.grao_loss(
            losses.sequence_logprob(sample_logps, samples.completion_mask).view_as(batch.rewards),
            losses.sequence_logprob(answer_logps, answers.completion_mask), batch.rewards, batch.answer_rewards,
            beta=cfg.beta, lam=cfg.lam, group=cfg.group, eps=cfg.eps, imitation=cfg.imitation,
            exploration=cfg.exploration, regularizer=cfg.regularizer, num_groups=totals.groups)
