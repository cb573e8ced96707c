"""How good is each built-in task's base model before any alignment?

Group-relative methods (GRPO, GRAO) learn only from groups whose rewards differ, so this prints, per
task, the mean reward of G samples per eval prompt at the paper's temperature 0.7, the fraction of
groups whose rewards are all equal (no signal), and for tasks with references the exact-match rate.

    python -m benchmarks.base_quality                       # every built-in task with a tiny-model recipe
    python -m benchmarks.base_quality --tasks Arithmetic-v0 --prompts 100
    python -m benchmarks.base_quality --model smollm2 --prompts 48 --group-size 2   # the chat tasks
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from algos.policy import Policy
from algos.tiny import TinyRecipe, default_recipe, pretrain_tiny
from textenv import Task, columns_of, message_text

# Task name -> (factory module:function, max_new_tokens when sampling).
TASKS: dict[str, tuple[str, int]] = {
    "Arithmetic-v0": ("textenv.tasks.arithmetic:arithmetic_task", 8),
    "Sentiment-v0": ("textenv.tasks.sentiment:sentiment_task", 48),
    "Dialogue-v0": ("textenv.tasks.dialogue:dialogue_task", 96),
}
# The same for the chat tasks, which have no corpus for a tiny model: they are measured on a pretrained one.
CHAT_TASKS: dict[str, tuple[str, int]] = {
    "ChatSums-v0": ("textenv.tasks.chat_sums:chat_sums_task", 16),
    "Instructions-v0": ("textenv.tasks.instructions:instructions_task", 48),
}


def load_factory(spec: str) -> Callable[..., Task]:
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


def sample(path: str | Path, prompts: list[str], group_size: int = 8, temperature: float = 0.7,
           max_new_tokens: int = 8, seed: int = 0) -> list[list[str]]:
    """``group_size`` completions per prompt, sampled exactly as the algorithms sample them."""
    policy = Policy.from_pretrained(path)
    texts = policy.generate(prompts, num_samples=group_size, temperature=temperature,
                            max_new_tokens=max_new_tokens, seed=seed, batch_size=64).texts
    return [texts[i:i + group_size] for i in range(0, len(texts), group_size)]


def group_stats(task: Task, groups: list[list[str]], split: str = "eval") -> dict[str, float]:
    """Mean reward, all-equal-group fraction, mean within-group std, win rate over the reference
    (RAS), each task metric, and the rate of completions equal to the reference ("exact")."""
    examples = task.split(split)[:len(groups)]
    g = len(groups[0])
    rep = [ex for ex in examples for _ in range(g)]
    prompts, refs = [ex.prompt for ex in rep], [message_text(ex.reference) for ex in rep]  # chat answers as text
    completions = [c for group in groups for c in group]
    columns = columns_of(rep)
    r = task.reward(prompts, completions, refs, **columns).reshape(len(groups), g)
    ref_r = task.reward.reference_rewards(prompts, refs, **columns).reshape(len(groups), g)
    stats = {"mean_reward": float(r.mean()), "all_equal_groups": float(np.mean(np.ptp(r, axis=1) < 1e-9)),
             "group_std": float(r.std(axis=1).mean()), "ras": float(np.mean(r > ref_r + 1e-9))}
    for name, metric in task.metrics.items():
        stats[name] = float(np.mean(metric(prompts, completions, refs, **columns)))
    stats["exact"] = float(np.mean([c.strip() == y.strip() for c, y in zip(completions, refs, strict=True)]))
    return stats


def base_quality(name: str, recipe: TinyRecipe | None = None, n_prompts: int = 200, group_size: int = 8,
                 seed: int = 0, progress: bool = True, show: int = 0, model: str = "tiny",
                 **task_kw: object) -> dict[str, float]:
    """Measure the base model's groups on ``name``'s eval prompts: ``model="tiny"`` pretrains (or reuses)
    the task's tiny model, anything else is a model name or path for ``Policy.from_pretrained`` ("smollm2")."""
    factory, max_new = {**TASKS, **CHAT_TASKS}[name]
    task = load_factory(factory)(seed=seed, **task_kw)
    start = time.perf_counter()
    path = pretrain_tiny(task, recipe or default_recipe(name), progress=progress) if model == "tiny" else model
    pretrain_s = time.perf_counter() - start
    prompts = [ex.prompt for ex in task.split("eval")[:n_prompts]]
    groups = sample(path, prompts, group_size, max_new_tokens=max_new, seed=seed)
    for prompt, group in list(zip(prompts, groups, strict=True))[:show]:
        print(repr(prompt), "->", group)
    return {**group_stats(task, groups), "pretrain_s": pretrain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (each task's tiny model) or a model name or path")
    parser.add_argument("--tasks", nargs="*", help="default: the tiny-model tasks, or with --model the chat tasks")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 oversubscribe a shared CPU)")
    parser.add_argument("--show", type=int, default=0, help="print this many sampled groups per task")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.tasks or list(TASKS if args.model == "tiny" else CHAT_TASKS):
        try:
            stats = base_quality(name, n_prompts=args.prompts, group_size=args.group_size, show=args.show,
                                 model=args.model)
        except ModuleNotFoundError as err:
            print(f"{name:15s} skipped ({err})")
            continue
        print(f"{name:15s} " + "  ".join(f"{k}={v:.3f}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
