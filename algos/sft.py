"""SFT: completion-only cross-entropy on (prompt, reference answer) pairs from the env's task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algos import losses
from algos.agent import Agent, AgentConfig, register


@dataclass
class SFTConfig(AgentConfig):
    lr: float = 1e-4
    batch_size: int = 16


@register("sft")
class SFT(Agent):
    config_class = SFTConfig

    def update(self, env, rng: np.random.Generator) -> dict[str, float]:
        examples = env.sample(self.config.batch_size, rng, "train", require="reference")
        logps, mask = self.policy.text_logprobs([ex.prompt for ex in examples],
                                                [ex.reference for ex in examples])
        loss, stats = losses.sft_loss(logps, mask)
        grad_norm = self.optimize(loss)
        return {"loss": loss.item(), **stats, "grad_norm": grad_norm, "tokens/trained": float(mask.sum())}
