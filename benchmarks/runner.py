"""Train every algorithm from the same base model under the same budget, over seeds, and record it.

Layout of an output directory::

    base/<task>/                      the base checkpoint (copied path for the tiny model's cache)
    results/<task>/<entry>/seed<k>.json   one finished cell, written atomically
    base_eval/<task>/seed<k>.json     the base model's eval completions (for NAG), metrics and per-prompt records
    tensorboard/<task>/<entry>/seed<k>/
    report.md, report.json, *.png

A rerun skips every cell whose result file is valid and was produced by the same settings; a corrupt
or stale file is set aside (renamed ``*.corrupt-<time>``) and the cell is run again, with its TensorBoard
folder cleared first. A crash loses at most the cells in flight. Every write goes through ``out_path``,
which refuses any path that would leave the output folder.

``run`` plans the cells, prepares base checkpoints and base evals here, then hands each cell to an
executor (``benchmarks.executors``: this process, local worker processes or Ray) as a picklable
``CellJob``; ``execute_cell`` trains it with a fixed torch thread count and writes its result file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

import algos
import textenv
from algos import Policy, smollm2
from algos.errors import OutputError, cleanup, output_folder_problem, writing
from algos.fields import accepts, check_bounds, read_record
from algos.multiturn_eval import eval_rows, evaluate_episodes, multiturn_env
from benchmarks import executors
from benchmarks.config import AlgoSpec, BenchConfig, BenchConfigError, TaskSpec, agent_settings, path_component

SCHEMA = 2  # 2: per-prompt eval records (``examples``, ``base_examples``) for paired statistics
Metrics = dict[str, float | None]
Records = list[dict[str, Any]]


@dataclass(frozen=True)
class ResultFile:
    """The keys of a cell's result file that the runner and the report read, and their types; a file that
    does not match is never trusted (``file_problem``): it is set aside and the cell redone."""

    schema: int
    key: str  # cell_key of the settings that produced it
    task: str
    algorithm: str  # the config's entry name
    algo: str  # the registered algorithm
    seed: int
    metrics: Metrics
    base_metrics: Metrics
    history: Records  # one record per optimiser step, each with an integer "step"
    tokens_generated: float
    tokens_trained: float
    optimizer_steps: int
    wall_time_s: float
    config: dict[str, Any]
    examples: Records | None = None  # per-prompt eval records (schema 2)
    base_examples: Records | None = None
    subset_key: str | None = None
    sft_steps: int = 0
    multiturn: bool = False  # a multi-turn task: examples are episode records (``EpisodeRecord``)

    def __post_init__(self) -> None:
        for name in ("seed", "optimizer_steps", "sft_steps", "tokens_generated", "tokens_trained", "wall_time_s"):
            check_bounds(f"key {name!r}", getattr(self, name), BenchConfigError, ge=0)
        bad = next((i for i, row in enumerate(self.history) if not accepts(int, row.get("step"))), None)
        if bad is not None:
            raise BenchConfigError(f"key 'history': record {bad} has no integer 'step'")
        if self.multiturn:
            check_episode_metrics("metrics", self.metrics)
            check_episode_metrics("base_metrics", self.base_metrics)
            check_episode_records("examples", self.examples, self.metrics)
            check_episode_records("base_examples", self.base_examples, self.base_metrics)


@dataclass(frozen=True)
class EpisodeRecord:
    """One eval episode of a multi-turn result (``algos.multiturn_eval.episode_record``): what the report and
    its paired statistics read. Values are per episode; ``tool_success`` is None without a tool call."""

    index: int  # the eval row
    prompt: str  # the first messages, rendered: the pairing check of the paired statistics
    completion: str  # the rest of the conversation, rendered
    reward: float  # the episode's return
    success_rate: float  # 1 or 0
    turns: float
    invalid_rate: float
    tool_calls: float
    tool_success: float | None = None
    nag: float | None = None

    def __post_init__(self) -> None:
        check_bounds("key 'index'", self.index, BenchConfigError, ge=0)
        for name in ("success_rate", "invalid_rate", "tool_success"):
            check_bounds(f"key {name!r}", getattr(self, name), BenchConfigError, ge=0, le=1)
        for name in ("turns", "tool_calls"):
            check_bounds(f"key {name!r}", getattr(self, name), BenchConfigError, ge=0)
        check_bounds("key 'nag'", self.nag, BenchConfigError, ge=-1, le=1)


# What every multi-turn result's metrics hold (tool_success and nag only when they apply).
EPISODE_METRICS_REQUIRED = ("n", "reward", "success_rate", "turns", "invalid_rate")


def check_episode_metrics(key: str, metrics: Metrics) -> None:
    """A multi-turn result's ``key`` (metrics or base_metrics) has every metric an eval of episodes gives."""
    missing = [m for m in EPISODE_METRICS_REQUIRED if not isinstance(metrics.get(m), int | float)]
    if missing:
        raise BenchConfigError(f"key {key!r}: a multi-turn result needs the metric{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(map(repr, missing))} (algos.multiturn_eval)")


def check_episode_records(key: str, records: Records | None, metrics: Metrics) -> None:
    """A multi-turn result's ``key`` (examples or base_examples) is one valid ``EpisodeRecord`` per episode."""
    if not records:
        raise BenchConfigError(f"key {key!r}: a multi-turn result needs its per-episode eval records, got "
                               f"{records!r}")
    for i, record in enumerate(records):
        try:
            read_record(EpisodeRecord, record, "", BenchConfigError)
        except BenchConfigError as err:
            raise BenchConfigError(f"key {key!r}: episode record {i}: {err}") from None
    if len(records) != metrics.get("n"):
        raise BenchConfigError(f"key {key!r}: {len(records)} episode records for n = {metrics.get('n')} eval episodes")


@dataclass(frozen=True)
class BaseEvalFile:
    """A cached base eval (``base_eval/<task>/seed<k>.json``): its key, completions, metrics and records."""

    key: str  # base_eval_key of the settings that produced it
    completions: list[str]  # on a multi-turn task: each episode's conversation after its first messages
    metrics: Metrics
    examples: Records | None = None
    multiturn: bool = False

    def __post_init__(self) -> None:
        if self.multiturn:
            check_episode_metrics("metrics", self.metrics)
            check_episode_records("examples", self.examples, self.metrics)


REQUIRED = {f.name for f in fields(ResultFile) if f.default is MISSING}


def file_problem(record_type: type, data: Any) -> str | None:
    """What is wrong with ``data`` read back from a file of ``record_type`` (None if nothing): a missing
    key or a key of the wrong type, named, checked by the same validator as the Agent configs."""
    try:
        read_record(record_type, data, "", BenchConfigError)
    except BenchConfigError as err:
        return str(err)
    return None


def slug(task_id: str) -> str:
    return path_component(task_id)


def out_path(out: str | Path, *parts: str) -> Path:
    """``out/part/...`` where each part is one plain folder or file name: no write ever leaves ``out``."""
    path = Path(out, *parts)
    root = os.path.abspath(out)
    bad = [p for p in parts if p in ("", ".", "..") or Path(p).name != p or "\\" in p]
    if bad or os.path.commonpath([root, os.path.abspath(path)]) != root:
        raise BenchConfigError(f"refusing to write {str(path)!r}: {bad[0] if bad else path!r} would leave the "
                               f"output folder {str(out)!r}")
    return path


def check_writable(folder: Path) -> None:
    """Fail now, before a cell trains, if its result could not be written afterwards."""
    problem = output_folder_problem(folder)
    if problem is not None:
        raise OutputError(f"{folder}: cannot write results here ({problem}); nothing was trained")


def set_aside(path: Path, problem: str, then: str) -> None:
    """Rename a bad file to ``*.corrupt-<time>`` (kept for inspection, never read again) and say so."""
    aside = path.with_suffix(f".corrupt-{int(time.time())}")
    path.rename(aside)
    print(f"! {path}: {problem}; moved to {aside.name} and {then}", flush=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path, "result file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        # A failed write leaves the old file and no litter (and a failed removal never hides why).
        with cleanup(lambda: tmp.unlink(missing_ok=True), f"removing the temp file {tmp}", only_on_error=True):
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
        problem = file_problem(ResultFile, result)
        if problem is None and result["schema"] != SCHEMA:
            problem = f"schema {result['schema']} != {SCHEMA}"
        elif problem is None and result["key"] != key:
            problem = "produced by different settings"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        result, problem = None, f"not valid JSON ({err})"
    if problem is None:
        return result
    set_aside(path, problem, "running the cell again")
    return None


def cell_key(config: BenchConfig, task: TaskSpec, algo: AlgoSpec, seed: int) -> str:
    """A hash of everything that determines a cell's result."""
    base = [config.base_model, config.base_options]
    if config.base_model != "tiny":  # a local checkpoint retrained in place makes its cells stale
        base.append(checkpoint_identity(config.base_model))
    payload = {"schema": SCHEMA, "base": base, "task": [task.id, task.kwargs],
               "budget": asdict(task.budget), "eval": asdict(config.eval), "algorithm": algo.algorithm,
               "hyperparameters": algo.hyperparameters, "sft_steps": algo.sft_steps, "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_policy_path(config: BenchConfig, task: textenv.Task, out: Path) -> str:
    """The one base checkpoint every algorithm of this task starts from ("smollm2": its cached folder)."""
    if config.base_model == smollm2.NAME:
        return str(smollm2.smollm2_path())
    if config.base_model != "tiny":
        return config.base_model
    from algos.tiny import TinyRecipe, default_recipe, pretrain_tiny

    recipe = default_recipe(task.name)
    if config.base_options.get("recipe"):
        recipe = TinyRecipe(**{**asdict(recipe), **config.base_options["recipe"]})
    return str(pretrain_tiny(task, recipe))


def load_policy(config: BenchConfig, path: str) -> Policy:
    keys = {"dtype", "device", "trust_remote_code", "chat", "truncate_prompts", "lora", "bf16",
            "gradient_checkpointing"}
    options = {k: v for k, v in config.base_options.items() if k in keys}
    return Policy.from_pretrained(path, **options)


def agent_config(algo: AlgoSpec, budget, seed: int) -> dict[str, Any]:
    """The algorithm's hyperparameters plus the budget every algorithm shares."""
    return agent_settings(algos.get_algorithm(algo.algorithm).config_class, algo.hyperparameters, budget, seed)


def checkpoint_identity(name_or_path: str) -> list[Any]:
    """A local checkpoint's path and a fingerprint of its files (name, size, mtime); a hub name as is."""
    folder = Path(name_or_path)
    if not name_or_path or not folder.is_dir():
        return [name_or_path]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [str(folder.resolve())] + [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
                                      for p in files]


def base_fingerprint(path: str) -> str | None:
    """The first 16 hex digits of the SHA-256 of a local base checkpoint's weights (None for a hub name):
    reports print it so that two runs can be told apart by the model they started from."""
    from algos.tiny import weights_sha256

    return weights_sha256(path)[:16] if (Path(path) / "model.safetensors").is_file() else None


def base_eval_key(config: BenchConfig, env: Any, policy: Policy, budget, seed: int) -> str:
    """A hash of everything the base eval depends on: task and its kwargs, checkpoint, eval settings, seed."""
    payload = [SCHEMA, env.spec.id, env.spec.kwargs, config.base_model, config.base_options,
               checkpoint_identity(policy.model.name_or_path), asdict(config.eval), budget.max_new_tokens, seed]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_base_eval(path: Path, key: str, n: int) -> dict[str, Any] | None:
    """A cached base eval made with ``key`` for ``n`` prompts, else None; a corrupt file is set aside."""
    if not path.exists():
        return None
    try:
        cached = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        set_aside(path, f"not valid JSON ({err})", "evaluating the base model again")
        return None
    problem = file_problem(BaseEvalFile, cached)
    if problem is not None:
        set_aside(path, f"not a base eval ({problem})", "evaluating the base model again")
        return None
    return cached if cached["key"] == key and len(cached["completions"]) == n else None


def evaluate_base(config: BenchConfig, env: Any, policy: Policy, budget, seed: int, out: Path) -> dict[str, Any]:
    """The base model's eval completions and metrics for this (task, seed), computed once and cached; on a
    multi-turn task its episodes (``algos.multiturn_eval``), ``max_new_tokens`` per turn."""
    path = out_path(out, "base_eval", slug(env.spec.id), f"seed{seed}.json")
    key = base_eval_key(config, env, policy, budget, seed)
    episodes = multiturn_env(env) is not None
    examples = [] if episodes else env.unwrapped.task.split("eval")[:config.eval.prompts]
    cached = read_base_eval(path, key, eval_rows(env, "eval", config.eval.prompts) if episodes else len(examples))
    if cached is not None:
        return cached
    if episodes:
        metrics, records = evaluate_episodes(policy, env, num_prompts=config.eval.prompts, seed=config.eval.seed + seed,
                                             temperature=config.eval.temperature, top_p=config.eval.top_p,
                                             max_new_tokens=budget.max_new_tokens)
        completions = [r["completion"] for r in records]
    else:
        completions = policy.generate([ex.prompt for ex in examples], temperature=config.eval.temperature,
                                      top_p=config.eval.top_p, max_new_tokens=budget.max_new_tokens,
                                      seed=config.eval.seed + seed).texts
        metrics, records = textenv.evaluate_examples(env.unwrapped, examples, completions)
    record = {"key": key, "completions": completions, "metrics": metrics, "examples": records, "multiturn": episodes}
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
        history += [{**h, "phase": "sft"} for h in sft.learn(env, max_steps=algo.sft_steps, progress=progress)]
    agent = algos.make(algo.algorithm, policy, **agent_config(algo, budget, seed))
    evaluation = {"num_prompts": config.eval.prompts, "seed": config.eval.seed + seed,
                  "temperature": config.eval.temperature, "top_p": config.eval.top_p}
    log_dir = out_path(out, "tensorboard", slug(task.id), algo.name, f"seed{seed}")
    shutil.rmtree(log_dir, ignore_errors=True)  # a killed or stale attempt's logs must not mix in
    rl_history = agent.learn(env, max_steps=budget.steps, eval_env=env, eval_every=config.eval.every,
                             eval_kwargs=evaluation, log_dir=log_dir, progress=progress)
    # After an SFT warm start the RL steps continue its count, so curves read left to right.
    history += [{**h, "step": h["step"] + algo.sft_steps} for h in rl_history]
    wall = time.perf_counter() - start
    # agent.evaluate's generation, kept here so the per-prompt (per-episode) records are saved beside the means.
    episodes = multiturn_env(env) is not None
    if episodes:
        metrics, records = evaluate_episodes(
            agent.policy, env, num_prompts=config.eval.prompts, seed=evaluation["seed"], base_records=base["examples"],
            **agent.generation_settings(temperature=config.eval.temperature, top_p=config.eval.top_p))
    else:
        examples = env.unwrapped.task.split("eval")[:config.eval.prompts]
        completions = agent.act([ex.prompt for ex in examples], seed=evaluation["seed"],
                                temperature=config.eval.temperature, top_p=config.eval.top_p)
        metrics, records = textenv.evaluate_examples(env.unwrapped, examples, completions, base["completions"])
    write_hparams(log_dir, agent.config.to_dict(), algo, budget, metrics)
    return {
        "schema": SCHEMA, "key": cell_key(config, task, algo, seed), "task": task.id, "algorithm": algo.name,
        "algo": algo.algorithm, "seed": seed, "metrics": metrics, "base_metrics": base["metrics"],
        "history": history, "examples": records, "base_examples": base.get("examples"),
        "subset_key": getattr(env.unwrapped.task, "subset_key", None), "multiturn": episodes,
        "tokens_generated": sum(h.get("tokens/generated", 0.0) for h in history),
        "tokens_trained": sum(h.get("tokens/trained", 0.0) for h in history),
        "optimizer_steps": len(history), "sft_steps": algo.sft_steps, "wall_time_s": wall,
        "config": {"base_model": config.base_model, "base_path": base_path,
                   "base_sha256": base_fingerprint(base_path), "budget": asdict(budget),
                   "eval": asdict(config.eval), "hyperparameters": agent.config.to_dict(),
                   **({"max_turns": multiturn_env(env).max_turns} if episodes else {})},
    }


@dataclass(frozen=True)
class CellJob:
    """Everything one cell needs, picklable, so that any executor can run it anywhere."""

    config: BenchConfig
    task: TaskSpec
    algo: AlgoSpec
    seed: int
    base_path: str
    base: dict[str, Any]  # the base model's eval record for (task, seed)
    out: Path
    progress: bool = False

    @property
    def label(self) -> str:
        return f"{self.task.id} {self.algo.name} seed={self.seed}"


class CellsFailed(RuntimeError):
    """Some cells did not finish; every other cell did and was written. A rerun redoes only the failed ones."""

    def __init__(self, failures: list[tuple[str, BaseException]], results: list[dict[str, Any]]):
        self.failures, self.results = failures, results
        lines = "\n".join(f"  {label}: {type(err).__name__}: {err}" for label, err in failures)
        super().__init__(f"{len(failures)} cell(s) failed (rerun the same command to redo only them):\n{lines}")


def result_path(out: Path, task: TaskSpec, algo: AlgoSpec, seed: int) -> Path:
    return out_path(out, "results", slug(task.id), algo.name, f"seed{seed}.json")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads: CPU reductions split by thread count, so results depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute_cell(job: CellJob) -> dict[str, Any]:
    """Run one cell and write its result file atomically: the same code in this process, a worker or Ray."""
    path = result_path(job.out, job.task, job.algo, job.seed)
    check_writable(path.parent)
    with torch_threads(job.config.resources.cpus_per_cell):
        env = textenv.make(job.task.id, **job.task.kwargs)
        result = run_cell(job.config, job.task, job.algo, job.seed, env, job.base_path, job.base, job.out,
                          progress=job.progress)
    write_json_atomic(path, result)
    return result


def plan(config: BenchConfig, out: Path, log: Callable[[str], None]) -> tuple[dict[int, dict[str, Any]],
                                                                                  dict[int, tuple]]:
    """Every cell in order, split into finished results and cells still to run, both keyed by position."""
    cells = [(t, a, s) for t in config.tasks for s in config.seeds for a in config.algorithms]
    finished, todo = {}, {}
    for i, (task, algo, seed) in enumerate(cells):
        result = read_result(result_path(out, task, algo, seed), cell_key(config, task, algo, seed))
        if result is None:
            todo[i] = (task, algo, seed)
        else:
            log(f"[{i + 1}/{len(cells)}] {task.id} {algo.name} seed={seed}: done earlier, skipped")
            finished[i] = result
    return finished, todo


def prepare_bases(config: BenchConfig, todo: dict[int, tuple], out: Path,
                  log: Callable[[str], None]) -> dict[tuple[str, int], tuple[str, dict[str, Any]]]:
    """Base checkpoint once per task and base eval once per (task, seed), for the cells still to run."""
    bases: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
    with torch_threads(config.resources.cpus_per_cell):
        for task in config.tasks:
            seeds = [s for t, _, s in todo.values() if t.id == task.id]
            if not seeds:
                continue
            env = textenv.make(task.id, **task.kwargs)
            log(f"base model for {task.id}: {config.base_model}")
            base_path = base_policy_path(config, env.unwrapped.task, out)
            for seed in dict.fromkeys(seeds):
                base = evaluate_base(config, env, load_policy(config, base_path), task.budget, seed, out)
                bases[task.id, seed] = (base_path, base)
    return bases


def run(config: BenchConfig, out: str | Path, *, progress: bool = True,
        log: Callable[[str], None] = lambda s: print(s, flush=True),
        executor: executors.Executor | None = None) -> list[dict[str, Any]]:
    """Run every missing cell of ``config`` into ``out``; returns all results (old and new), in plan order.

    Plan the cells, prepare the base models and base evals they need here, then fan the cells out
    through ``executor`` (default: one after the other in this process). Raises ``CellsFailed`` after
    every other cell has finished if any cell failed.
    """
    out = Path(out)
    check_writable(out)
    write_json_atomic(out_path(out, "config.json"), {"path": config.path, "config": config.raw})
    finished, todo = plan(config, out, log)
    bases = prepare_bases(config, todo, out, log)
    executor = executor or executors.InProcess()
    in_process = isinstance(executor, executors.InProcess)
    jobs = [CellJob(config, task, algo, seed, *bases[task.id, seed], out, progress=progress and in_process)
            for task, algo, seed in todo.values()]
    position = {job.label: i for job, i in zip(jobs, todo, strict=True)}
    total, failures = len(finished) + len(todo), []

    def status() -> str:
        done = len(finished) + len(failures)
        running = min(executor.slots, total - done)
        return f"[{done}/{total} done, {running} running, {total - done - running} left]"

    def say_and_execute(job: CellJob) -> dict[str, Any]:  # in this process only: workers cannot log here
        log(f"{status()} {job.label}: training {job.task.budget.steps} steps")
        return execute_cell(job)

    if not in_process:
        log(f"{status()} running {len(jobs)} cell(s) on {executor.name}, {executor.slots} at a time")
    cell = say_and_execute if in_process else execute_cell
    for job, outcome in executor.map_unordered(cell, jobs, on_idle=lambda: log(f"{status()} still running")):
        if isinstance(outcome, BaseException):
            failures.append((job.label, outcome))
            log(f"{status()} {job.label}: FAILED\n" + "".join(traceback.format_exception(outcome)).rstrip())
            continue
        finished[position[job.label]] = outcome
        m, nan = outcome["metrics"], float("nan")
        second = (f"success {m.get('success_rate', nan):.3f}, turns {m.get('turns', nan):.2f}"
                  if outcome.get("multiturn") else f"ras {m.get('ras', nan):.3f}")
        log(f"{status()} {job.label}: reward {m.get('reward', nan):.3f}, {second}, nag {m.get('nag', nan):+.3f} "
            f"({outcome['wall_time_s']:.1f}s)")
    results = [finished[i] for i in sorted(finished)]
    if failures:
        raise CellsFailed(failures, results)
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
        problem = file_problem(ResultFile, result)
        if problem is not None:
            print(f"! {path}: not a complete result ({problem}); left out of the report", flush=True)
            continue
        results.append(result)
    return results
