"""Training throughput of every algorithm on the tiny model: seconds per step, tokens/s, peak memory.

    python -m benchmarks.throughput [--task textenv/Arithmetic-v0] [--steps 10] [--algorithms sft dpo ...]

Each algorithm runs in a fresh child process so that its peak resident memory (or peak CUDA memory)
is its own. Times on a shared machine are noisy: compare the ratios to SFT printed in the same run,
not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time


def _measure(task_id: str, name: str, steps: int, warmup: int, group_size: int, batch_size: int,
             max_new_tokens: int, device: str | None, queue: mp.Queue) -> None:
    import torch

    import algos
    import textenv
    from algos.tiny import pretrain_tiny

    env = textenv.make(task_id)
    policy = algos.Policy.from_pretrained(pretrain_tiny(env.unwrapped.task, progress=False), device=device)
    online = "group_size" in algos.get_algorithm(name).config_class.__dataclass_fields__
    extra = {"group_size": group_size} if online else {}
    agent = algos.make(name, policy, batch_size=batch_size, max_new_tokens=max_new_tokens, **extra)
    agent.learn(env, warmup, progress=False)
    if torch.cuda.is_available() and policy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    history = agent.learn(env, warmup + steps, progress=False)[warmup:]
    elapsed = time.perf_counter() - start
    if policy.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({
        "algorithm": name, "s_per_step": elapsed / steps,
        "trained_tok_s": sum(h.get("tokens/trained", 0) for h in history) / elapsed,
        "generated_tok_s": sum(h.get("tokens/generated", 0) for h in history) / elapsed,
        "peak_mb": peak_mb, "device": str(policy.device),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="textenv/Arithmetic-v0")
    parser.add_argument("--algorithms", nargs="+", default=["sft", "dpo", "ppo", "grpo", "grao"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation cap (default: 6 for Arithmetic, 64 otherwise)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    max_new_tokens = args.max_new_tokens or (6 if "Arithmetic" in args.task else 64)
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.algorithms:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(args.task, name, args.steps, args.warmup, args.group_size,
                                                   args.batch_size, max_new_tokens, args.device, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{name}: failed (exit code {proc.exitcode})", file=sys.stderr)
            continue
        rows.append(queue.get())
        print(f"measured {name}", flush=True)
    if not rows:
        return 1
    base = next((r for r in rows if r["algorithm"] == "sft"), rows[0])
    print(f"\n{args.task}, batch {args.batch_size} prompts, G = {args.group_size}, "
          f"max {max_new_tokens} new tokens, {args.steps} steps "
          f"after {args.warmup} warm-up, device {rows[0]['device']}")
    print(f"{'algorithm':10s} {'s/step':>8s} {'x ' + base['algorithm']:>8s} {'trained tok/s':>14s} "
          f"{'generated tok/s':>16s} {'peak MB':>9s}")
    for r in rows:
        print(f"{r['algorithm']:10s} {r['s_per_step']:8.3f} {r['s_per_step'] / base['s_per_step']:8.2f} "
              f"{r['trained_tok_s']:14.0f} {r['generated_tok_s']:16.0f} {r['peak_mb']:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
