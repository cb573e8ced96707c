"""Nim-v0: multi-heap Nim against an optimal opponent; whoever takes the last stone wins.

The model moves first from a position with a non-zero nim-sum (XOR of the heaps), so it can always
win, and only by optimal play: the opponent answers every move optimally (it restores a zero nim-sum
when it can, else takes one stone from the largest heap). A move is "take N from heap H" (the first
such phrase in the message, heaps numbered from 1). A message without a move, or an illegal move (no
such heap, N < 1, more stones than the heap has) is an invalid action and ends the episode at once
with the lowest reward, 0: an invalid move never earns partial credit. Reward: 0 on every turn, then
1.0 if the model took the last stone, else 0. ``max_turns`` defaults to the longest legal game, so a
legal game always terminates. Oracle: the move that makes the nim-sum zero.

Random vs oracle over all 301 start positions (3 heaps of 1..7 with a non-zero nim-sum; 241 train,
60 eval at seed 0; checked by ``tests/test_multiturn_tasks.py``): oracle 1.000; uniformly random legal
moves (a heap with stones, then a count) 0.027 (8 of 301); text without a move 0.0.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Any

import numpy as np

from textenv.multiturn import MultiTurnTask, Reply
from textenv.task import TaskError

MOVE = re.compile(r"take\s+(\d+)\s+from\s+heap\s+(\d+)", re.I)


def optimal_move(heaps: list[int]) -> tuple[int, int]:
    """``(heap index, stones)`` that leaves a zero nim-sum, or one stone from the largest heap if none does."""
    total = reduce(xor, heaps, 0)
    for i, h in enumerate(heaps):
        if total and h ^ total < h:
            return i, h - (h ^ total)
    return heaps.index(max(heaps)), 1


def heaps_text(heaps: list[int]) -> str:
    return " ".join(map(str, heaps))


@dataclass
class Game:
    """The episode: the heaps now, and how the game ended."""

    heaps: list[int]
    won: bool = False
    over: bool = False


class Nim(MultiTurnTask):
    """Nim-v0 (see the module doc); train and eval are disjoint sets of start positions."""

    name = "Nim-v0"

    def __init__(self, seed: int = 0, n_heaps: int = 3, max_heap: int = 7, eval_fraction: float = 0.2):
        if n_heaps < 1 or max_heap < 1 or not 0.0 < eval_fraction < 1.0:
            raise TaskError(f"{self.name}: need n_heaps >= 1, max_heap >= 1 and 0 < eval_fraction < 1, got "
                            f"{n_heaps}, {max_heap}, {eval_fraction}")
        rows = [{"heaps": list(h)} for h in itertools.product(range(1, max_heap + 1), repeat=n_heaps)
                if reduce(xor, h, 0)]
        order = np.random.default_rng(seed).permutation(len(rows))
        n_eval = max(1, int(eval_fraction * len(rows)))
        if n_eval >= len(rows):
            raise TaskError(f"{self.name}: {len(rows)} start positions leave none for train")
        self.splits = {"train": [rows[i] for i in order[n_eval:]], "eval": [rows[i] for i in order[:n_eval]]}
        self.max_turns = -(-n_heaps * max_heap // 2)  # each round takes >= 2 stones
        self.description = f"Nim with {n_heaps} heaps of 1..{max_heap} against an optimal opponent"

    def reset(self, row: dict[str, Any], rng: np.random.Generator) -> tuple[list[dict[str, Any]], Game]:
        heaps = list(row["heaps"])
        prompt = (f"Let's play Nim. Heaps: {heaps_text(heaps)}. On your turn take any number of stones from one "
                  "heap; answer \"take N from heap H\" (heaps are numbered from 1). Whoever takes the last stone "
                  "wins. You go first.")
        return [{"role": "user", "content": prompt}], Game(heaps)

    def respond(self, state: Game, message: dict[str, Any]) -> Reply:
        move = MOVE.search(message["content"])
        n, h = (int(move.group(1)), int(move.group(2))) if move else (0, 0)
        if not move or not 1 <= h <= len(state.heaps) or not 1 <= n <= state.heaps[h - 1]:
            state.over = True
            why = "no move \"take N from heap H\" found" if not move else f"you cannot take {n} from heap {h}"
            return Reply([{"role": "user", "content": f"Illegal move: {why}. You lose."}], done=True, invalid=True)
        state.heaps[h - 1] -= n
        if not any(state.heaps):
            state.won = state.over = True
            return Reply(done=True)
        i, k = optimal_move(state.heaps)
        state.heaps[i] -= k
        if not any(state.heaps):
            state.over = True
            return Reply([{"role": "user", "content": f"I take {k} from heap {i + 1}, the last stone. I win."}],
                         done=True)
        return Reply([{"role": "user", "content": f"I take {k} from heap {i + 1}. Heaps: "
                                                  f"{heaps_text(state.heaps)}. Your move."}])

    def final_reward(self, state: Game) -> float:
        return float(state.won)

    def oracle(self, state: Game) -> str:
        i, k = optimal_move(state.heaps)
        return f"take {k} from heap {i + 1}"
