"""Benchmark configs: TOML files parsed (never evaluated) and checked key by key.

Every error names the file and the offending key. A config looks like::

    title = "Quick benchmark"
    seeds = [0, 1, 2]
    target = "grao"                   # whose relative improvement the report leads with

    [base]
    model = "tiny"                    # the project's tiny model pretrained per task, "smollm2" (the embedded
                                      # SmolLM2-135M-Instruct, see algos.smollm2), or an HF name/path
    # dtype, device, trust_remote_code; chat = true (chat template for plain prompts); truncate_prompts;
    # bf16 = true (bfloat16 mixed precision); gradient_checkpointing = true (recompute activations);
    # [base.lora] r, alpha, dropout, target_modules: train a LoRA adapter (peft) instead of all weights

    [budget]                          # identical for every algorithm
    steps = 30                        # optimiser steps (training iterations) per run
    prompts_per_step = 8
    group_size = 8                    # G samples per prompt for the online algorithms
    max_new_tokens = 16

    [eval]
    prompts = 64                      # the first 64 eval rows (all of them when the split is shorter)
    temperature = 0.7
    seed = 1234
    every = 10                        # learning-curve points

    [tasks."textenv/Arithmetic-v0"]   # per-task overrides of budget keys, and task kwargs
    max_new_tokens = 6
    [tasks."textenv/GuessNumber-v0"]  # a multi-turn task: max_new_tokens is per turn, one eval episode per row
    kwargs = { max_turns = 6 }        # env options (max_turns) and task arguments alike

    [algorithms.grao]                 # hyperparameters of algos.make("grao", ...)
    lr = 1e-4
    [algorithms.grao_no_imitation]
    algorithm = "grao"                # entry name != algorithm name
    imitation = false
    [algorithms.sft_grpo]
    algorithm = "grpo"
    sft_steps = 20                    # SFT-then-RL: SFT first, then the budget's steps of GRPO

    [resources]                       # what one cell gets, whatever the executor
    cpus_per_cell = 1                 # torch threads of every cell (and Ray's num_cpus per task)
    gpus_per_cell = 0                 # Ray's num_gpus per task (may be fractional); local workers ignore it

A multi-turn task (``textenv.MultiTurnTask``) takes only the algorithms whose Agent class declares
``multiturn = True`` (and SFT's, for an ``sft_steps`` entry); any other is refused here, naming the entry,
the algorithm and the task, rather than failing in its first training step.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import algos
import textenv

CONFIG_DIR = Path(__file__).parent / "configs"


class BenchConfigError(ValueError):
    """A benchmark config is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Budget:
    steps: int = 30
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 16


@dataclass(frozen=True)
class EvalSpec:
    prompts: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 1234
    every: int = 10


@dataclass(frozen=True)
class Resources:
    """What one cell gets. cpus_per_cell also fixes torch's thread count, which can change float results."""

    cpus_per_cell: int = 1
    gpus_per_cell: float = 0.0


@dataclass(frozen=True)
class TaskSpec:
    id: str
    budget: Budget
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AlgoSpec:
    name: str  # entry name in the config (e.g. "grao_no_imitation")
    algorithm: str  # registered algorithm (e.g. "grao")
    hyperparameters: dict[str, Any]
    sft_steps: int = 0


@dataclass(frozen=True)
class BenchConfig:
    title: str
    path: str
    seeds: list[int]
    base_model: str
    base_options: dict[str, Any]
    budget: Budget
    eval: EvalSpec
    tasks: list[TaskSpec]
    algorithms: list[AlgoSpec]
    target: str | None
    paper_protocol: bool
    raw: dict[str, Any]
    resources: Resources = field(default_factory=Resources)


_TOP = {"title", "seeds", "target", "paper_protocol", "base", "budget", "eval", "tasks", "algorithms", "resources"}
_BASE = {"model", "dtype", "device", "trust_remote_code", "recipe", "chat", "truncate_prompts", "lora", "bf16",
         "gradient_checkpointing"}
_LORA = {"r": (int, 1), "alpha": (float, 0), "dropout": (float, 0), "target_modules": (None, None)}
_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
# Entry names and task slugs become folders under --out: one plain component, never "..", "/" or "\\".
_SAFE_NAME = re.compile(r"[\w+-][\w.+-]*")
MAX_SEED = 2**31 - 1  # eval seeds add the run seed; both must stay valid generator seeds
# Task kwargs that name a folder the task writes its cache into.
_CACHE_KWARGS = {"cache", "cache_dir"}


def _is_multiturn(task_id: str) -> bool:
    """Whether ``task_id`` is registered as a multi-turn task (a ``MultiTurnTask`` class or instance; a factory
    function is not built here to find out, so one that returns a multi-turn task is not caught)."""
    factory = textenv.registry._ENVS[textenv.registry.resolve_id(task_id)][0]
    return isinstance(factory, textenv.MultiTurnTask) or (isinstance(factory, type)
                                                          and issubclass(factory, textenv.MultiTurnTask))


def _check_multiturn_support(where: str, section: str, algorithm: str, sft_steps: int, tasks: list[TaskSpec]) -> None:
    """Refuse an entry whose algorithm (or SFT warm start) cannot train on a multi-turn task of the config."""
    multiturn = [t.id for t in tasks if _is_multiturn(t.id)]
    if not multiturn:
        return
    trained = [(algorithm, "")] + ([("sft", f" (its sft_steps = {sft_steps} warm start)")] if sft_steps else [])
    for name, why in trained:
        cls = algos.get_algorithm(name)
        if not cls.multiturn:
            raise _fail(where, f"[{section}]: algorithm {name!r}{why} does not train on multi-turn envs yet "
                        f"({cls.__name__}.multiturn is False), and [tasks.\"{multiturn[0]}\"] is a multi-turn task "
                        "(textenv.MultiTurnTask); remove the entry or the task, or use an algorithm that declares "
                        "multiturn = True")


def _fail(where: str, message: str) -> BenchConfigError:
    return BenchConfigError(f"{where}: {message}")


def _check_keys(table: Any, allowed: set[str], where: str, section: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(where, f"[{section}] must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} in [{section}]; valid keys: {', '.join(sorted(allowed))}")
    return table


def _typed(value: Any, kind: type, where: str, key: str, minimum: float | None = None,
           maximum: float | None = None, above: float | None = None) -> Any:
    """``value`` as ``kind`` (an int is a fine float), finite, within ``[minimum, maximum]`` and ``> above``."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise _fail(where, f"{key} must be {_TYPES[kind]}, got {type(value).__name__} {value!r}")
    if kind is float and not math.isfinite(value):
        raise _fail(where, f"{key} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"{key} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _fail(where, f"{key} must be <= {maximum}, got {value}")
    if above is not None and value <= above:
        raise _fail(where, f"{key} must be > {above}, got {value}")
    return value


def path_component(name: str) -> str:
    """The folder name a task id or entry name becomes under --out (``textenv/X-v0`` -> ``textenv__X-v0``)."""
    return name.replace("/", "__")


def _check_name(name: Any, where: str, key: str, folder: str | None = None) -> str:
    """Refuse a name whose ``folder`` (itself unless given) is not one safe folder under --out ("../x", "/abs")."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name if folder is None else folder):
        raise _fail(where, f"{key}: {name!r} cannot name a folder under --out; use letters, digits, "
                    "'_', '-', '+' and '.' (not first)")
    return name


# [eval] bounds: (minimum, maximum, strictly above); everything else in [budget]/[eval] is an int >= 1.
_BOUNDS: dict[str, tuple[float | None, float | None, float | None]] = {
    "seed": (0, MAX_SEED, None), "every": (0, None, None),
    "temperature": (None, None, 0.0), "top_p": (None, 1.0, 0.0), "gpus_per_cell": (0, None, None),
}


def _dataclass_from(cls: type, table: dict[str, Any], where: str, section: str, defaults: Any = None) -> Any:
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(table, set(fields), where, section)
    values = dataclasses.asdict(defaults) if defaults is not None else {}
    for key, value in table.items():
        kind = {"int": int, "float": float}[fields[key].type]
        minimum, maximum, above = _BOUNDS.get(key, (1, None, None))
        values[key] = _typed(value, kind, where, f"[{section}] {key}", minimum, maximum, above)
    return cls(**values)


def _check_base_options(options: dict[str, Any], where: str) -> None:
    """[base] dtype names a torch dtype, device parses as a torch device, [base.recipe] fits TinyRecipe."""
    import dataclasses

    import torch

    from algos.tiny import TinyRecipe

    for key in ("trust_remote_code", "chat", "truncate_prompts", "bf16", "gradient_checkpointing"):
        if key in options:
            _typed(options[key], bool, where, f"[base] {key}")
    if "lora" in options:
        lora = _check_keys(options["lora"], set(_LORA), where, "base.lora")
        for key, (kind, minimum) in _LORA.items():
            if key in lora and kind is not None:
                _typed(lora[key], kind, where, f"[base.lora] {key}", minimum=minimum)
        modules = lora.get("target_modules", "all-linear")
        if not (isinstance(modules, str) or isinstance(modules, list) and modules
                and all(isinstance(m, str) for m in modules)):
            raise _fail(where, f"[base.lora] target_modules must be a string (e.g. 'all-linear') or a list of "
                        f"module names, got {modules!r}")
        if lora.get("dropout", 0) >= 1:
            raise _fail(where, f"[base.lora] dropout must be < 1, got {lora['dropout']}")
    if "dtype" in options:
        dtype = _typed(options["dtype"], str, where, "[base] dtype")
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise _fail(where, f"[base] dtype {dtype!r} is not a torch dtype name; e.g. float32, bfloat16, float16")
    if "device" in options:
        device = _typed(options["device"], str, where, "[base] device")
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise _fail(where, f"[base] device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): "
                        f"{err}") from err
    if "recipe" in options:
        fields = {f.name: f for f in dataclasses.fields(TinyRecipe)}
        recipe = _check_keys(options["recipe"], set(fields), where, "base.recipe")
        for key, value in recipe.items():
            kind = {"int": int, "float": float, "str": str, "bool": bool}[fields[key].type]
            minimum = None if kind in (str, bool) else 0 if kind is float or key in {"seed", "warmup_steps"} else 1
            _typed(value, kind, where, f"[base.recipe] {key}", minimum=minimum)
        if recipe.get("arch", "llama") not in ("llama", "gpt2"):
            raise _fail(where, f"[base.recipe] arch must be 'llama' or 'gpt2', got {recipe['arch']!r}")


def _check_cache_kwargs(kwargs: dict[str, Any], where: str, section: str) -> None:
    """A task kwarg naming a cache folder is a string, and not a file that is already there."""
    for key in _CACHE_KWARGS & set(kwargs):
        folder = _typed(kwargs[key], str, where, f"[{section}] kwargs.{key}")
        if not folder or Path(folder).exists() and not Path(folder).is_dir():
            raise _fail(where, f"[{section}] kwargs.{key} must name a folder, got {folder!r}")


def resolve_path(name_or_path: str | Path) -> Path:
    """A shipped config name ("quick", "paper", "ablation", "hh", "real") or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        shipped = CONFIG_DIR / f"{name_or_path}.toml"
        if shipped.exists():
            return shipped
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise BenchConfigError(f"no config file {str(name_or_path)!r} and no shipped config of that name "
                               f"(shipped: {names})")
    if not path.exists():
        raise BenchConfigError(f"config file not found: {path}")
    return path


def load(name_or_path: str | Path) -> BenchConfig:
    path = resolve_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise BenchConfigError(f"{path}: not valid TOML: {err}") from err
    return parse(raw, where=str(path))


def agent_settings(config_class: type[algos.AgentConfig], hyperparameters: dict[str, Any], budget: Budget,
                   seed: int) -> dict[str, Any]:
    """An algorithm's config values in a cell: its hyperparameters plus the budget every algorithm shares."""
    shared = {"seed": seed, "batch_size": budget.prompts_per_step, "max_new_tokens": budget.max_new_tokens}
    if "group_size" in config_class.__dataclass_fields__:
        shared["group_size"] = budget.group_size
    return {**hyperparameters, **shared}


def parse(raw: dict[str, Any], where: str = "<config>") -> BenchConfig:
    _check_keys(raw, _TOP, where, "top level")
    title = _typed(raw.get("title", Path(where).stem), str, where, "title")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           and 0 <= s <= MAX_SEED for s in seeds):
        raise _fail(where, f"seeds must be a non-empty list of integers in [0, {MAX_SEED}], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(where, f"seeds has duplicates: {seeds}")

    base = _check_keys(raw.get("base", {}), _BASE, where, "base")
    base_model = _typed(base.get("model", "tiny"), str, where, "[base] model")
    base_options = {k: v for k, v in base.items() if k != "model"}
    _check_base_options(base_options, where)

    budget = _dataclass_from(Budget, raw.get("budget", {}), where, "budget")
    evaluation = _dataclass_from(EvalSpec, raw.get("eval", {}), where, "eval")
    resources = _dataclass_from(Resources, raw.get("resources", {}), where, "resources")

    tasks_table = raw.get("tasks")
    if not isinstance(tasks_table, dict) or not tasks_table:
        raise _fail(where, "[tasks] must name at least one task, e.g. [tasks.\"textenv/Arithmetic-v0\"]")
    known = textenv.list_envs()
    tasks = []
    for task_id, table in tasks_table.items():
        section = f'tasks."{task_id}"'
        if task_id not in known:
            import difflib

            close = difflib.get_close_matches(task_id, known, n=3, cutoff=0.4)
            raise _fail(where, f"unknown task {task_id!r} in [{section}]"
                        + (f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"))
        table = dict(_check_keys(table, {*Budget.__dataclass_fields__, "kwargs"}, where, section))
        kwargs = table.pop("kwargs", {})
        if not isinstance(kwargs, dict):
            raise _fail(where, f"[{section}] kwargs must be a table")
        _check_name(task_id, where, f"[{section}]", folder=path_component(task_id))
        _check_cache_kwargs(kwargs, where, section)
        try:
            textenv.check_task_kwargs(task_id, **kwargs)
        except textenv.TaskError as err:
            raise _fail(where, f"[{section}] kwargs: {err}") from err
        tasks.append(TaskSpec(task_id, _dataclass_from(Budget, table, where, section, defaults=budget), kwargs))

    algo_table = raw.get("algorithms")
    if not isinstance(algo_table, dict) or not algo_table:
        raise _fail(where, "[algorithms] must name at least one algorithm, e.g. [algorithms.grao]")
    specs = []
    for name, table in algo_table.items():
        section = f"algorithms.{name}"
        _check_name(name, where, f"[{section}]")
        if not isinstance(table, dict):
            raise _fail(where, f"[{section}] must be a table")
        table = dict(table)
        algorithm = _typed(table.pop("algorithm", name), str, where, f"[{section}] algorithm")
        sft_steps = _typed(table.pop("sft_steps", 0), int, where, f"[{section}] sft_steps", minimum=0)
        if algorithm not in algos.list_algorithms():
            raise _fail(where, f"unknown algorithm {algorithm!r} in [{section}]; "
                        f"known: {', '.join(algos.list_algorithms())} (set algorithm = \"...\" for a named variant)")
        config_class = algos.get_algorithm(algorithm).config_class
        reserved = {"seed", "batch_size", "group_size", "max_new_tokens"} & set(table)
        if reserved:
            raise _fail(where, f"[{section}] sets {sorted(reserved)[0]!r}, which the benchmark controls "
                        "([budget] and seeds) so that every algorithm gets the same budget")
        try:
            config_class.from_dict(table, where=f"{where} [{section}]")
            for task in tasks:  # the config every cell will build: with the budget, e.g. GRPO's group_size >= 2
                config_class.from_dict(agent_settings(config_class, table, task.budget, seeds[0]),
                                       where=f"{where} [{section}] with the budget of [tasks.\"{task.id}\"]")
        except algos.ConfigError as err:
            raise BenchConfigError(str(err)) from err
        _check_multiturn_support(where, section, algorithm, sft_steps, tasks)
        specs.append(AlgoSpec(name, algorithm, table, sft_steps))

    target = raw.get("target", "grao" if "grao" in algo_table else None)
    if target is not None:
        _typed(target, str, where, "target")
    if target is not None and target not in algo_table:
        raise _fail(where, f"target {target!r} is not one of the [algorithms] entries: {', '.join(algo_table)}")
    paper = _typed(raw.get("paper_protocol", False), bool, where, "paper_protocol")
    return BenchConfig(title, where, seeds, base_model, base_options, budget, evaluation, tasks, specs,
                       target, paper, raw, resources)
