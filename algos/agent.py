"""The Agent interface every algorithm implements, its registry and validated configs.

An algorithm subclasses :class:`Agent`, declares a config dataclass, and writes ``update(env, rng)``:
one training step (sample or read data, compute the loss, call ``self.optimize``). Everything around
it is shared: the training loop with progress, TensorBoard and JSONL logging, evaluation, saving,
checkpoints and resume. Each step draws its randomness from ``(seed, step)``, so a resumed run
replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shutil
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

import textenv
from algos.policy import Policy


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and lists the valid ones."""


# ---------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters every algorithm shares. Defaults suit the tiny CPU models."""

    seed: int = 0
    lr: float = 3e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    batch_size: int = 8  # prompts (or pairs) per optimiser step
    max_new_tokens: int = 16
    temperature: float = 0.7
    top_p: float = 1.0

    def __post_init__(self) -> None:
        positive = [f.name for f in dataclasses.fields(self)
                    if f.name in {"lr", "batch_size", "max_new_tokens", "temperature", "top_p", "max_grad_norm"}]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be > 0, got {getattr(self, name)}")
        if self.top_p > 1:
            raise ConfigError(f"{type(self).__name__}.top_p must be <= 1, got {self.top_p}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str | None = None) -> AgentConfig:
        """Build from plain values (a TOML table, kwargs), checking names, types and choices."""
        where_txt = f" in {where}" if where else ""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown {cls.__name__} key {key!r}{where_txt}; "
                                  f"valid keys: {', '.join(sorted(fields))}")
            _check_type(cls.__name__, key, value, hints[key], where_txt)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(owner: str, key: str, value: Any, hint: Any, where_txt: str) -> None:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{owner}.{key}{where_txt} must be one of {list(typing.get_args(hint))}, "
                              f"got {value!r}")
        return
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(hint, lambda v: True)
    if not ok(value):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{owner}.{key}{where_txt} must be {name}, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------- registry
_ALGORITHMS: dict[str, type[Agent]] = {}


def register(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator: make an Agent subclass available as ``algos.make(name, ...)``."""

    def decorator(cls: type[Agent]) -> type[Agent]:
        if name in _ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is already registered ({_ALGORITHMS[name].__name__})")
        cls.name = name
        _ALGORITHMS[name] = cls
        return cls

    return decorator


def list_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def get_algorithm(name: str) -> type[Agent]:
    if name not in _ALGORITHMS:
        close = difflib.get_close_matches(name, list(_ALGORITHMS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}{hint} Known: {', '.join(list_algorithms())}")
    return _ALGORITHMS[name]


def make(name: str, policy: Policy, **config: Any) -> Agent:
    """``algos.make("grao", policy, lr=1e-5, group_size=8)``."""
    cls = get_algorithm(name)
    return cls(policy, cls.config_class.from_dict(config, where=f"algos.make({name!r})"))


# ---------------------------------------------------------------------------------------------- agent
class Agent:
    """Common interface: ``act``, ``learn``, ``evaluate``, ``save``/``load``."""

    name: ClassVar[str] = "agent"
    config_class: ClassVar[type[AgentConfig]] = AgentConfig

    def __init__(self, policy: Policy, config: AgentConfig | None = None, **overrides: Any):
        if config is not None and not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                              f"got {type(config).__name__}")
        if config is None or overrides:  # overrides are checked like any other config value
            base = config.to_dict() if config is not None else {}
            config = self.config_class.from_dict({**base, **overrides}, where=type(self).__name__)
        self.policy, self.config = policy, config
        self.step = 0
        self.history: list[dict[str, float]] = []
        torch.manual_seed(config.seed)
        self.setup()
        params = policy.parameters() + [p for m in self.modules().values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / (config.warmup_steps + 1)))

    # --- what an algorithm writes -------------------------------------------------------------
    def setup(self) -> None:
        """Create what the algorithm needs besides the policy (reference copy, value head)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Extra trainable modules (saved and optimised with the policy), e.g. a value head."""
        return {}

    def state(self) -> dict[str, Any]:
        """Plain-JSON state besides weights that a resumed run needs (e.g. an adaptive KL coefficient)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""

    def update(self, env: textenv.TextGenEnv, rng: np.random.Generator) -> dict[str, float]:
        """One training step; returns statistics to log."""
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------------
    def optimize(self, loss: torch.Tensor) -> float:
        """Backward, clip, step. Returns the gradient norm before clipping."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        return float(norm)

    def act(self, prompts: Sequence[str], **generation: Any) -> list[str]:
        """Completions for ``prompts``; keyword arguments override the config's sampling settings."""
        settings = {"temperature": self.config.temperature, "top_p": self.config.top_p,
                    "max_new_tokens": self.config.max_new_tokens, **generation}
        return self.policy.generate(list(prompts), **settings).texts

    def evaluate(self, env: Any, *, split: str = "eval", num_prompts: int | None = None, seed: int = 0,
                 base_completions: Sequence[str] | None = None, **generation: Any) -> dict[str, float]:
        """Score one completion per prompt of ``split`` (the first ``num_prompts``), same seed every call.

        ``base_completions`` (the base model's, on the same prompts) add NAG; ``generation`` overrides
        the sampling settings (e.g. ``greedy=True``).
        """
        task_env = env.unwrapped
        examples = task_env.task.split(split)[:num_prompts]
        completions = self.act([ex.prompt for ex in examples], seed=seed, **generation)
        return textenv.evaluate_completions(task_env, examples, completions, base_completions)

    @torch.no_grad()
    def reference_nll(self, env: Any, *, split: str = "eval", num_prompts: int | None = None,
                      batch_size: int = 32) -> float:
        """Mean per-token negative log-likelihood of the reference answers of ``split``."""
        examples = env.unwrapped.task.with_references(split)[:num_prompts]
        total = tokens = 0.0
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            logps, mask = self.policy.text_logprobs([e.prompt for e in chunk], [e.reference for e in chunk])
            total -= logps.sum().item()
            tokens += mask.sum().item()
        return total / tokens

    def learn(self, env: Any, total_steps: int, *, eval_env: Any = None, eval_every: int = 0,
              eval_kwargs: dict[str, Any] | None = None, log_dir: str | Path | None = None,
              callback: Callable[[Agent, dict[str, float]], bool | None] | None = None,
              checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None,
              resume_from: str | Path | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Train until ``self.step == total_steps``; returns the history (one record per step).

        Every ``eval_every`` steps (and at the end) ``evaluate(eval_env, **eval_kwargs)`` adds
        ``eval/*`` entries to the step's record.
        ``callback(agent, record)`` returning False stops early. With ``checkpoint_every`` a
        checkpoint is written to ``checkpoint_dir/step-N``; ``resume_from`` continues from one.
        """
        task_env = env.unwrapped
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        writer = jsonl = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(str(log_dir))
            jsonl = open(Path(log_dir) / "history.jsonl", "a")  # noqa: SIM115
        bar = tqdm(total=total_steps, initial=self.step, desc=self.name, disable=not progress,
                   dynamic_ncols=True, leave=False)
        try:
            while self.step < total_steps:
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
                        self.step % eval_every == 0 or self.step == total_steps):
                    evaluation = self.evaluate(eval_env, **(eval_kwargs or {}))
                    record.update({f"eval/{k}": v for k, v in evaluation.items()})
                self.history.append(record)
                if writer is not None:
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(key, value, self.step)
                    jsonl.write(json.dumps(record) + "\n")
                    jsonl.flush()
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "reward/mean") if k in record})
                if checkpoint_every and self.step % checkpoint_every == 0:
                    self.save_checkpoint(Path(checkpoint_dir) / f"step-{self.step}")
                if callback is not None and callback(self, record) is False:
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
                jsonl.close()
        return self.history

    # --- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Policy (safetensors), extra modules (safetensors) and the config (JSON)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save(directory / "policy")
        for name, module in self.modules().items():
            save_model(module, str(directory / f"{name}.safetensors"))
        meta = {"algorithm": self.name, "config": self.config.to_dict(), "step": self.step,
                "state": self.state()}
        (directory / "agent.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> Agent:
        """Rebuild a saved agent; ``Agent.load`` dispatches on the saved algorithm name."""
        directory = Path(directory)
        meta = json.loads((directory / "agent.json").read_text())
        algo = get_algorithm(meta["algorithm"]) if cls is Agent else cls
        policy = Policy.from_pretrained(directory / "policy", device=device)
        agent = algo(policy, algo.config_class.from_dict(meta["config"], where=str(directory)))
        for name, module in agent.modules().items():
            load_model(module, str(directory / f"{name}.safetensors"), device=str(policy.device))
        agent.step = meta["step"]
        agent.load_state(meta.get("state", {}))
        return agent

    def save_checkpoint(self, directory: str | Path) -> None:
        """Everything ``learn`` needs to resume; written to a temp dir, then renamed into place."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.save(tmp)
        reference = getattr(self, "reference", None)
        if isinstance(reference, Policy):
            save_model(reference.model, str(tmp / "reference.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   tmp / "optimizer.pt")
        (tmp / "history.json").write_text(json.dumps(self.history))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)

    def load_checkpoint(self, directory: str | Path) -> None:
        directory = Path(directory)
        meta = json.loads((directory / "agent.json").read_text())
        if meta["algorithm"] != self.name:
            raise ValueError(f"checkpoint {directory} is for {meta['algorithm']!r}, not {self.name!r}")
        saved = Policy.from_pretrained(directory / "policy", device=self.policy.device)
        self.policy.model.load_state_dict(saved.model.state_dict())
        for name, module in self.modules().items():
            load_model(module, str(directory / f"{name}.safetensors"), device=str(self.policy.device))
        reference = getattr(self, "reference", None)
        if isinstance(reference, Policy):
            load_model(reference.model, str(directory / "reference.safetensors"), device=str(reference.device))
        state = torch.load(directory / "optimizer.pt", weights_only=True, map_location=self.policy.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = json.loads((directory / "history.json").read_text())
        self.step = meta["step"]
        self.load_state(meta.get("state", {}))
