"""GuessNumber-v0: find a hidden whole number in ``low..high`` from "Higher." / "Lower." replies.

Each turn the model answers with a number (the first integer in its message counts). The env replies
"Higher." or "Lower."; a right guess ends the episode. A message without an integer, or one outside
``low..high``, is an invalid action: the env says so and the episode goes on (the turn is spent).
Reward: 0 on every turn, and on the last one ``discount ** (guesses - 1)`` if the number was found
(1.0 with the default ``discount=1``), else 0. Oracle: bisection of the interval the replies leave,
which finds any number of ``1..high`` in at most ``floor(log2(high)) + 1`` guesses (7 for 100).

Random vs oracle, measured on the 200 eval rows (seed 0: h in 8..100, ``max_turns=10``; checked by
``tests/test_multiturn_tasks.py``), mean reward (mean guesses):

    policy                                        discount=1       discount=0.9
    oracle (bisection)                            1.000 (5.1)      0.655
    uniform in the interval the replies leave     0.935 (6.3)      0.567
    uniform in low..high, ignoring the replies    0.175 (9.1)      0.121
    text without a number (always invalid)        0.0              0.0

Following the replies at all is most of the skill at ``discount=1``; ``discount < 1`` also pays for
bisecting. ``guesses`` (default 10) is the task's turn limit (an env's ``max_turns`` may lower it); with
``max_high=15, guesses=4`` (``algos.tiny.GUESS_NUMBER_SMALL``) only play that follows the replies closely wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from textenv.multiturn import MultiTurnTask, Reply
from textenv.task import TaskError

NUMBER = re.compile(r"-?\d+")


@dataclass
class Guessing:
    """The episode: the hidden number and the interval the replies so far leave for it."""

    low: int
    high: int
    target: int
    lo: int
    hi: int
    guesses: int = 0
    solved: bool = False


class GuessNumber(MultiTurnTask):
    """GuessNumber-v0 (see the module doc); splits are disjoint sets of (high, target) rows."""

    name = "GuessNumber-v0"

    def __init__(self, seed: int = 0, n_train: int = 2000, n_eval: int = 200, min_high: int = 8,
                 max_high: int = 100, discount: float = 1.0, guesses: int = 10):
        if not 2 <= min_high <= max_high:
            raise TaskError(f"{self.name}: need 2 <= min_high <= max_high, got {min_high} and {max_high}")
        if not 0.0 < discount <= 1.0:
            raise TaskError(f"{self.name}: discount must be in (0, 1], got {discount}")
        if isinstance(guesses, bool) or not isinstance(guesses, int) or guesses < 1:
            raise TaskError(f"{self.name}: guesses must be an integer >= 1, got {guesses!r}")
        rows = [{"low": 1, "high": h, "target": t} for h in range(min_high, max_high + 1) for t in range(1, h + 1)]
        if n_train < 1 or n_eval < 1 or n_train + n_eval > len(rows):
            raise TaskError(f"{self.name}: n_train={n_train} + n_eval={n_eval} must be positive and at most the "
                            f"{len(rows)} rows of min_high={min_high}, max_high={max_high}")
        order = np.random.default_rng(seed).permutation(len(rows))
        self.splits = {"train": [rows[i] for i in order[n_eval:n_eval + n_train]],
                       "eval": [rows[i] for i in order[:n_eval]]}
        self.discount, self.max_turns = discount, guesses  # the env's max_turns may cut it
        self.description = f"guess a number in 1..h (h <= {max_high}) from higher/lower replies"

    def reset(self, row: dict[str, Any], rng: np.random.Generator) -> tuple[list[dict[str, Any]], Guessing]:
        low, high = row["low"], row["high"]
        prompt = (f"I am thinking of a whole number from {low} to {high}. Guess it: answer with one number "
                  "and I will say \"Higher.\" or \"Lower.\".")
        return [{"role": "user", "content": prompt}], Guessing(low, high, row["target"], low, high)

    def respond(self, state: Guessing, message: dict[str, Any]) -> Reply:
        state.guesses += 1
        found = NUMBER.search(message["content"])
        guess = int(found.group()) if found else None
        if guess is None or not state.low <= guess <= state.high:
            return Reply([{"role": "user", "content": f"Answer with one whole number from {state.low} to "
                                                      f"{state.high}."}], invalid=True)
        if guess == state.target:
            state.solved = True
            return Reply(done=True)
        if guess < state.target:
            state.lo = max(state.lo, guess + 1)
            return Reply([{"role": "user", "content": "Higher."}])
        state.hi = min(state.hi, guess - 1)
        return Reply([{"role": "user", "content": "Lower."}])

    def final_reward(self, state: Guessing) -> float:
        return self.discount ** (state.guesses - 1) if state.solved else 0.0

    def oracle(self, state: Guessing) -> str:
        return str((state.lo + state.hi) // 2)
