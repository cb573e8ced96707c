"""Reward functions with one signature: ``fn(prompts, completions, references=None, **columns)``.

Importing the package registers every built-in family: verifiable ("exact_match", "numeric",
"regex", "keywords", "instructions"), lexicon ("vader"), metrics ("rouge_l", "bleu"), learned ("bradley_terry",
"sequence_classifier"), judges ("pairwise_judge") and composites ("weighted_sum",
"length_penalty", "scaled", "clipped").
"""

from rewards import (  # importing registers the families
    compose,
    instructions,
    judge,
    learned,
    lexicon,
    metrics,
    verifiable,
)
from rewards.compose import Clipped, LengthPenalty, Scaled, WeightedSum, as_reward
from rewards.judge import PairwiseJudge
from rewards.learned import (
    BradleyTerryRewardModel,
    BTConfig,
    SequenceClassifierReward,
    bradley_terry_loss,
    train_bradley_terry,
)
from rewards.registry import (
    RewardError,
    ValidatedReward,
    check_values,
    get,
    list_rewards,
    register,
    resolve,
    unregister,
)

__all__ = [
    "BTConfig",
    "BradleyTerryRewardModel",
    "Clipped",
    "LengthPenalty",
    "PairwiseJudge",
    "RewardError",
    "Scaled",
    "SequenceClassifierReward",
    "ValidatedReward",
    "WeightedSum",
    "as_reward",
    "bradley_terry_loss",
    "check_values",
    "compose",
    "get",
    "instructions",
    "judge",
    "learned",
    "lexicon",
    "list_rewards",
    "metrics",
    "register",
    "resolve",
    "train_bradley_terry",
    "unregister",
    "verifiable",
]
