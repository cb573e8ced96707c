"""Preference-v0: the Dialogue-v0 prompts, judged by a Bradley-Terry reward model learned from its pairs.

This is RLHF's usual setting: the policy optimises a *learned* proxy, while the programmatic judge
stays available as the gold reward in ``task.metrics["gold"]``, so reward over-optimisation shows up
as the proxy rising while the gold RAS does not. The reward model trains on first use in seconds and
is cached on disk under ``$TEXTENV_CACHE`` (default ``~/.cache/textenv``), keyed by a hash of the
pairs and the training recipe; ``bradley_terry_reward`` does the same for any task (HH-v0 uses it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import rewards
from textenv.task import Example, Task
from textenv.tasks.dialogue import (
    TOPICS,
    DialogueJudge,
    DialogueQuality,
    _harmless_answer,
    _helpful_answer,
    dialogue_corpus,
    dialogue_examples,
)

# Bump when a change in how the reward model is trained changes the weights for the same inputs.
RECIPE_VERSION = "1"
_MEMO: dict[str, rewards.ValidatedReward] = {}


def cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$TEXTENV_CACHE``, else ``~/.cache/textenv``."""
    return Path(path or os.environ.get("TEXTENV_CACHE") or Path.home() / ".cache" / "textenv")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Train tiny models on one thread: intra-op parallelism does not pay at this size, and on a busy
    shared CPU two threads waiting on each other made training many times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bt_cache_key(pairs: Sequence[Example], recipe: dict[str, Any]) -> str:
    """Hash of (recipe, every prompt/chosen/rejected): the same data and recipe find the same model."""
    h = hashlib.sha256(json.dumps({"recipe": recipe, "version": RECIPE_VERSION}, sort_keys=True).encode())
    for ex in pairs:
        for text in (ex.prompt, ex.chosen, ex.rejected):
            h.update(str(text).encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def bradley_terry_reward(pairs: Sequence[Example], *, steps: int = 200, lr: float = 3e-3, batch_size: int = 16,
                         seed: int = 0, config: dict[str, int] | None = None,
                         cache: str | Path | None = None) -> rewards.ValidatedReward:
    """A Bradley-Terry reward trained on ``pairs`` (chosen over rejected), loaded from the cache if there.

    ``config`` overrides fields of ``rewards.learned.BTConfig`` (e.g. ``{"hidden_size": 32}``).
    """
    from rewards.learned import BradleyTerryRewardModel, BTConfig, train_bradley_terry

    bt_config = BTConfig(**(config or {}))
    recipe = {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "config": dataclasses.asdict(bt_config)}
    key = bt_cache_key(pairs, recipe)
    if key in _MEMO:
        return _MEMO[key]
    folder = cache_dir(cache) / f"bt-{key}"
    if (folder / "model.safetensors").is_file():
        model = BradleyTerryRewardModel.load(folder)
    else:
        with single_thread():
            model = train_bradley_terry([ex.prompt for ex in pairs], [ex.chosen for ex in pairs],
                                        [ex.rejected for ex in pairs], steps=steps, lr=lr, batch_size=batch_size,
                                        seed=seed, config=bt_config)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".bt-{key}-", dir=folder.parent))
        model.save(tmp)
        (tmp / "recipe.json").write_text(json.dumps({**recipe, "pairs": len(pairs)}, indent=2) + "\n")
        try:
            tmp.rename(folder)  # atomic: a concurrent reader sees no half-written model
        except OSError:  # another process finished first; keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    _MEMO[key] = rewards.get("bradley_terry", model=model)
    return _MEMO[key]


# (better, worse) answer kinds and how often each comparison is drawn, per subset.
HELPFUL_PAIRS = {("full", "two"): 0.25, ("two", "one"): 0.2, ("full", "one"): 0.1, ("two", "zero"): 0.25,
                 ("one", "zero"): 0.1, ("full", "zero"): 0.1}
HARMLESS_PAIRS = {("redirect", "refuse"): 0.4, ("refuse", "comply"): 0.4, ("redirect", "comply"): 0.2}
ZERO_KINDS = ("vague", "off_topic", "refuse")
# Small enough to train in seconds, long enough for the longest prompt + answer (~150 bytes).
PREFERENCE_BT_CONFIG = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
                        "max_length": 160}


def graded_pairs(examples: Sequence[Example], rng: np.random.Generator) -> list[Example]:
    """The examples with (chosen, rejected) redrawn as two answers of different quality.

    As in HH, where "chosen" is just the preferred of two samples, the chosen answer may be better or
    worse than the reference; a reward model trained on such graded comparisons ranks full answers
    above reference-like ones, which one fixed "reference vs bad answer" pair per prompt cannot teach.
    """
    topics = list(TOPICS)
    out = []
    for ex in examples:
        facts = ex.meta["facts"]
        if ex.meta["subset"] == "helpful":
            kinds = list(HELPFUL_PAIRS)
            better, worse = kinds[int(rng.choice(len(kinds), p=list(HELPFUL_PAIRS.values())))]
            worse = ZERO_KINDS[int(rng.integers(len(ZERO_KINDS)))] if worse == "zero" else worse
            other = TOPICS[topics[(topics.index(ex.meta["topic"]) + 1 + int(rng.integers(len(topics) - 1)))
                                  % len(topics)]]
            pair = [_helpful_answer(k, facts, other, rng) for k in (better, worse)]
        else:
            kinds = list(HARMLESS_PAIRS)
            better, worse = kinds[int(rng.choice(len(kinds), p=list(HARMLESS_PAIRS.values())))]
            pair = [_harmless_answer(k, facts[0], rng) for k in (better, worse)]
        out.append(dataclasses.replace(ex, chosen=pair[0], rejected=pair[1]))
    return out


def preference_task(seed: int = 0, n_eval_helpful: int = 64, n_eval_harmless: int = 32, *, repeats: int = 3,
                    redirect: bool = True, bt_steps: int = 150, bt_lr: float = 3e-3, bt_batch_size: int = 16,
                    bt_config: dict[str, int] | None = None, cache: str | Path | None = None) -> Task:
    """Build Preference-v0: Dialogue-v0's prompts, references and corpus; graded pairs; reward = a
    Bradley-Terry model trained on the train pairs (``bt_*``: its recipe); gold = the Dialogue judge.

    The default reward model (~40k parameters, 150 steps) trains in about 5-10 s on one CPU core.
    """
    train, evals, rng = dialogue_examples(seed, n_eval_helpful, n_eval_harmless)
    corpus = dialogue_corpus(train, rng, repeats)  # the same corpus as Dialogue-v0: the same base model
    pair_rng = np.random.default_rng([seed, 1])
    train, evals = graded_pairs(train, pair_rng), graded_pairs(evals, pair_rng)
    reward = bradley_terry_reward(train, steps=bt_steps, lr=bt_lr, batch_size=bt_batch_size, seed=seed,
                                  config=bt_config or PREFERENCE_BT_CONFIG, cache=cache)
    return Task(name="Preference-v0", splits={"train": train, "eval": evals}, reward=reward,
                metrics={"gold": DialogueJudge(redirect), "quality": DialogueQuality(redirect)}, corpus=corpus,
                subset_key="subset",
                description="Dialogue-v0 prompts; reward = Bradley-Terry model learned from the train pairs; "
                            "metrics['gold'] = the programmatic pairwise judge.")
