"""Verifiable rewards: a rule decides, no model. Exact answers, numbers, patterns, required keywords.

These are the rewards of RL with verifiable rewards (maths answers, format checks); they are cheap,
deterministic and cannot be reward-hacked beyond what the rule allows.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.registry import RewardError, register

_STRIP = string.punctuation + string.whitespace
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def _references(name: str, references: Sequence[str | None] | None, n: int) -> list[str]:
    """Rewards that compare with a reference refuse to guess when it is missing."""
    if references is None:
        raise RewardError(f"{name} needs references (got None for {n} completions)")
    for i, ref in enumerate(references):
        if ref is None:
            raise RewardError(f"{name} needs a reference, but reference {i} is None")
    return [str(r) for r in references]


def normalize(text: str, ignore_case: bool = True) -> str:
    """Collapse whitespace and strip surrounding punctuation, so "  Paris." matches "paris"."""
    text = " ".join(text.split()).strip(_STRIP)
    return text.lower() if ignore_case else text


@register("exact_match")
def exact_match(prompts: Sequence[str], completions: Sequence[str],
                references: Sequence[str | None] | None = None, *, ignore_case: bool = True,
                **columns: Any) -> np.ndarray:
    """1.0 where the normalised completion equals the normalised reference, else 0.0."""
    refs = _references("exact_match", references, len(completions))
    return np.array([float(normalize(c, ignore_case) == normalize(r, ignore_case))
                     for c, r in zip(completions, refs, strict=True)])


def parse_number(text: str, which: str = "first") -> float | None:
    """The first (or last) number written in ``text``, thousands commas allowed; None if there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = float((found[0] if which == "first" else found[-1]).replace(",", ""))
    return value if math.isfinite(value) else None


@register("numeric")
class Numeric:
    """1.0 when the number in the completion is within tolerance of the reference number.

    ``which`` picks the first number (a tiny model that rambles after its answer) or the last one
    (chain-of-thought, the answer comes at the end). With ``partial_scale`` a miss still earns
    ``exp(-|error| / partial_scale)``, a dense signal for small models; without it a miss is 0.
    A completion with no number scores 0; a reference with no number is an error.
    """

    name = "numeric"

    def __init__(self, atol: float = 1e-6, rtol: float = 0.0, which: str = "first",
                 partial_scale: float | None = None):
        if which not in ("first", "last"):
            raise RewardError(f"numeric: which must be 'first' or 'last', got {which!r}")
        if atol < 0 or rtol < 0:
            raise RewardError(f"numeric: tolerances must be >= 0, got atol={atol}, rtol={rtol}")
        if partial_scale is not None and not partial_scale > 0:
            raise RewardError(f"numeric: partial_scale must be > 0, got {partial_scale}")
        self.atol, self.rtol, self.which, self.partial_scale = atol, rtol, which, partial_scale

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        refs = _references("numeric", references, len(completions))
        out = np.zeros(len(completions))
        for i, (c, r) in enumerate(zip(completions, refs, strict=True)):
            target = parse_number(r, "first")
            if target is None:
                raise RewardError(f"numeric: reference {i} ({r!r}) contains no number")
            guess = parse_number(c, self.which)
            if guess is None:
                continue
            err = abs(guess - target)
            if err <= self.atol + self.rtol * abs(target):
                out[i] = 1.0
            elif self.partial_scale is not None:
                out[i] = math.exp(-err / self.partial_scale)
        return out


@register("regex")
class Regex:
    """``match_value`` where the pattern matches the completion, else ``miss_value``.

    ``full=True`` demands the whole completion match (a format check); otherwise any substring may.
    """

    name = "regex"

    def __init__(self, pattern: str, full: bool = False, flags: int = 0, match_value: float = 1.0,
                 miss_value: float = 0.0):
        try:
            self.pattern = re.compile(pattern, flags)
        except (re.error, TypeError) as err:
            raise RewardError(f"regex: bad pattern {pattern!r}: {err}") from err
        self.full, self.match_value, self.miss_value = full, float(match_value), float(miss_value)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        match = self.pattern.fullmatch if self.full else self.pattern.search
        return np.array([self.match_value if match(c) else self.miss_value for c in completions])


@register("keywords")
class Keywords:
    """Fraction of required keywords present in the completion (whole words, case-insensitive).

    Keywords come from ``keywords`` (the same for every row) or from the dataset column ``column``
    (a list of str, or one comma-separated str, per row). A row with no keywords scores 1.0: nothing
    was required, so nothing is missing.
    """

    name = "keywords"

    def __init__(self, keywords: Sequence[str] | None = None, column: str = "keywords",
                 ignore_case: bool = True, whole_word: bool = True):
        if isinstance(keywords, str):
            keywords = [keywords]
        self.keywords = None if keywords is None else list(keywords)
        self.column, self.ignore_case, self.whole_word = column, ignore_case, whole_word

    def _present(self, keyword: str, text: str) -> bool:
        pat = re.escape(keyword.strip())
        if self.whole_word:
            pat = rf"(?<!\w){pat}(?!\w)"
        return re.search(pat, text, re.IGNORECASE if self.ignore_case else 0) is not None

    def _row_keywords(self, i: int, columns: dict[str, Any]) -> list[str]:
        if self.keywords is not None:
            return self.keywords
        if self.column not in columns:
            raise RewardError(f"keywords: no keywords given and no column {self.column!r} "
                              f"(columns: {sorted(columns)})")
        row = columns[self.column][i]
        if row is None:
            raise RewardError(f"keywords: column {self.column!r} is None at index {i}")
        words = row.split(",") if isinstance(row, str) else list(row)
        return [w for w in words if str(w).strip()]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        out = np.ones(len(completions))
        for i, c in enumerate(completions):
            words = self._row_keywords(i, columns)
            if words:
                out[i] = sum(self._present(str(w), c) for w in words) / len(words)
        return out
