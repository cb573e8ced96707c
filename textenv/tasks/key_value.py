"""KeyValue-v0: follow a chain of keys through a ``get`` tool, then ``submit`` the number at its end.

A hidden store maps keys (made-up upper-case words of ``syllables`` consonant-vowel syllables, two by
default) to the next key or, at the end of a chain, to a number of ``value_digits`` digits (four). The
prompt names the first key of a chain of ``min_hops..max_hops`` keys; the store also holds
``n_chains - 1`` distractor chains. The tools are ``get(key)`` (the next key or the number; an unknown key is a tool
error) and ``submit(value)``, which ends the episode. A turn without any tool call is an invalid action
(the env reminds the model of the tools). Reward: 0 on every turn, then 1.0 if the submitted number is
the one at the end of the chain, else 0 (also when ``max_turns`` runs out).
Oracle: ``get`` each key of the chain in turn, one call per turn, then ``submit`` (hops + 1 turns).

Random vs oracle on the 200 eval rows (seed 0, 3 chains of 2-4 hops; checked by
``tests/test_multiturn_tasks.py``): oracle 1.000 in hops + 1 turns; submitting at once a number of the
store drawn at random (a policy that peeks at the store) 0.305, i.e. about 1 / n_chains; text without a
tool call 0.0 (every turn invalid, truncated at ``max_turns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textenv.multiturn import MultiTurnTask, Reply
from textenv.task import TaskError
from textenv.tools import format_tool_call

# Keys are upper case, so that no letter of the prompt's text or of the tool calls' JSON reads as part of one.
SYLLABLES = [c + v for c in "BDFGKLMNPRSTVZ" for v in "AEIOU"]


@dataclass
class Lookup:
    """The episode: the store, the chain asked for, and what the model fetched and submitted."""

    store: dict[str, Any]
    chain: list[str]
    answer: int
    fetched: set[str] = field(default_factory=set)
    submitted: int | None = None

    def get(self, key: str) -> str:
        """Look up a key in the store.

        Args:
            key: The key to look up.

        Returns:
            The next key of the chain, or the number at its end.
        """
        if key not in self.store:
            raise LookupError(f"no key {key!r} in the store")
        self.fetched.add(key)
        return str(self.store[key])

    def submit(self, value: int) -> str:
        """Submit the number at the end of the chain; this ends the episode.

        Args:
            value: The number found at the end of the chain.
        """
        if self.submitted is not None:
            raise RuntimeError("a value was submitted already")
        self.submitted = value
        return "submitted"


def _row(rng: np.random.Generator, min_hops: int, max_hops: int, n_chains: int, syllables: int = 2,
         value_digits: int = 4) -> dict[str, Any]:
    hops = [int(rng.integers(min_hops, max_hops + 1)) for _ in range(n_chains)]
    words = set()
    while len(words) < sum(hops):
        words.add("".join(rng.choice(SYLLABLES, size=syllables)))
    keys = [str(w) for w in rng.permutation(sorted(words))]
    low = 10 ** (value_digits - 1) if value_digits > 1 else 1
    values = [int(v) for v in rng.choice(np.arange(low, 10 ** value_digits), size=n_chains, replace=False)]
    store, start = {}, []
    for h, value in zip(hops, values, strict=True):
        chain, keys = keys[:h], keys[h:]
        start.append(chain[0])
        store.update({k: nxt for k, nxt in zip(chain, [*chain[1:], value], strict=True)})
    order = rng.permutation(len(store))
    items = list(store.items())
    return {"start": start[0], "store": dict(items[i] for i in order)}


class KeyValue(MultiTurnTask):
    """KeyValue-v0 (see the module doc); train and eval rows come from separate random streams."""

    name = "KeyValue-v0"
    tools = (Lookup.get, Lookup.submit)

    def __init__(self, seed: int = 0, n_train: int = 1000, n_eval: int = 200, min_hops: int = 2,
                 max_hops: int = 4, n_chains: int = 3, syllables: int = 2, value_digits: int = 4):
        if not 1 <= min_hops <= max_hops or n_chains < 1:
            raise TaskError(f"{self.name}: need 1 <= min_hops <= max_hops and n_chains >= 1, got "
                            f"{min_hops}, {max_hops}, {n_chains}")
        if isinstance(syllables, bool) or not isinstance(syllables, int) or syllables < 1:
            raise TaskError(f"{self.name}: syllables (per key) must be an integer >= 1, got {syllables!r}")
        if isinstance(value_digits, bool) or not isinstance(value_digits, int) or value_digits < 1:
            raise TaskError(f"{self.name}: value_digits must be an integer >= 1, got {value_digits!r}")
        if value_digits == 1 and n_chains > 9:
            raise TaskError(f"{self.name}: 9 one-digit values cannot end {n_chains} chains")
        if len(SYLLABLES) ** syllables < n_chains * max_hops:
            raise TaskError(f"{self.name}: {len(SYLLABLES) ** syllables} keys of {syllables} syllable(s) cannot name "
                            f"{n_chains} chains of up to {max_hops} keys")
        if n_train < 1 or n_eval < 1:
            raise TaskError(f"{self.name}: n_train and n_eval must be >= 1, got {n_train} and {n_eval}")
        train_rng, eval_rng = (np.random.default_rng([seed, s]) for s in (0, 1))
        shape = (min_hops, max_hops, n_chains, syllables, value_digits)
        self.splits = {"train": [_row(train_rng, *shape) for _ in range(n_train)],
                       "eval": [_row(eval_rng, *shape) for _ in range(n_eval)]}
        self.max_turns = max_hops + 3
        self.description = f"follow {min_hops}-{max_hops} keys with get(key), then submit(value)"

    def reset(self, row: dict[str, Any], rng: np.random.Generator) -> tuple[list[dict[str, Any]], Lookup]:
        chain, item = [row["start"]], row["store"][row["start"]]
        while isinstance(item, str):
            chain.append(item)
            item = row["store"][item]
        # The key ends the prompt, as each later key ends the tool message just before the call that uses it:
        # the tiny base models copy a key from there and not from a sentence back (measured in algos.tiny).
        prompt = ("A store maps keys to other keys or to a number. Call get(key) to read the next key, follow the "
                  "keys until you reach a number, then call submit(value) with that number. Start at the key: "
                  f"{row['start']}")
        return [{"role": "user", "content": prompt}], Lookup(row["store"], chain, item)

    def respond(self, state: Lookup, message: dict[str, Any]) -> Reply:
        if state.submitted is not None:
            return Reply(done=True)
        if not message.get("tool_calls"):
            return Reply([{"role": "user", "content": "Call get(key) with the key you have, or submit(value) "
                                                      "with the number you found."}], invalid=True)
        return Reply()

    def final_reward(self, state: Lookup) -> float:
        return float(state.submitted == state.answer)

    def oracle(self, state: Lookup) -> str:
        for key in state.chain:
            if key not in state.fetched:
                return format_tool_call("get", {"key": key})
        return format_tool_call("submit", {"value": state.answer})
