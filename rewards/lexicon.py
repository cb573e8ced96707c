"""Lexicon rewards: sentiment from VADER's hand-built lexicon (shipped inside vaderSentiment, offline)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rewards.registry import register


@lru_cache(maxsize=1)
def analyzer() -> SentimentIntensityAnalyzer:
    """Built once: reading the lexicon and emoji files takes longer than scoring a batch."""
    return SentimentIntensityAnalyzer()


@register("vader")
def vader(prompts: Sequence[str], completions: Sequence[str],
          references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
    """VADER compound sentiment of each completion, in [-1, 1] (the prompt is ignored)."""
    sia = analyzer()
    return np.array([sia.polarity_scores(c)["compound"] for c in completions], dtype=np.float64)
