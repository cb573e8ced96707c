"""Verifiable instructions, in the style of IFEval and Tülu 3's RLVR data: constraints a rule can check.

A constraint is a short string, ``"kind"`` or ``"kind:argument"`` (``"lowercase"``, ``"include:river"``,
``"max_words:15"``), so it can sit in a dataset column, a JSON result file or a report as it is. Each kind
knows how to say itself as an instruction (``describe``) and how to check a response (``satisfied``)::

    describe("end_with:Have a nice day.")   # "End your answer with this exact phrase: Have a nice day."
    satisfied("It is blue. have a nice day.", "end_with:Have a nice day.")   # True

The reward ``rewards.get("instructions")`` reads each row's constraints from the dataset column
``constraints`` (a list of such strings) and returns the share of them the completion meets (IFEval's
instruction-level accuracy), or with ``level="prompt"`` 1.0 only when it meets all of them (its
prompt-level accuracy). A completion with no word at all meets none: otherwise an empty answer would
satisfy every "do not" and "at most" constraint for free. As in IFEval's strict checks, words and
phrases compare case-insensitively; words are counted as whitespace-separated runs (IFEval uses nltk).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rewards.registry import RewardError, register


def _words(text: str) -> list[str]:
    return text.split()


def has_word(text: str, word: str) -> bool:
    """Whether ``word`` stands in ``text`` as a whole word, in any case."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _first_word(text: str) -> str:
    words = _words(text)
    return words[0].strip("\"'*.,:;!?").lower() if words else ""


# kind -> (whether it takes an argument, the instruction's wording, the check). An argument is a string;
# max_words and min_words read it as a whole number.
KINDS: dict[str, tuple[bool, Callable[[str], str], Callable[[str, str], bool]]] = {
    "lowercase": (False, lambda _: "Write only in lowercase letters, with no capital letters.",
                  lambda text, _: any(c.isalpha() for c in text) and text == text.lower()),
    "no_commas": (False, lambda _: "Do not use any commas.", lambda text, _: "," not in text),
    "include": (True, lambda word: f"Include the word '{word}'.", has_word),
    "exclude": (True, lambda word: f"Do not use the word '{word}'.", lambda text, word: not has_word(text, word)),
    "start_with": (True, lambda word: f"Start your answer with the word '{word}'.",
                   lambda text, word: _first_word(text) == word.lower()),
    "end_with": (True, lambda phrase: f"End your answer with this exact phrase: {phrase}",
                 lambda text, phrase: text.strip().strip("\"'").lower().endswith(phrase.lower())),
    "max_words": (True, lambda n: f"Use at most {n} words.", lambda text, n: len(_words(text)) <= int(n)),
    "min_words": (True, lambda n: f"Use at least {n} words.", lambda text, n: len(_words(text)) >= int(n)),
}


def parse(constraint: str) -> tuple[str, str]:
    """``(kind, argument)`` of a constraint string (argument "" for a kind that takes none); checked."""
    if not isinstance(constraint, str):
        raise RewardError(f"instructions: a constraint is a string such as 'lowercase' or 'include:river', "
                          f"got {type(constraint).__name__} {constraint!r}")
    kind, _, argument = constraint.partition(":")
    if kind not in KINDS:
        raise RewardError(f"instructions: unknown constraint kind {kind!r} in {constraint!r}; "
                          f"kinds: {', '.join(sorted(KINDS))}")
    takes_argument = KINDS[kind][0]
    if takes_argument != bool(argument):
        raise RewardError(f"instructions: {kind!r} {'needs' if takes_argument else 'takes no'} argument, got "
                          f"{constraint!r}" + (f" (write it as '{kind}:...')" if takes_argument else ""))
    if kind in ("max_words", "min_words") and not argument.isdigit():
        raise RewardError(f"instructions: {kind} needs a whole number of words, got {constraint!r}")
    return kind, argument


def describe(constraint: str) -> str:
    """The constraint as an instruction to put in a prompt."""
    kind, argument = parse(constraint)
    return KINDS[kind][1](argument)


def satisfied(text: str, constraint: str) -> bool:
    """Whether ``text`` meets ``constraint`` (a text with no word meets none)."""
    kind, argument = parse(constraint)
    return bool(_words(text)) and KINDS[kind][2](text, argument)


@register("instructions")
class Instructions:
    """Share of each row's constraints (dataset column ``column``) that the completion meets.

    ``level="instruction"`` (default) scores the share met, a dense signal; ``level="prompt"`` scores 1.0
    only when every constraint is met. A row with no constraints scores 1.0: nothing was asked.
    """

    name = "instructions"

    def __init__(self, column: str = "constraints", level: str = "instruction"):
        if level not in ("instruction", "prompt"):
            raise RewardError(f"instructions: level must be 'instruction' or 'prompt', got {level!r}")
        self.column, self.level = column, level

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        if self.column not in columns:
            raise RewardError(f"instructions: no column {self.column!r} of constraints (columns: {sorted(columns)}); "
                              "put a list of constraint strings in each Example's meta")
        out = np.ones(len(completions))
        for i, (text, constraints) in enumerate(zip(completions, columns[self.column], strict=True)):
            if constraints:
                met = [satisfied(text, c) for c in constraints]
                out[i] = float(all(met)) if self.level == "prompt" else sum(met) / len(met)
        return out
