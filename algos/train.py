"""Train one algorithm on one environment from the command line, on one process or several.

    python -m algos.train grao --env textenv/Arithmetic-v0 --steps 100 --out runs/grao --set group_size=8
    torchrun --nproc_per_node 2 -m algos.train grao --env textenv/Arithmetic-v0 --steps 100 --out runs/grao
    torchrun --nproc_per_node 8 -m algos.train grao --engine fsdp --model Qwen/Qwen2.5-7B-Instruct --bf16 ...
    accelerate launch --multi_gpu --num_processes 2 -m algos.train grao ...

On several processes the run is data-parallel (``algos.engine``; ``--engine ddp``, the default, or
``fsdp``): the same global batch of ``batch_size`` prompts per step, shared out by rank. Rank 0 alone
writes ``OUT/final`` (the ``Agent.save`` format: ``algos.Agent.load(OUT / "final")``),
``OUT/history.jsonl`` and the TensorBoard logs in ``OUT``; with ``--checkpoint-every`` every rank writes
its shard of ``OUT/checkpoints/step-N`` (``--resume`` one of them).
``--set key=value`` values are JSON or TOML literals (``1e-4``, ``true``, ``null``, ``"text"``) or else
the bare text; they are parsed, never evaluated, and an unknown key is an error listing the valid ones.
Every argument (numbers, ``--set``, ``--resume``, a writable ``--out``) is checked before anything loads,
and a mistake in the input is one ``error:`` line with exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import textenv
from algos import engine as engines
from algos.agent import AlgorithmNotFound, ConfigError, get_algorithm, list_algorithms, make
from algos.errors import OutputError, check_output_folder, cleanup, error_text
from algos.multiturn import multiturn_env
from algos.policy import CheckpointError, ContextLengthError, Policy
from algos.tiny import pretrain_tiny


def parse_value(text: str) -> Any:
    """A ``--set`` value: a JSON literal, else a TOML one (``'text'``, ``1_000``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "loss_type=dapo"]`` -> ``{"lr": 0.0001, "loss_type": "dapo"}``; each key once."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key in settings:
            raise ConfigError(f"--set {key}: given twice")
        settings[key] = parse_value(text.strip())
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m algos.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("algo", help=f"algorithm: {', '.join(list_algorithms())}")
    parser.add_argument("--env", required=True, help="environment id, e.g. textenv/Arithmetic-v0")
    parser.add_argument("--steps", type=int, required=True,
                        help="train up to step N (with --resume, from the checkpoint's step on to N: "
                             "learn's max_steps); each step is a batch (see num_iterations, num_minibatches)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (the project's tiny model for the env's task, pretrained and cached on first "
                             "use) or a Hugging Face model name or path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an algorithm config value (repeatable), e.g. --set lr=1e-5 --set group_size=8")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps and at the end (0: never)")
    parser.add_argument("--eval-prompts", type=int, default=64, help="prompts of the eval split per evaluation")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: never)")
    parser.add_argument("--resume", type=Path, help="a checkpoint directory to continue from")
    parser.add_argument("--engine", choices=["ddp", "fsdp"],
                        help="how several processes train: ddp (every rank holds the model; the default) or fsdp "
                             "(FSDP2: parameters, gradients and optimiser state sharded over ranks)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision in the forward passes")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, more compute)")
    parser.add_argument("--device", help="torch device (default: this process's GPU, else the CPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def load_policy(model: str, env: Any, engine: engines.Engine, device: str | Any, **options: Any) -> Policy:
    if model != "tiny":
        return Policy.from_pretrained(model, device=device, **options)
    with engine.main_first():  # rank 0 pretrains (or finds the cache); the others then read it
        episodes = multiturn_env(env)  # a multi-turn env's task, else the one-turn env's
        path = pretrain_tiny(episodes.task if episodes is not None else textenv.batched(env).task,
                             progress=engine.is_main)
    return Policy.from_pretrained(path, device=device, **options)


# What a user's input can get wrong: each becomes "error: <message>" and exit code 2, not a traceback.
USER_ERRORS = (ConfigError, AlgorithmNotFound, textenv.TaskError, CheckpointError, ContextLengthError, OutputError)


def check_resume(path: Path) -> None:
    """``--resume`` must name a checkpoint folder (``OUT/checkpoints/step-N``), not a missing path or a
    final agent (``OUT/final`` has no optimizer state to resume)."""
    hint = "give one of OUT/checkpoints/step-N, written by a run with --checkpoint-every"
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: no such checkpoint folder; {hint}")
    if not (path / "agent.json").is_file():
        raise CheckpointError(f"--resume {path}: not a checkpoint (it has no agent.json); {hint}")
    if not (path / "state").is_dir():
        raise CheckpointError(f"--resume {path}: a saved agent, not a checkpoint (it has no state/ with the "
                              f"optimizer state, so training cannot continue exactly); {hint}")


def check_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Check every argument before anything loads (a model or a tiny model's pretraining takes minutes);
    returns the parsed ``--set`` values. ``--out`` is created here, after everything else passed."""
    for flag, value, least in (("--steps", args.steps, 1), ("--eval-every", args.eval_every, 0),
                               ("--eval-prompts", args.eval_prompts, 1),
                               ("--checkpoint-every", args.checkpoint_every, 0)):
        if value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    settings = parse_settings(args.set)
    if args.engine is not None:
        if "engine" in settings:
            raise ConfigError("give the engine once: --engine or --set engine=...")
        settings["engine"] = args.engine
    get_algorithm(args.algo).config_class.from_dict(settings, where="--set")  # unknown keys, bad values
    if args.resume is not None:
        check_resume(args.resume)
    check_output_folder(args.out)
    return settings


def train(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Make the env, load the model, train, save ``OUT/final`` and say where it is."""
    engine = engines.make_engine(settings.pop("engine", "ddp"))
    env = textenv.make(args.env)
    policy = load_policy(args.model, env, engine, args.device or engines.device(), bf16=args.bf16,
                         gradient_checkpointing=args.gradient_checkpointing)
    agent = make(args.algo, policy, engine, **settings)
    history = agent.learn(env, max_steps=args.steps, eval_env=env if args.eval_every else None,
                          eval_every=args.eval_every, eval_kwargs={"num_prompts": args.eval_prompts},
                          log_dir=args.out, checkpoint_every=args.checkpoint_every,
                          checkpoint_dir=args.out / "checkpoints", resume_from=args.resume, progress=not args.quiet)
    agent.save(args.out / "final")
    if engine.is_main:
        last = history[-1] if history else {}
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("loss", "reward/mean", "eval/reward") if k in last)
        print(f"{args.algo}: step {agent.step} on {engine.world_size} process(es); {shown}; "
              f"saved {args.out / 'final'}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        engines.init_process_group()  # from torchrun's / accelerate's environment; nothing on one process
        with cleanup(engines.close, "closing the process group"):
            train(args, check_arguments(args))
    except USER_ERRORS as err:
        parser.error(error_text(err))


if __name__ == "__main__":
    main()
