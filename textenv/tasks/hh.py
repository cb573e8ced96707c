"""HH-v0: Anthropic HH-RLHF (helpful-base / harmless-base), the data of the GRAO paper's experiments.

The data is not shipped and never fetched implicitly. Pass ``path=`` to a local copy (a clone of
https://huggingface.co/datasets/Anthropic/hh-rlhf with ``<subset>/train.jsonl.gz`` and
``<subset>/test.jsonl.gz``, or a single ``.jsonl``/``.jsonl.gz`` file with "chosen"/"rejected"
dialogues), set ``$TEXTENV_HH_PATH``, or pass ``hub="Anthropic/hh-rlhf"`` to download it with
``datasets`` (network needed). The reference answer is the HH chosen answer, as in the paper. The
default reward is a Bradley-Terry model trained on the task's own train pairs (cached like
Preference-v0's); pass ``reward=`` (a registered name or a callable, e.g. an LLM judge) to replace it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rewards.messages import conversation_text
from textenv.data import load_hh
from textenv.task import Example, Task, TaskError, message_text
from textenv.tasks.preference import bradley_terry_reward

SUBSETS = ("helpful-base", "harmless-base")


def _sample(examples: list[Example], n: int | None, rng: np.random.Generator) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    return [examples[int(i)] for i in np.sort(rng.choice(len(examples), size=n, replace=False))]


def hh_task(path: str | Path | None = None, *, hub: str | None = None, subsets: Sequence[str] = SUBSETS,
            n_train: int | None = None, n_eval: int = 128, seed: int = 0,
            reward: str | Callable[..., Any] | None = None, bt_steps: int = 300, bt_lr: float = 3e-3,
            bt_config: dict[str, int] | None = None, cache: str | Path | None = None,
            messages: bool = False) -> Task:
    """Build HH-v0 from a local path (default ``$TEXTENV_HH_PATH``) or, if asked, the hub.

    With a directory or the hub, train comes from each subset's train split and eval from its test
    split (``n_eval`` in all, shared evenly). A single file is split at random into train and eval.
    ``n_train`` subsamples the train pairs (seeded) to keep training short. ``messages=True`` gives each
    prompt as a list of user/assistant messages and each answer as an assistant message, for chat models.
    """
    path = path or os.environ.get("TEXTENV_HH_PATH")
    if path is None and hub is None:
        raise TaskError("HH-v0 needs the Anthropic HH-RLHF data: pass path= (a local clone of "
                        "https://huggingface.co/datasets/Anthropic/hh-rlhf or a .jsonl(.gz) file with "
                        "'chosen'/'rejected' fields), set $TEXTENV_HH_PATH, or pass hub='Anthropic/hh-rlhf' "
                        "to download it (needs a network)")
    rng = np.random.default_rng(seed)
    source = path if path is not None else hub
    if path is not None and Path(path).is_file():
        examples = load_hh(path, messages=messages)
        order = rng.permutation(len(examples))
        n_eval = min(n_eval, len(examples) // 2)
        if n_eval < 1:
            raise TaskError(f"HH-v0: {str(path)!r} has {len(examples)} pair(s); need at least 2 for train and eval")
        evals = [examples[int(i)] for i in order[:n_eval]]
        train = [examples[int(i)] for i in order[n_eval:]]
    else:
        if path is not None and not Path(path).is_dir():
            raise TaskError(f"HH-v0: {str(path)!r} is neither a file nor a directory")
        train, evals = [], []
        for i, subset in enumerate(subsets):
            train += load_hh(source, "train", data_dir=subset, messages=messages)
            share = n_eval // len(subsets) + (i < n_eval % len(subsets))
            evals += _sample(load_hh(source, "test", data_dir=subset, messages=messages), share, rng)
    train = _sample(train, n_train, rng)
    if reward is None:
        reward = bradley_terry_reward(train, steps=bt_steps, lr=bt_lr, seed=seed, config=bt_config, cache=cache)
    corpus = [conversation_text(ex.prompt, message_text(text)) for ex in train
              for text in (ex.chosen, ex.rejected)]
    return Task(name="HH-v0", splits={"train": train, "eval": evals}, reward=reward, corpus=corpus,
                subset_key="subset",
                description="Anthropic HH-RLHF helpful/harmless dialogues; reference = the chosen answer.")
