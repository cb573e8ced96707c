"""Composite rewards: weighted sums (which report their parts), length penalties, scaling, clipping.

A part can be given as a registered name, ``(name, kwargs)``, ``{"name": ..., **kwargs}`` (as read
from a TOML config), a plain callable, or a ValidatedReward. Every part is called through the
validating wrapper, so an error names both the composite and the part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rewards.registry import RewardError, ValidatedReward, get, register, resolve

RewardSpec = Any


def as_reward(spec: RewardSpec) -> ValidatedReward:
    """Build one reward from any of the spec forms in the module docstring."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return get(spec[0], **spec[1])
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise RewardError(f"a reward spec dict needs a 'name' key, got keys {sorted(spec)}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return get(spec["name"], **kwargs)
    return resolve(spec)


@register("weighted_sum")
class WeightedSum:
    """sum_k w_k R_k; ``components()`` returns each weighted part, so callers can log them."""

    name = "weighted_sum"

    def __init__(self, rewards: Sequence[RewardSpec], weights: Sequence[float] | None = None,
                 labels: Sequence[str] | None = None):
        if isinstance(rewards, str | Mapping) or not rewards:
            raise RewardError("weighted_sum: rewards must be a non-empty list of rewards")
        self.parts = [as_reward(s) for s in rewards]
        weights = [1.0] * len(self.parts) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.parts):
            raise RewardError(f"weighted_sum: {len(weights)} weights for {len(self.parts)} rewards")
        if not all(np.isfinite(weights)):
            raise RewardError(f"weighted_sum: weights must be finite, got {weights}")
        self.weights = weights
        self.labels = list(labels) if labels is not None else _unique([p.name for p in self.parts])
        if len(self.labels) != len(self.parts) or len(set(self.labels)) != len(self.labels):
            raise RewardError(f"weighted_sum: need {len(self.parts)} distinct labels, got {self.labels}")

    @property
    def pairwise(self) -> bool:
        """A sum of judges still scores the reference 0 against itself; one absolute part breaks that."""
        return all(p.pairwise for p in self.parts)

    def components(self, prompts: Sequence[str], completions: Sequence[str],
                   references: Sequence[str | None] | None = None, **columns: Any) -> dict[str, np.ndarray]:
        return {label: w * part(prompts, completions, references, where=self.name, **columns)
                for label, w, part in zip(self.labels, self.weights, self.parts, strict=True)}

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        return np.sum(list(self.components(prompts, completions, references, **columns).values()), axis=0)


def _unique(names: list[str]) -> list[str]:
    """Distinct labels for parts that share a name: "regex", "regex_1", ..."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}_{k}")
        seen[n] = k + 1
    return out


@register("length_penalty")
class LengthPenalty:
    """-coef * (length beyond ``target``), in characters or words; 0 up to the target.

    ``cap`` bounds the penalty (e.g. 1.0) so one runaway sample cannot dominate a batch's advantages.
    """

    name = "length_penalty"

    def __init__(self, target: int, unit: str = "chars", coef: float = 0.01, cap: float | None = None):
        if unit not in ("chars", "words"):
            raise RewardError(f"length_penalty: unit must be 'chars' or 'words', got {unit!r}")
        if target < 0 or coef < 0 or (cap is not None and cap < 0):
            raise RewardError(f"length_penalty: target, coef and cap must be >= 0 "
                              f"(target={target}, coef={coef}, cap={cap})")
        self.target, self.unit, self.coef, self.cap = target, unit, coef, cap

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        lengths = np.array([len(c) if self.unit == "chars" else len(c.split()) for c in completions], float)
        penalty = self.coef * np.maximum(0.0, lengths - self.target)
        return -(np.minimum(penalty, self.cap) if self.cap is not None else penalty)


@register("scaled")
class Scaled:
    """scale * R + shift, e.g. to put a [-1, 1] sentiment and a {0, 1} check on one footing."""

    name = "scaled"

    def __init__(self, reward: RewardSpec, scale: float = 1.0, shift: float = 0.0):
        if not (np.isfinite(scale) and np.isfinite(shift)):
            raise RewardError(f"scaled: scale and shift must be finite, got {scale}, {shift}")
        self.inner, self.scale, self.shift = as_reward(reward), float(scale), float(shift)

    @property
    def pairwise(self) -> bool:
        return self.inner.pairwise and self.shift == 0.0 and self.scale > 0

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        return self.scale * self.inner(prompts, completions, references, where=self.name, **columns) + self.shift


@register("clipped")
class Clipped:
    """R clipped to [low, high] (either bound may be None), to stop an unbounded learned reward."""

    name = "clipped"

    def __init__(self, reward: RewardSpec, low: float | None = None, high: float | None = None):
        if low is None and high is None:
            raise RewardError("clipped: give low, high or both")
        if low is not None and high is not None and low > high:
            raise RewardError(f"clipped: low ({low}) > high ({high})")
        self.inner, self.low, self.high = as_reward(reward), low, high

    @property
    def pairwise(self) -> bool:
        return self.inner.pairwise and (self.low is None or self.low <= 0) and (self.high is None or self.high >= 0)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        return np.clip(self.inner(prompts, completions, references, where=self.name, **columns), self.low, self.high)
