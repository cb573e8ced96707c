"""The Agent interface every algorithm implements, its registry and validated configs.

An algorithm subclasses :class:`Agent`, declares a config dataclass and writes two methods:
``make_batch(env, rng)`` says how a step's data is made (sampling, scoring, advantages, reference
log-probs; it runs without gradients) and ``loss(batch, totals)`` gives the loss of one micro-batch.
The shared step owns the optimisation: the repeat schedule (``num_iterations`` passes of
``num_minibatches`` optimiser steps), micro-batches with gradient accumulation, clipping and stepping.
A :class:`Batch` is split by whole prompt groups only, and every loss is normalised by the totals of
the whole optimiser step (:class:`StepTotals`), so a step in micro-batches equals the full-batch step.
Everything else is shared too: the training loop with progress, TensorBoard and JSONL logging,
evaluation, saving, checkpoints and resume. Each step draws its randomness from ``(seed, step)``, so
a resumed run replays exactly what an uninterrupted one would have done. How a step runs (one
process, DDP, FSDP2) is the business of the :class:`~algos.engine.Engine` injected into the agent: on
several processes each rank makes the batch of its share of the step's prompt groups, the engine
sums totals and gradients over ranks, every rank takes part in evaluation and saving, and rank 0
alone writes. Constructing an agent changes nothing outside it but what its engine prepares.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shutil
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

import textenv
from algos import fields
from algos.engine import Engine, make_engine
from algos.errors import run_cleanup
from algos.multiturn import Episodes, collect_demonstrations, collect_episodes, copies, multiturn_env
from algos.multiturn_eval import evaluate_episodes
from algos.policy import CheckpointError, EncodedBatch, Policy, Prompt, reading
from textenv.multiturn import MultiTurnEnv

# What learn/evaluate accept: a textenv env, possibly wrapped, or a make_vec env (see textenv.batched).
AnyEnv = gymnasium.Env | gymnasium.vector.VectorEnv


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and lists the valid ones."""


class AlgorithmNotFound(ValueError):
    """No algorithm is registered under that name; the message suggests close names."""


# ---------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters every algorithm shares. Defaults suit the tiny CPU models."""

    seed: int = 0  # every step's randomness comes from (seed, step)
    lr: float = 3e-4  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient-norm clipping before each optimiser step
    warmup_steps: int = 0  # linear learning-rate warm-up over this many training steps
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"  # decay after warm-up, to learn()'s end
    batch_size: int = 8  # prompts (or pairs) per training step
    max_new_tokens: int = 16  # length cap of sampled completions
    temperature: float = 0.7  # sampling temperature (online algorithms also score at it)
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # top-k sampling; 0 = no filter (log-probs are of the full distribution)
    repetition_penalty: float = 1.0  # HF's repetition penalty while sampling; 1.0 = none
    num_iterations: int = 1  # optimisation passes over each batch (GRPO's mu, PPO's epochs)
    num_minibatches: int = 1  # optimiser steps per pass, each on an equal share of the prompt groups
    micro_batch_size: int | None = None  # prompt groups per forward/backward (gradient accumulation); None = all
    engine: Literal["ddp", "fsdp"] = "ddp"  # how several processes train (one process trains alone): see algos.engine
    # Prompts per generate call, each chunk seeded by its offset in the step's batch (bounds generation memory;
    # with a divisor of batch_size / processes, a prompt's samples do not depend on the process count). None = all.
    generation_chunk: int | None = None

    def __post_init__(self) -> None:
        """Every option checked at construction (directly, through ``from_dict`` or ``algos.make``): its type
        first, then its range, so a wrong value fails here naming the key, not steps later in the loop."""
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            setattr(self, field.name, fields.checked(self._name(field.name), getattr(self, field.name),
                                                     hints[field.name], ConfigError))
        for key in ("seed", "warmup_steps", "top_k", "weight_decay"):
            self.require(key, ge=0)
        self.require("seed", le=MAX_SEED, why="torch.manual_seed takes seeds below 2**64")
        for key in ("lr", "temperature", "max_grad_norm", "repetition_penalty"):
            self.require(key, gt=0)
        self.require("top_p", gt=0)
        self.require("top_p", le=1)
        for key in ("batch_size", "max_new_tokens", "num_iterations", "num_minibatches", "micro_batch_size",
                    "generation_chunk"):
            self.require(key, ge=1)
        if self.num_minibatches > self.batch_size:
            raise ConfigError(f"{type(self).__name__}.num_minibatches ({self.num_minibatches}) must be <= batch_size "
                              f"({self.batch_size}): each minibatch needs a prompt group")

    def require(self, key: str, *, why: str = "", **bounds: float) -> None:
        """Refuse ``self.<key>`` outside ``bounds`` (``ge``, ``gt``, ``le``, ``lt``) with a ConfigError naming it."""
        fields.check_bounds(self._name(key), getattr(self, key), ConfigError, why=why, **bounds)

    def _name(self, key: str) -> str:
        return f"{type(self).__name__}.{key}"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str | None = None) -> AgentConfig:
        """Build from plain values (a TOML table, kwargs), checking names, types and choices; errors say
        ``where`` the values came from."""
        where_txt = f" in {where}" if where else ""
        if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
            raise ConfigError(f"{cls.__name__}{where_txt}: expected a table of option names, "
                              f"got {fields.short_repr(values)}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown {cls.__name__} key {key!r}{where_txt}; "
                                  f"valid keys: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except ConfigError as err:
            if not where:
                raise
            raise ConfigError(f"{err} (in {where})") from err

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAX_SEED = 2**64 - 1  # the largest seed torch.manual_seed takes


# ---------------------------------------------------------------------------------------------- registry
_ALGORITHMS: dict[str, type[Agent]] = {}


def register(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator: make an Agent subclass available as ``algos.make(name, ...)``.

    Run ``algos.check_agent(name)`` on a new algorithm: it checks the Agent contract.
    """

    def decorator(cls: type[Agent]) -> type[Agent]:
        if name in _ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is already registered ({_ALGORITHMS[name].__name__})")
        cls.name = name
        _ALGORITHMS[name] = cls
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a registered algorithm (e.g. one a test or notebook defined)."""
    get_algorithm(name)
    del _ALGORITHMS[name]


def list_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def get_algorithm(name: str) -> type[Agent]:
    if name not in _ALGORITHMS:
        close = difflib.get_close_matches(name, list(_ALGORITHMS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise AlgorithmNotFound(f"unknown algorithm {name!r}{hint} Known: {', '.join(list_algorithms())}")
    return _ALGORITHMS[name]


def make(name: str, policy: Policy, engine: Engine | str | None = None, **config: Any) -> Agent:
    """``algos.make("grao", policy, lr=1e-5, group_size=8)``. ``engine`` is an :class:`~algos.engine.Engine`
    to inject, or the config's name of one ("ddp", "fsdp")."""
    cls = get_algorithm(name)
    if isinstance(engine, str):
        engine, config = None, {**config, "engine": engine}
    elif engine is not None and engine.name != "local":
        config = {"engine": engine.name, **config}
    return cls(policy, cls.config_class.from_dict(config, where=f"algos.make({name!r})"), engine=engine)


# ---------------------------------------------------------------------------------------------- batches
class Batch:
    """One training step's data, made without gradients by ``Agent.make_batch``.

    Fields are tensors or :class:`EncodedBatch` es (or None) whose first dimension is ``groups`` times
    a per-field number of rows: GRPO's samples have G rows per prompt group, GRAO's answers one, DPO's
    pairs two. ``select`` keeps groups whole, so statistics computed per group in ``make_batch``
    (advantages, whitening) never change when the step is split into minibatches or micro-batches.
    ``stats`` are logged with the step.
    """

    def __init__(self, groups: int, stats: dict[str, float] | None = None, **fields: Any):
        for name, value in fields.items():
            if value is not None and len(value) % groups:
                raise ValueError(f"Batch field {name!r} has {len(value)} rows, not a multiple of {groups} groups")
        self.groups, self.stats, self.fields = groups, dict(stats or {}), fields

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name not in fields:
            raise AttributeError(f"Batch has no field {name!r}; fields: {', '.join(fields)}")
        return fields[name]

    def select(self, groups: Sequence[int] | np.ndarray) -> Batch:
        """The rows of the given prompt groups, in that order."""
        groups = torch.as_tensor(np.asarray(groups, dtype=np.int64))
        picked = {}
        for name, value in self.fields.items():
            if value is not None:
                per_group = len(value) // self.groups
                rows = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
                value = value[rows.to(_device_of(value))]
            picked[name] = value
        return Batch(len(groups), self.stats, **picked)

    def split(self, groups_per_part: int | None) -> list[Batch]:
        """Consecutive parts of at most ``groups_per_part`` groups (the whole batch when None)."""
        if groups_per_part is None or groups_per_part >= self.groups:
            return [self]
        return [self.select(range(i, min(i + groups_per_part, self.groups)))
                for i in range(0, self.groups, groups_per_part)]

    def encoded(self) -> dict[str, EncodedBatch]:
        return {k: v for k, v in self.fields.items() if isinstance(v, EncodedBatch)}


def _device_of(value: Any) -> torch.device:
    return value.prompt_ids.device if isinstance(value, EncodedBatch) else value.device


@dataclasses.dataclass(frozen=True)
class StepTotals:
    """Counts over the whole optimiser step that losses normalise by (``groups``; per encoded field, its
    ``rows`` and completion ``tokens``), so the micro-batch losses of a step sum to the step's loss."""

    groups: int
    rows: dict[str, int]
    tokens: dict[str, int]

    @classmethod
    def of(cls, batch: Batch) -> StepTotals:
        encoded = batch.encoded()
        return cls(batch.groups, {k: len(v) for k, v in encoded.items()},
                   {k: v.num_tokens for k, v in encoded.items()})

    def across(self, engine: Engine) -> StepTotals:
        """The totals over every rank's share of the step (``self`` on one process)."""
        if engine.world_size == 1:
            return self
        keys = sorted(self.rows)
        counts = [int(c) for c in engine.sum_numbers([self.groups, *(self.rows[k] for k in keys),
                                                      *(self.tokens[k] for k in keys)])]
        n = len(keys)
        return StepTotals(counts[0], dict(zip(keys, counts[1:n + 1], strict=True)),
                          dict(zip(keys, counts[n + 1:], strict=True)))


# ---------------------------------------------------------------------------------------------- agent
class Agent:
    """Common interface: ``act``, ``learn``, ``evaluate``, ``save``/``load``.

    ``engine`` runs the steps: by default one process alone, or, when the process group of a launch spans
    several, the config's ``engine`` ("ddp" or "fsdp") over it (:func:`algos.engine.make_engine`).
    """

    name: ClassVar[str] = "agent"
    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    # Whether ``make_batch`` trains on a multi-turn env (``textenv.MultiTurnEnv``, played whole through
    # ``algos.multiturn``); ``learn`` and the benchmark config refuse one for an algorithm without it.
    multiturn: ClassVar[bool] = False

    def __init__(self, policy: Policy, config: AgentConfig | None = None, *, engine: Engine | str | None = None,
                 **overrides: Any):
        if isinstance(engine, str):  # the config's name of an engine, not one to inject
            engine, overrides = None, {**overrides, "engine": engine}
        if config is not None and not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                              f"got {type(config).__name__}")
        if config is None or overrides:  # overrides are checked like any other config value
            base = config.to_dict() if config is not None else {}
            config = self.config_class.from_dict({**base, **overrides}, where=type(self).__name__)
        self.policy, self.config = policy, config
        self.engine = engine if engine is not None else make_engine(config.engine)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.setup()
        if self.needs_reference():
            policy.reference()  # made before the engine prepares the model, so a sharded model's copy is sharded
        # The modules as they train, whatever the engine wraps them in: what checkpoints and saves hold.
        self._trained = {"policy": policy.model, **self.modules()}
        for name, module in self.engine.prepare(policy, self.modules()).items():
            setattr(self, name, module)  # e.g. DDP's wrapper of a value head, which its forward passes must use
        # One fixed order of the parameters on every rank: the policy's, then each module's.
        params = policy.parameters() + [p for n, m in self._trained.items() if n != "policy" for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # made by learn(max_steps)

    # --- what an algorithm writes -------------------------------------------------------------
    def setup(self) -> None:
        """Create what the algorithm needs besides the policy (e.g. a value head; the reference policy is
        ``self.policy.reference()``)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Extra trainable modules (saved and optimised with the policy), e.g. a value head, by the name of the
        attribute that holds each: the engine may replace that attribute with a wrapper to call instead."""
        return {}

    def needs_reference(self) -> bool:
        """Whether ``make_batch`` scores with ``self.policy.reference()``; if so it is made before the engine
        prepares the model (a sharded model's reference copy is sharded with it)."""
        return False

    def state(self) -> dict[str, Any]:
        """Plain-JSON state besides weights that a resumed run needs (e.g. an adaptive KL coefficient)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""

    def make_batch(self, env: textenv.TextGenEnv, rng: np.random.Generator) -> Batch:
        """A training step's data (runs under ``torch.no_grad``): sample, score, compute advantages."""
        raise NotImplementedError

    def loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch, normalised by the whole step's ``totals``, and stats to log."""
        raise NotImplementedError

    # --- the shared step ----------------------------------------------------------------------
    def update(self, env: textenv.TextGenEnv, rng: np.random.Generator) -> dict[str, float]:
        """One training step: make a batch, then ``num_iterations`` passes of ``num_minibatches``
        optimiser steps over it (a fresh order of the groups each pass when there are minibatches).

        On several processes each rank makes the batch of its share of the step's prompt groups and
        orders its own groups, so a minibatch holds an equal share of every rank's groups."""
        cfg = self.config
        with torch.no_grad():
            batch = self.make_batch(self.engine.shard(env), rng)
        stats: dict[str, float] = {}
        for _ in range(cfg.num_iterations):
            if cfg.num_minibatches == 1:
                stats = self.optimizer_step(batch)
                continue
            for part in np.array_split(rng.permutation(batch.groups), cfg.num_minibatches):
                stats = self.optimizer_step(batch.select(part))
        trained = sum(enc.num_tokens for enc in batch.encoded().values()) * cfg.num_iterations
        return self.engine.mean_stats({**stats, **batch.stats, "tokens/trained": float(trained)}, _summed_stat)

    def play(self, env: MultiTurnEnv, seed: int, group_size: int) -> Episodes:
        """This process's share of a step's ``batch_size`` groups of ``group_size`` episodes of ``env``, sampled
        with the config's settings (``max_new_tokens`` per turn, ``generation_chunk`` groups per ``generate``).

        Group ``b`` of the step is reset with ``episode_seed(seed, b)`` on every process count, so with a
        ``generation_chunk`` that divides the share, two processes play the episodes one process plays; under a
        sharded model every process runs every turn until all have ended (``collect_episodes``' ``lock_step``)."""
        cfg, share = self.config, self.engine.share(self.config.batch_size, "prompt groups of a step")
        n = share.stop - share.start
        return collect_episodes(
            self.policy, copies(env, n * group_size), num_prompts=n, group_size=group_size, seed=seed,
            split=env.split, first_group=share.start, chunk=cfg.generation_chunk,
            lock_step=self.engine.any if self.policy.sharded else None, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty)

    def demonstrate(self, env: MultiTurnEnv, seed: int) -> Episodes:
        """The task's oracle playing, once each, the groups that ``play(env, seed, ...)`` plays on this process:
        SFT's and GRAO's reference trajectories y, DPO's preferred ones."""
        share = self.engine.share(self.config.batch_size, "prompt groups of a step")
        n = share.stop - share.start
        return collect_demonstrations(self.policy, copies(env, n), num_prompts=n, seed=seed, split=env.split,
                                      first_group=share.start)

    def optimizer_step(self, batch: Batch) -> dict[str, float]:
        """Accumulate the gradients of ``batch`` in micro-batches (the engine reduces them over ranks in the
        last one's backward), clip, step. Returns the loss (this rank's part), the gradient norm (before
        clipping) and the loss stats, averaged over micro-batches by group count."""
        totals = StepTotals.of(batch).across(self.engine)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, weighted = 0.0, {}
        micros = batch.split(self.config.micro_batch_size)  # as many on every rank: equal shares
        for i, micro in enumerate(micros):
            with self.engine.accumulating(sync=i == len(micros) - 1):
                loss, stats = self.loss(micro, totals)
                if self.engine.any(not torch.isfinite(loss)):  # every rank stops, none waits in a collective
                    raise FloatingPointError(f"{self.name}: loss is {loss.item()} at step {self.step} "
                                             f"(on this rank or another)")
                self.engine.backward(loss)
            loss_sum += loss.item()
            for key, value in stats.items():
                weighted[key] = weighted.get(key, 0.0) + value * micro.groups / batch.groups
        norm = self.engine.clip_and_step(self.optimizer, self.config.max_grad_norm)
        return {**weighted, "loss": loss_sum, "grad_norm": norm}

    # --- shared machinery ---------------------------------------------------------------------
    def generation_settings(self, **generation: Any) -> dict[str, Any]:
        """The config's sampling settings, overridden by ``generation``: what ``act`` and evaluation sample with."""
        cfg = self.config
        return {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                "repetition_penalty": cfg.repetition_penalty, "max_new_tokens": cfg.max_new_tokens, **generation}

    def act(self, prompts: Sequence[Prompt], **generation: Any) -> list[str]:
        """Completions for ``prompts``; keyword arguments override the config's sampling settings."""
        return self.policy.generate(list(prompts), **self.generation_settings(**generation)).texts

    def evaluate(self, env: AnyEnv, *, split: str = "eval", num_prompts: int | None = None, seed: int = 0,
                 base_completions: Sequence[str] | None = None, **generation: Any) -> dict[str, float]:
        """Score one completion per prompt of ``split`` (the first ``num_prompts``), same seed every call.

        ``base_completions`` (the base model's, on the same prompts) add NAG; ``generation`` overrides
        the sampling settings (e.g. ``greedy=True``). On a multi-turn env: one episode per row, the same
        rows and env seeds every call (``algos.multiturn_eval.evaluate_episodes``: reward = mean return,
        success_rate, turns, invalid_rate, tool_calls, tool_success).
        """
        return self._evaluate(env, split, num_prompts, seed, base_completions, **generation)[0]

    def _evaluate(self, env: AnyEnv, split: str = "eval", num_prompts: int | None = None, seed: int = 0,
                  base_completions: Sequence[str] | None = None, **generation: Any) -> tuple[dict[str, float], str]:
        """``evaluate``'s metrics and a Markdown table of the first few prompts and completions (episodes on a
        multi-turn env: ``algos.multiturn_eval``, one per row of ``split``, ``max_new_tokens`` per turn)."""
        if multiturn_env(env) is not None:
            if base_completions is not None:
                raise ValueError(f"{self.name}: base_completions do not apply to a multi-turn env (an episode is "
                                 "not one completion); algos.multiturn_eval.evaluate_episodes takes base_records")
            metrics, records = evaluate_episodes(self.policy, env, split=split, num_prompts=num_prompts, seed=seed,
                                                 **self.generation_settings(**generation))
            rows = [f"| {r['index']} | {_cell(r['prompt'])} | {_cell(r['completion'])} | {r['reward']:.3f} | "
                    f"{r['success_rate']:.0f} | {r['turns']:.0f} |" for r in records[:SHOWN_COMPLETIONS]]
            return metrics, "\n".join(["| row | first messages | conversation | return | success | turns |",
                                       "|---|---|---|---|---|---|", *rows])
        task_env = textenv.batched(env)
        examples = task_env.task.split(split)[:num_prompts]
        completions = self.act([ex.prompt for ex in examples], seed=seed, **generation)
        metrics = textenv.evaluate_completions(task_env, examples, completions, base_completions)
        rows = [f"| {_cell(ex.prompt)} | {_cell(ex.reference)} | {_cell(c)} |"
                for ex, c in zip(examples[:SHOWN_COMPLETIONS], completions, strict=False)]
        return metrics, "\n".join(["| prompt | reference | completion |", "|---|---|---|", *rows])

    @torch.no_grad()
    def reference_nll(self, env: AnyEnv, *, split: str = "eval", num_prompts: int | None = None,
                      batch_size: int = 32) -> float:
        """Mean per-token negative log-likelihood of the reference answers of ``split``."""
        examples = textenv.batched(env).task.with_references(split)[:num_prompts]
        total = tokens = 0.0
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            logps, mask = self.policy.text_logprobs([e.prompt for e in chunk], [e.reference for e in chunk])
            total -= logps.sum().item()
            tokens += mask.sum().item()
        return total / tokens

    def learn(self, env: AnyEnv, max_steps: int, *, eval_env: AnyEnv | None = None, eval_every: int = 0,
              eval_kwargs: dict[str, Any] | None = None, log_dir: str | Path | None = None,
              callback: Callable[[Agent, dict[str, float]], bool | None] | None = None,
              checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None,
              resume_from: str | Path | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Train up to step ``max_steps`` (TRL's ``max_steps``): from ``self.step`` (0 for a new agent, the
        checkpoint's step with ``resume_from``) until ``self.step == max_steps``. Two calls of
        ``learn(env, 2)`` train 2 steps in all, and an agent already at step ``max_steps`` or beyond
        trains nothing and says so with a warning. Returns the agent's whole history, one record per step
        so far (``record["step"]`` counts from 1), this call's steps last.

        The learning-rate schedule (warm-up, decay) spans steps 0 to ``max_steps``. Every ``eval_every``
        steps (and at the end) ``evaluate(eval_env, **eval_kwargs)`` adds ``eval/*`` entries to the step's
        record. ``env`` may be wrapped: training rewards pass through its gymnasium reward wrappers
        (``textenv.batched``); evaluation metrics use the task's reward. ``callback(agent, record)``
        returning False stops early. With ``checkpoint_every`` a checkpoint is written to
        ``checkpoint_dir/step-N``; ``resume_from`` continues from one. On several processes every rank
        runs ``learn`` (and loads ``resume_from``), evaluates and writes its shard of each checkpoint, and
        holds the same history; rank 0 alone writes logs and shows progress.
        """
        if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) or max_steps < 1:
            raise ValueError(f"{self.name}: learn(max_steps={max_steps!r}) needs a whole number >= 1 "
                             "(the step to train up to)")
        self._check_sharding()
        task_env = self._training_env(env)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if self.step >= max_steps:
            warnings.warn(f"{self.name}: learn(max_steps={max_steps}) has nothing to train: the agent is already "
                          f"at step {self.step} (max_steps is the step to train up to, not a number of further "
                          f"steps; pass max_steps={self.step + max_steps} for {max_steps} more)", stacklevel=2)
            return self.history
        cfg = self.config
        self.scheduler = schedule_at(self.optimizer, cfg.lr_scheduler, cfg.warmup_steps, int(max_steps), self.step)
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        with Recorder(self.name, max_steps, self.step, log_dir if self.engine.is_main else None,
                      progress=progress and self.engine.is_main) as recorder:
            while self.step < max_steps:
                rng = np.random.default_rng([self.config.seed, self.step])
                start = time.perf_counter()
                stats = self.update(task_env, rng)
                self.scheduler.step()
                self.step += 1
                elapsed = time.perf_counter() - start
                record = {"step": self.step, **stats, "time/step_s": elapsed,
                          "lr": self.scheduler.get_last_lr()[0]}
                if "tokens/trained" in stats:
                    record["tokens/per_s"] = stats["tokens/trained"] / max(elapsed, 1e-9)
                if eval_env is not None and eval_every and (
                        self.step % eval_every == 0 or self.step == max_steps):
                    # Every rank evaluates every prompt in lock-step (a sharded model needs them all in each
                    # forward pass): the one-process numbers, the same on every rank.
                    evaluation, shown = self._evaluate(eval_env, **(eval_kwargs or {}))
                    record.update({f"eval/{k}": v for k, v in evaluation.items()})
                    recorder.text("eval/completions", shown, self.step)
                self.history.append(record)
                recorder.write(record)
                if checkpoint_every and self.step % checkpoint_every == 0:
                    self.save_checkpoint(Path(checkpoint_dir) / f"step-{self.step}")
                if callback is not None and self.engine.any(callback(self, record) is False):
                    break
        return self.history

    def _training_env(self, env: AnyEnv) -> Any:
        """What ``update`` trains on: a multi-turn env itself (the algorithm plays its episodes whole), else
        the batched API with the reward wrappers around ``env`` applied (``textenv.batched``)."""
        episodes = multiturn_env(env)
        if episodes is None:
            return textenv.batched(env)
        if not self.multiturn:
            raise TypeError(f"{self.name} does not train on multi-turn envs yet ({episodes.env_id} is a "
                            f"textenv.MultiTurnEnv; {type(self).__name__}.multiturn is False)")
        if env is not episodes:  # a reward wrapper would be skipped silently: the episodes are played on the task
            raise TypeError(f"cannot train on {env!r}: pass the multi-turn env {episodes.env_id} without wrappers "
                            "(its episodes are played on fresh envs of its task, which no wrapper would reach)")
        return episodes

    def _check_sharding(self) -> None:
        """On several processes each rank takes an equal share of a step's prompts, with a group per minibatch."""
        cfg, world, name = self.config, self.engine.world_size, type(self.config).__name__
        if cfg.batch_size % world:
            raise ConfigError(f"{name}.batch_size ({cfg.batch_size}) must be a multiple of the number of "
                              f"processes ({world}): each process takes an equal share of a step's prompts")
        if cfg.num_minibatches > cfg.batch_size // world:
            raise ConfigError(f"{name}.num_minibatches ({cfg.num_minibatches}) must be <= batch_size / processes "
                              f"({cfg.batch_size // world}): each minibatch needs a prompt group on every process")

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    # --- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Policy (safetensors), extra modules (safetensors) and the config (JSON). Every rank calls it (a
        sharded model is gathered); rank 0 writes."""
        directory = Path(directory)
        states = {name: self.engine.full_state_dict(module) for name, module in self._trained.items()}
        if self.engine.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            self.policy.save(directory / "policy", state_dict=states.pop("policy"))
            for name, state in states.items():
                save_file({k: v.contiguous() for k, v in state.items()}, str(directory / f"{name}.safetensors"))
            self._write_meta(directory)
        self.engine.barrier()

    def save_merged(self, directory: str | Path) -> None:
        """The policy with its LoRA adapter merged into the weights, as a plain HF model (safetensors) to export
        or serve. Every rank calls it (a sharded model is gathered); rank 0 merges and writes."""
        state = self.engine.full_state_dict(self.policy.model) if self.policy.sharded else None
        if self.engine.is_main:
            self.policy.merge(state).save(directory)
        self.engine.barrier()

    def _write_meta(self, directory: Path) -> None:
        meta = {"algorithm": self.name, "config": self.config.to_dict(), "step": self.step,
                "state": self.state()}
        (directory / AGENT_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None, engine: Engine | None = None) -> Agent:
        """Rebuild a saved agent; ``Agent.load`` dispatches on the saved algorithm name."""
        directory = Path(directory)
        meta = read_saved_agent(directory, expected=None if cls is Agent else cls.name)
        algo = get_algorithm(meta.algorithm)
        with reading(directory / "policy" / "model.safetensors"):
            policy = Policy.from_pretrained(directory / "policy", device=device)
        agent = algo(policy, meta.agent_config(directory), engine=engine)
        for name, module in agent._trained.items():
            if name != "policy":
                with reading(path := directory / f"{name}.safetensors"):
                    agent.engine.load_full_state_dict(module, load_file(str(path), device=str(policy.device)))
        agent._restore(meta, directory)
        return agent

    def _frozen(self) -> dict[str, torch.nn.Module]:
        """Modules a checkpoint holds whole although they do not train: the reference copy, if one was made."""
        reference = self.policy._reference
        return {"reference": reference.model} if reference is not None and not reference._adapter_off else {}

    def _restore(self, meta: SavedAgent, directory: Path) -> None:
        """The step and algorithm state of ``meta``; a state the algorithm refuses is named with its file."""
        self.step = meta.step
        try:
            self.load_state(meta.state)
        except (KeyError, TypeError, ValueError) as err:
            problem = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise CheckpointError(f"{directory / AGENT_FILE}: key 'state': {problem}") from err

    def save_checkpoint(self, directory: str | Path) -> None:
        """Everything ``learn`` needs to resume: each rank writes its shard of every weight (frozen ones too), the
        reference copy and the optimiser state (``state/``, safetensors through ``torch.distributed.checkpoint``),
        rank 0 the config, step and history; written to a temp dir, then renamed into place."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        if self.engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.engine.barrier()
        self.engine.save_state(tmp / "state", self._trained, self._frozen(), self.optimizer)
        if self.engine.is_main:
            self._write_meta(tmp)
            (tmp / "history.json").write_text(json.dumps(self.history))
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
        self.engine.barrier()

    def load_checkpoint(self, directory: str | Path) -> None:
        """Resume from ``save_checkpoint``'s folder (every rank, its own shard). Its metadata is checked before
        any weight is loaded."""
        directory = Path(directory)
        meta = read_saved_agent(directory, expected=self.name)
        meta.agent_config(directory)  # checked though unused: this agent's own config goes on training
        history = read_history(directory / "history.json", meta.step)
        with reading(directory / "state"):
            self.engine.load_state(directory / "state", self._trained, self._frozen(), self.optimizer)
        self.history = history
        self._restore(meta, directory)

AGENT_FILE = "agent.json"


@dataclasses.dataclass(frozen=True)
class SavedAgent:
    """What ``agent.json`` holds (written by ``save`` and ``save_checkpoint``), checked when it is read back."""

    algorithm: str  # a registered algorithm name
    config: dict[str, Any]  # the algorithm's config, as its config_class.to_dict() wrote it
    step: int  # training steps done, >= 0
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # the algorithm's state() (e.g. PPO's kl_coef)

    def agent_config(self, directory: Path) -> AgentConfig:
        """The saved config, checked like any other; a bad value is a CheckpointError naming the file."""
        try:
            return get_algorithm(self.algorithm).config_class.from_dict(self.config)
        except ConfigError as err:
            raise CheckpointError(f"{directory / AGENT_FILE}: key 'config': {err}") from err


def read_saved_agent(directory: Path, expected: str | None = None) -> SavedAgent:
    """``directory/agent.json``, every key checked (a registered algorithm, ``expected`` if given, a config
    dict, a step >= 0, a state dict), so a damaged file fails here naming the file and the key rather
    than later with a raw TypeError or, for a huge step, a hang."""
    with reading(path := directory / AGENT_FILE):
        raw = json.loads(path.read_text())
    meta = fields.read_record(SavedAgent, raw, str(path), CheckpointError)
    fields.check_bounds(f"{path}: key 'step'", meta.step, CheckpointError, ge=0)
    if meta.algorithm not in _ALGORITHMS:
        raise CheckpointError(f"{path}: key 'algorithm': no algorithm {meta.algorithm!r} is registered; "
                              f"known: {', '.join(list_algorithms())}")
    if expected is not None and meta.algorithm != expected:
        raise CheckpointError(f"{path}: this checkpoint is for {meta.algorithm!r}, not {expected!r} (key 'algorithm')")
    return meta


def read_history(path: Path, step: int) -> list[dict[str, float]]:
    """A checkpoint's ``history.json``: a list of records of numbers, each with an integer ``step`` no later
    than the checkpoint's ``step``."""
    with reading(path):
        raw = json.loads(path.read_text())
    history = fields.checked(str(path), raw, list[dict[str, float]], CheckpointError)
    for i, record in enumerate(history):
        if not fields.accepts(int, record.get("step")) or not 1 <= record["step"] <= step:
            raise CheckpointError(f"{path}: record {i}: key 'step' must be an integer in [1, {step}] (the "
                                  f"checkpoint's step), got {record.get('step')!r}")
    return history


def schedule_at(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, max_steps: int,
                step: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' ``kind`` schedule ("constant", "linear", "cosine", after a linear warm-up) over
    ``max_steps`` steps, placed at ``step`` in O(1).

    Each of these is a ``LambdaLR``, whose rate is a closed-form function of its step, so setting the step
    gives exactly the rate that ``step`` calls of ``.step()`` reach (a resumed run follows the schedule
    bitwise) without replaying them: a step of 10**9 read from a checkpoint costs nothing.
    """
    name = "constant_with_warmup" if kind == "constant" else kind
    for group in optimizer.param_groups:  # a new schedule starts from the configured rate
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # the O(1) placement needs a closed form
        raise TypeError(f"schedule {name!r} is a {type(scheduler).__name__}, not a LambdaLR")
    if step:
        scheduler.last_epoch = step - 1
        with warnings.catch_warnings():  # stepping a schedule before the optimiser is intended here
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return scheduler


def _summed_stat(key: str) -> bool:
    """Logged statistics that add up over ranks: counts, and the loss (each rank's part of the step's)."""
    return key == "loss" or key.startswith("tokens/")


class Recorder:
    """Where ``learn`` writes each step's record: a progress bar, TensorBoard and ``history.jsonl`` in
    ``log_dir``. ``learn`` gives ranks other than 0 no ``log_dir`` and no bar, so they write nothing."""

    def __init__(self, name: str, max_steps: int, initial: int, log_dir: str | Path | None, progress: bool):
        self.writer = self.jsonl = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(log_dir))
            self.jsonl = open(Path(log_dir) / "history.jsonl", "a")  # noqa: SIM115
        self.bar = tqdm(total=max_steps, initial=initial, desc=name, disable=not progress,
                        dynamic_ncols=True, leave=False)

    def write(self, record: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(key, value, record["step"])
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        self.bar.update(1)
        self.bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "reward/mean") if k in record})

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Text (e.g. sampled completions) that TensorBoard's Text tab shows beside the curves."""
        if self.writer is not None:
            self.writer.add_text(tag, markdown, step)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Close the bar and the logs; if training failed, a failing close (a full disk flushing the logs, say)
        is a note on that error, never the error the user sees instead."""
        closers = [(self.bar.close, "closing the progress bar")]
        if self.writer is not None:
            closers += [(self.writer.close, "closing the TensorBoard log"), (self.jsonl.close, "closing history.jsonl")]
        for close, what in closers:
            run_cleanup(close, what, during=exc)


SHOWN_COMPLETIONS = 4  # eval completions logged as TensorBoard text at each evaluation


def _cell(x: Any) -> str:
    """One Markdown table cell: text (or messages, rendered) with pipes and newlines escaped."""
    text = x if isinstance(x, str) else textenv.render_messages(x) if isinstance(x, list) else str(x)
    return text.replace("|", "\\|").replace("\n", "<br>")
