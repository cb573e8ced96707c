"""Text-overlap rewards through `evaluate` metric modules shipped inside this package.

The modules live in ``rewards/metric_modules/<name>/<name>.py`` and are loaded by path, so they
work offline and never fetch a script from the hub. ``evaluate`` (and through it ``datasets``) takes
seconds to import, so it is imported on first use, not when ``rewards`` is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rewards.registry import RewardError, register

MODULES_DIR = Path(__file__).parent / "metric_modules"


def metric_path(name: str) -> Path:
    """Directory of a shipped metric module (``evaluate.load`` accepts it directly)."""
    path = MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        known = sorted(p.name for p in MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise RewardError(f"no shipped metric module {name!r}; known: {known}")
    return path


@cache
def load_metric(name: str) -> Any:
    """Load (once per process) the shipped metric module ``name`` as an ``evaluate.Metric``."""
    import evaluate

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)


class _MetricReward:
    """Per-completion score of a shipped metric against the reference (or a list of references)."""

    name = ""
    key = ""
    compute_kwargs: dict[str, Any]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[Any] | None = None, **columns: Any) -> np.ndarray:
        if references is None:
            raise RewardError(f"{self.name} needs references (got None for {len(completions)} completions)")
        refs = []
        for i, ref in enumerate(references):
            if ref is None or (not isinstance(ref, str) and len(ref) == 0):
                raise RewardError(f"{self.name} needs a reference, but reference {i} is {ref!r}")
            refs.append(ref if isinstance(ref, str) else list(ref))
        if all(isinstance(r, list) for r in refs) or not any(isinstance(r, list) for r in refs):
            batches = [(list(range(len(refs))), refs)]
        else:  # the module takes one reference format per call
            single = [i for i, r in enumerate(refs) if isinstance(r, str)]
            multi = [i for i, r in enumerate(refs) if isinstance(r, list)]
            batches = [(single, [refs[i] for i in single]), (multi, [refs[i] for i in multi])]
        out = np.zeros(len(completions))
        metric = load_metric(self.name)
        for idx, refs_part in batches:
            result = metric.compute(predictions=[completions[i] for i in idx], references=refs_part,
                                    use_aggregator=False, **self.compute_kwargs)
            out[idx] = result[self.key]
        return out


@register("rouge_l")
class RougeL(_MetricReward):
    """ROUGE-L between completion and reference(s), in [0, 1]; the best reference counts."""

    name, key = "rouge_l", "rougeL"

    def __init__(self, use_stemmer: bool = False, measure: str = "fmeasure", tokenizer: Any = None):
        if measure not in ("fmeasure", "precision", "recall"):
            raise RewardError(f"rouge_l: measure must be fmeasure, precision or recall, got {measure!r}")
        self.compute_kwargs = {"use_stemmer": use_stemmer, "measure": measure, "tokenizer": tokenizer}


@register("bleu")
class Bleu(_MetricReward):
    """Smoothed sentence BLEU of the completion against its reference(s), in [0, 1]."""

    name, key = "bleu", "bleu"

    def __init__(self, max_order: int = 4, smooth_method: str = "method3", lowercase: bool = False,
                 tokenizer: Any = None):
        if not isinstance(max_order, int) or max_order < 1:
            raise RewardError(f"bleu: max_order must be a positive int, got {max_order!r}")
        if smooth_method not in {f"method{i}" for i in range(8)}:
            raise RewardError(f"bleu: unknown smooth_method {smooth_method!r}; use 'method0' .. 'method7'")
        self.compute_kwargs = {"max_order": max_order, "smooth_method": smooth_method,
                               "lowercase": lowercase, "tokenizer": tokenizer}
