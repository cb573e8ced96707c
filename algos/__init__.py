"""Learners: one Policy (model + tokenizer) and SFT, DPO, PPO, GRPO, GRAO behind one Agent interface."""

from algos import losses
from algos.agent import (
    Agent,
    AgentConfig,
    AlgorithmNotFound,
    Batch,
    ConfigError,
    StepTotals,
    get_algorithm,
    list_algorithms,
    make,
    register,
    unregister,
)
from algos.checker import AgentCheckError, check_agent
from algos.dpo import DPO, DPOConfig
from algos.grao import GRAO, GRAOConfig
from algos.grpo import GRPO, GRPOConfig
from algos.policy import CheckpointError, ContextLengthError, EncodedBatch, ModelPathError, Policy, Samples
from algos.ppo import PPO, PPOConfig
from algos.rollout import Rollout, collect
from algos.sft import SFT, SFTConfig

__all__ = [
    "DPO", "GRAO", "GRPO", "PPO", "SFT", "Agent", "AgentCheckError", "AgentConfig", "AlgorithmNotFound", "Batch",
    "CheckpointError", "ConfigError", "ContextLengthError", "DPOConfig", "EncodedBatch", "GRAOConfig", "GRPOConfig",
    "ModelPathError", "PPOConfig", "Policy",
    "Rollout", "SFTConfig", "Samples", "StepTotals", "check_agent", "collect", "get_algorithm", "list_algorithms",
    "losses", "make", "register", "unregister",
]
