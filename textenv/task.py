"""Examples and tasks: the data an environment serves and the reward that judges it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rewards
from rewards import ValidatedReward


class TaskError(ValueError):
    """A task or dataset is malformed; the message names the task, split or column."""


@dataclass(frozen=True)
class Example:
    """One prompt, with what the task knows about good answers to it."""

    prompt: str
    reference: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """Named splits of examples plus the reward that scores completions.

    ``metrics`` are extra rewards reported at evaluation (e.g. a gold judge beside a learned reward).
    ``corpus`` is domain text from which a tiny base model can be pretrained. ``subset_key`` names the
    ``Example.meta`` key whose values split evaluation into subsets (e.g. helpful / harmless).
    """

    name: str
    splits: dict[str, list[Example]]
    reward: str | Callable[..., Any] | ValidatedReward
    metrics: dict[str, str | Callable[..., Any] | ValidatedReward] = field(default_factory=dict)
    corpus: list[str] | None = None
    subset_key: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.splits:
            raise TaskError(f"task {self.name!r} has no splits")
        for split, examples in self.splits.items():
            if not examples:
                raise TaskError(f"task {self.name!r}: split {split!r} is empty")
            for i, ex in enumerate(examples):
                if not isinstance(ex, Example):
                    raise TaskError(f"task {self.name!r}: split {split!r} item {i} is "
                                    f"{type(ex).__name__}, expected textenv.Example")
        self.reward = rewards.resolve(self.reward)
        self.metrics = {k: rewards.resolve(v, name=k) for k, v in self.metrics.items()}

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise TaskError(f"task {self.name!r} has no split {name!r}; splits: {sorted(self.splits)}")
        return self.splits[name]

    def pairs(self, split: str = "train") -> list[Example]:
        """The examples of ``split`` that carry a (chosen, rejected) preference pair."""
        pairs = [ex for ex in self.split(split) if ex.chosen is not None and ex.rejected is not None]
        if not pairs:
            raise TaskError(f"task {self.name!r}: split {split!r} has no (chosen, rejected) pairs")
        return pairs

    def with_references(self, split: str = "train") -> list[Example]:
        refs = [ex for ex in self.split(split) if ex.reference is not None]
        if not refs:
            raise TaskError(f"task {self.name!r}: split {split!r} has no reference answers")
        return refs


def columns_of(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """Meta fields shared by all examples, as keyword columns for a reward call (TRL style)."""
    if not examples:
        return {}
    keys = set(examples[0].meta)
    for ex in examples[1:]:
        keys &= set(ex.meta)
    return {k: [ex.meta[k] for ex in examples] for k in sorted(keys)}
