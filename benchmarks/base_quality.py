"""How good is each built-in task's tiny base model before any alignment?

Group-relative methods (GRPO, GRAO) learn only from groups whose rewards differ, so this prints, per
task, the mean reward of G samples per eval prompt at the paper's temperature 0.7, the fraction of
groups whose rewards are all equal (no signal), and for tasks with references the exact-match rate.

    python -m benchmarks.base_quality                       # every built-in task with a recipe
    python -m benchmarks.base_quality --tasks Arithmetic-v0 --prompts 100
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
from textenv import Task, columns_of

# Task name -> (factory module:function, max_new_tokens when sampling).
TASKS: dict[str, tuple[str, int]] = {
    "Arithmetic-v0": ("textenv.tasks.arithmetic:arithmetic_task", 8),
    "Sentiment-v0": ("textenv.tasks.sentiment:sentiment_task", 48),
    "Dialogue-v0": ("textenv.tasks.dialogue:dialogue_task", 96),
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
    prompts, refs = [ex.prompt for ex in rep], [ex.reference for ex in rep]
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
                 seed: int = 0, progress: bool = True, show: int = 0, **task_kw: object) -> dict[str, float]:
    """Pretrain (or reuse) ``name``'s tiny base model and measure its groups on the eval prompts."""
    factory, max_new = TASKS[name]
    task = load_factory(factory)(seed=seed, **task_kw)
    recipe = recipe or default_recipe(name)
    start = time.perf_counter()
    path = pretrain_tiny(task, recipe, progress=progress)
    pretrain_s = time.perf_counter() - start
    prompts = [ex.prompt for ex in task.split("eval")[:n_prompts]]
    groups = sample(path, prompts, group_size, max_new_tokens=max_new, seed=seed)
    for prompt, group in list(zip(prompts, groups, strict=True))[:show]:
        print(repr(prompt), "->", group)
    return {**group_stats(task, groups), "pretrain_s": pretrain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 oversubscribe a shared CPU)")
    parser.add_argument("--show", type=int, default=0, help="print this many sampled groups per task")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.tasks:
        try:
            stats = base_quality(name, n_prompts=args.prompts, group_size=args.group_size, show=args.show)
        except ModuleNotFoundError as err:
            print(f"{name:15s} skipped ({err})")
            continue
        print(f"{name:15s} " + "  ".join(f"{k}={v:.3f}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
