"""DPO (Rafailov et al., 2023): preference pairs against a frozen reference policy.

Loss types follow TRL: ``sigmoid`` (with optional conservative label smoothing) and ``ipo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from algos import losses
from algos.agent import Agent, AgentConfig, ConfigError, register


@dataclass
class DPOConfig(AgentConfig):
    lr: float = 1e-4
    batch_size: int = 16
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ConfigError(f"DPOConfig.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"DPOConfig.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@register("dpo")
class DPO(Agent):
    config_class = DPOConfig

    def setup(self) -> None:
        self.reference = self.policy.frozen_copy()

    def sequence_logps(self, policy, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, int]:
        # IPO regresses on length-normalised log-ratios (as TRL does); sigmoid DPO on sums.
        token_logps, mask = policy.text_logprobs(prompts, completions)
        normalize = self.config.loss_type == "ipo"
        return losses.sequence_logprob(token_logps, mask, normalize=normalize), int(mask.sum())

    def update(self, env, rng: np.random.Generator) -> dict[str, float]:
        pairs = env.sample(self.config.batch_size, rng, "train", require="pair")
        prompts = [ex.prompt for ex in pairs] * 2
        completions = [ex.chosen for ex in pairs] + [ex.rejected for ex in pairs]
        n = len(pairs)
        policy_logps, tokens = self.sequence_logps(self.policy, prompts, completions)
        with torch.no_grad():
            ref_logps, _ = self.sequence_logps(self.reference, prompts, completions)
        loss, stats = losses.dpo_loss(policy_logps[:n], policy_logps[n:], ref_logps[:n], ref_logps[n:],
                                      beta=self.config.beta, loss_type=self.config.loss_type,
                                      label_smoothing=self.config.label_smoothing)
        grad_norm = self.optimize(loss)
        return {"loss": loss.item(), **stats, "grad_norm": grad_norm, "tokens/trained": float(tokens)}
