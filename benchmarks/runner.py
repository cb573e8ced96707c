"""Train every algorithm from the same base model under the same budget, over seeds, and record it.

Layout of an output directory::

    base/<task>/                      the base checkpoint (copied path for the tiny model's cache)
    results/<task>/<entry>/seed<k>.json   one finished cell, written atomically
    base_eval/<task>/seed<k>.json     the base model's eval completions (for NAG), metrics and per-prompt records
    tensorboard/<task>/<entry>/seed<k>/
    report.md, report.json, *.png

A rerun skips every cell whose result file is valid and was produced by the same settings; a corrupt
or stale file is set aside (renamed ``*.corrupt``) and the cell is run again. A crash loses at most the
cell in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import algos
import textenv
from algos import Policy
from benchmarks.config import AlgoSpec, BenchConfig, TaskSpec

SCHEMA = 2  # 2: per-prompt eval records (``examples``, ``base_examples``) for paired statistics
REQUIRED = {"schema", "key", "task", "algorithm", "algo", "seed", "metrics", "base_metrics", "history",
            "tokens_generated", "tokens_trained", "optimizer_steps", "wall_time_s", "config"}


def slug(task_id: str) -> str:
    return task_id.replace("/", "__")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_result(path: Path, key: str) -> dict[str, Any] | None:
    """A finished cell's result, or None when it must be (re)run. Corrupt files are set aside, loudly."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        problem = None
        if not isinstance(result, dict) or not set(result) >= REQUIRED:
            problem = f"missing fields {sorted(REQUIRED - set(result or {}))}"
        elif result["schema"] != SCHEMA:
            problem = f"schema {result['schema']} != {SCHEMA}"
        elif result["key"] != key:
            problem = "produced by different settings"
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
        result, problem = None, f"not valid JSON ({err})"
    if problem is None:
        return result
    aside = path.with_suffix(f".corrupt-{int(time.time())}")
    path.rename(aside)
    print(f"! {path}: {problem}; moved to {aside.name} and running the cell again", flush=True)
    return None


def cell_key(config: BenchConfig, task: TaskSpec, algo: AlgoSpec, seed: int) -> str:
    """A hash of everything that determines a cell's result."""
    payload = {"schema": SCHEMA, "base": [config.base_model, config.base_options], "task": [task.id, task.kwargs],
               "budget": asdict(task.budget), "eval": asdict(config.eval), "algorithm": algo.algorithm,
               "hyperparameters": algo.hyperparameters, "sft_steps": algo.sft_steps, "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_policy_path(config: BenchConfig, task: textenv.Task, out: Path) -> str:
    """The one base checkpoint every algorithm of this task starts from."""
    if config.base_model != "tiny":
        return config.base_model
    from algos.tiny import TinyRecipe, default_recipe, pretrain_tiny

    recipe = default_recipe(task.name)
    if config.base_options.get("recipe"):
        recipe = TinyRecipe(**{**asdict(recipe), **config.base_options["recipe"]})
    return str(pretrain_tiny(task, recipe))


def load_policy(config: BenchConfig, path: str) -> Policy:
    options = {k: v for k, v in config.base_options.items() if k in {"dtype", "device", "trust_remote_code"}}
    return Policy.from_pretrained(path, **options)


def agent_config(algo: AlgoSpec, budget, seed: int) -> dict[str, Any]:
    """The algorithm's hyperparameters plus the budget every algorithm shares."""
    fields = algos.get_algorithm(algo.algorithm).config_class.__dataclass_fields__
    shared = {"seed": seed, "batch_size": budget.prompts_per_step, "max_new_tokens": budget.max_new_tokens}
    if "group_size" in fields:
        shared["group_size"] = budget.group_size
    return {**algo.hyperparameters, **shared}


def evaluate_base(config: BenchConfig, env: Any, policy: Policy, budget, seed: int, out: Path) -> dict[str, Any]:
    """The base model's eval completions and metrics for this (task, seed), computed once and cached."""
    path = out / "base_eval" / slug(env.spec.id) / f"seed{seed}.json"
    key = hashlib.sha256(json.dumps([SCHEMA, config.base_model, config.base_options, asdict(config.eval),
                                     budget.max_new_tokens, seed], default=str).encode()).hexdigest()[:16]
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached
        except json.JSONDecodeError:
            pass
    examples = env.unwrapped.task.split("eval")[:config.eval.prompts]
    completions = policy.generate([ex.prompt for ex in examples], temperature=config.eval.temperature,
                                  top_p=config.eval.top_p, max_new_tokens=budget.max_new_tokens,
                                  seed=config.eval.seed + seed).texts
    metrics, records = textenv.evaluate_examples(env.unwrapped, examples, completions)
    record = {"key": key, "completions": completions, "metrics": metrics, "examples": records}
    write_json_atomic(path, record)
    return record


def write_hparams(log_dir: Path, hyperparameters: dict[str, Any], algo: AlgoSpec, budget,
                  metrics: dict[str, float]) -> None:
    """The run's hyperparameters and final eval metrics as a TensorBoard HParams entry in its own folder."""
    from torch.utils.tensorboard import SummaryWriter

    def scalar(v: Any) -> Any:
        return v if isinstance(v, bool | int | float | str) else json.dumps(v, default=str)

    hparams = {"entry": algo.name, "algorithm": algo.algorithm, "sft_steps": algo.sft_steps,
               **{f"budget/{k}": v for k, v in asdict(budget).items()},
               **{k: scalar(v) for k, v in hyperparameters.items() if v is not None}}
    final = {f"hparam/{k}": v for k, v in metrics.items() if k.rpartition("/")[2] != "n"}
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_hparams(hparams, final, run_name=".")


def run_cell(config: BenchConfig, task: TaskSpec, algo: AlgoSpec, seed: int, env: Any, base_path: str,
             base: dict[str, Any], out: Path, progress: bool = True) -> dict[str, Any]:
    """Train one (task, algorithm, seed) from the base checkpoint and evaluate it."""
    budget = task.budget
    torch.manual_seed(seed)
    policy = load_policy(config, base_path)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    if algo.sft_steps:
        sft = algos.make("sft", policy, seed=seed, batch_size=budget.prompts_per_step,
                         max_new_tokens=budget.max_new_tokens)
        history += [{**h, "phase": "sft"} for h in sft.learn(env, algo.sft_steps, progress=progress)]
    agent = algos.make(algo.algorithm, policy, **agent_config(algo, budget, seed))
    evaluation = {"num_prompts": config.eval.prompts, "seed": config.eval.seed + seed,
                  "temperature": config.eval.temperature, "top_p": config.eval.top_p}
    log_dir = out / "tensorboard" / slug(task.id) / algo.name / f"seed{seed}"
    rl_history = agent.learn(env, budget.steps, eval_env=env, eval_every=config.eval.every,
                             eval_kwargs=evaluation, log_dir=log_dir, progress=progress)
    # After an SFT warm start the RL steps continue its count, so curves read left to right.
    history += [{**h, "step": h["step"] + algo.sft_steps} for h in rl_history]
    wall = time.perf_counter() - start
    # agent.evaluate's generation, kept here so the per-prompt records are saved beside the means.
    examples = env.unwrapped.task.split("eval")[:config.eval.prompts]
    completions = agent.act([ex.prompt for ex in examples], seed=evaluation["seed"],
                            temperature=config.eval.temperature, top_p=config.eval.top_p)
    metrics, records = textenv.evaluate_examples(env.unwrapped, examples, completions, base["completions"])
    write_hparams(log_dir, agent.config.to_dict(), algo, budget, metrics)
    return {
        "schema": SCHEMA, "key": cell_key(config, task, algo, seed), "task": task.id, "algorithm": algo.name,
        "algo": algo.algorithm, "seed": seed, "metrics": metrics, "base_metrics": base["metrics"],
        "history": history, "examples": records, "base_examples": base.get("examples"),
        "subset_key": env.unwrapped.task.subset_key,
        "tokens_generated": sum(h.get("tokens/generated", 0.0) for h in history),
        "tokens_trained": sum(h.get("tokens/trained", 0.0) for h in history),
        "optimizer_steps": len(history), "sft_steps": algo.sft_steps, "wall_time_s": wall,
        "config": {"base_model": config.base_model, "base_path": base_path, "budget": asdict(budget),
                   "eval": asdict(config.eval), "hyperparameters": agent.config.to_dict()},
    }


def run(config: BenchConfig, out: str | Path, *, progress: bool = True,
        log: Callable[[str], None] = lambda s: print(s, flush=True)) -> list[dict[str, Any]]:
    """Run every missing cell of ``config`` into ``out``; returns all results (old and new)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"path": config.path, "config": config.raw})
    cells = [(t, a, s) for t in config.tasks for s in config.seeds for a in config.algorithms]
    results, done = [], 0
    for task in config.tasks:
        env = textenv.make(task.id, **task.kwargs)
        base_path = None
        for seed in config.seeds:
            base = None
            for algo in config.algorithms:
                done += 1
                path = out / "results" / slug(task.id) / algo.name / f"seed{seed}.json"
                key = cell_key(config, task, algo, seed)
                result = read_result(path, key)
                label = f"[{done}/{len(cells)}] {task.id} {algo.name} seed={seed}"
                if result is not None:
                    log(f"{label}: done earlier, skipped")
                    results.append(result)
                    continue
                if base_path is None:
                    log(f"base model for {task.id}: {config.base_model}")
                    base_path = base_policy_path(config, env.unwrapped.task, out)
                if base is None:
                    base = evaluate_base(config, env, load_policy(config, base_path), task.budget, seed, out)
                log(f"{label}: training {task.budget.steps} steps")
                result = run_cell(config, task, algo, seed, env, base_path, base, out, progress=progress)
                write_json_atomic(path, result)
                m = result["metrics"]
                log(f"{label}: reward {m.get('reward', float('nan')):.3f}, ras {m.get('ras', float('nan')):.3f}, "
                    f"nag {m.get('nag', float('nan')):+.3f} ({result['wall_time_s']:.1f}s)")
                results.append(result)
    return results


def load_results(out: str | Path) -> list[dict[str, Any]]:
    """Every valid result file under ``out/results`` (corrupt ones are reported and skipped)."""
    results = []
    for path in sorted(Path(out).glob("results/*/*/seed*.json")):
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            print(f"! {path}: not valid JSON ({err}); left out of the report", flush=True)
            continue
        if not isinstance(result, dict) or not set(result) >= REQUIRED:
            print(f"! {path}: not a complete result; left out of the report", flush=True)
            continue
        results.append(result)
    return results
