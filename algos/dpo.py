"""DPO (Rafailov et al., 2023): preference pairs against a frozen reference policy.

Loss types follow TRL: ``sigmoid`` (with optional conservative label smoothing) and ``ipo``.

On a multi-turn env (``textenv.MultiTurnEnv``) a pair is two trajectories of one episode (the same row
and state): preferred, the task's oracle playing it (``algos.multiturn.collect_demonstrations``);
rejected, the current policy playing it (one sampled episode), as SPIN (Chen et al., 2024) pairs a
demonstration with the model's own generation. Log-probs are sums over the assistant's tokens only (the
loss mask leaves out every environment and tool token). A pair whose policy episode did as well as the
oracle's stays in, as in SPIN: its trajectory still differs from the demonstration, and the objective is
to move the policy's trajectories towards the demonstrations; ``pairs/rejected_success_rate`` says how
often that happens. On several processes each plays its share of the pairs (``Agent.play``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algos import losses
from algos.agent import Agent, AgentConfig, Batch, StepTotals, register
from algos.multiturn import as_episodes, multiturn_env
from algos.policy import EncodedBatch, Policy
from textenv.multiturn import MultiTurnEnv


@dataclass
class DPOConfig(AgentConfig):
    lr: float = 1e-4
    batch_size: int = 16  # preference pairs per step
    beta: float = 0.1  # strength of the implicit KL to the reference policy
    loss_type: losses.DPOLossType = "sigmoid"  # TRL's names
    label_smoothing: float = 0.0  # conservative DPO: assumed probability that a pair is mislabelled

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require("beta", gt=0)
        self.require("label_smoothing", ge=0, lt=0.5)  # 0.5 would make chosen and rejected interchangeable


@register("dpo")
class DPO(Agent):
    config_class = DPOConfig
    multiturn = True

    def needs_reference(self) -> bool:
        return True

    def sequence_logps(self, policy: Policy, pairs: EncodedBatch) -> torch.Tensor:
        """``[pairs, 2]`` log-probs (chosen, rejected) of pairs stored as rows 2k, 2k+1, in one forward pass."""
        n = len(pairs) // 2
        order = torch.cat([torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)]).to(pairs.prompt_ids.device)
        token_logps = policy.logprobs(pairs[order])
        # IPO regresses on length-normalised log-ratios (as TRL does); sigmoid DPO on sums.
        normalize = self.config.loss_type == "ipo"
        return losses.sequence_logprob(token_logps, pairs.completion_mask[order], normalize=normalize).view(2, n).T

    def make_batch(self, env, rng: np.random.Generator) -> Batch:
        if (episodes_env := multiturn_env(env)) is not None:
            return self._trajectory_pairs(episodes_env, rng)
        pairs = env.sample(self.config.batch_size, rng, "train", require="pair")
        encoded = self.policy.encode([ex.prompt for ex in pairs for _ in (0, 1)],
                                     [text for ex in pairs for text in (ex.chosen, ex.rejected)])
        return Batch(len(pairs), pairs=encoded, ref_logps=self.sequence_logps(self.policy.reference(), encoded))

    def _trajectory_pairs(self, env: MultiTurnEnv, rng: np.random.Generator) -> Batch:
        seed = int(rng.integers(2**31))  # both trajectories of a pair play the same episode
        chosen, rejected = self.demonstrate(env, seed), self.play(env, seed, group_size=1)
        n = len(chosen.trajectories)
        pairs = as_episodes(self.policy, [t for pair in zip(chosen.trajectories, rejected.trajectories, strict=True)
                                          for t in pair], group_size=2).batch  # rows 2k, 2k+1
        stats = {**rejected.stats, "pairs/chosen_return": chosen.stats["reward/mean"],
                 "pairs/rejected_return": rejected.stats["reward/mean"],
                 "pairs/rejected_success_rate": rejected.stats["episodes/success_rate"]}
        return Batch(n, stats, pairs=pairs, ref_logps=self.sequence_logps(self.policy.reference(), pairs))

    def loss(self, batch: Batch, totals: StepTotals):
        logps, ref, cfg = self.sequence_logps(self.policy, batch.pairs), batch.ref_logps, self.config
        return losses.dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=cfg.beta,
                               loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing, num_pairs=totals.groups)
