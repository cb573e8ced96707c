"""Training throughput of every algorithm on the tiny model: seconds per step, tokens/s, peak memory.

    python -m benchmarks.throughput [--task textenv/Arithmetic-v0] [--steps 10] [--algorithms sft dpo ...]
    python -m benchmarks.throughput --micro-batch-sizes 8 4 2 1 [--algorithms grao] [--model random-10m]
    python -m benchmarks.throughput --model smollm2 --lora 16 --threads 1 --task textenv/ChatSums-v0 \
        --batch-size 4 --group-size 4 --max-new-tokens 16 --steps 1 --warmup 1     # a real-config cell's step

Each measurement runs in a fresh child process so that its peak resident memory (or peak CUDA memory)
is its own. Times on a shared machine are noisy: compare the ratios printed in the same run, not
absolute numbers across runs; the CPU seconds per step (``cpu s/step``, all threads together) are less
disturbed by other jobs than the wall time. ``--micro-batch-sizes`` measures each algorithm at each micro-batch
size (prompt groups per forward/backward pass) on a randomly initialised ~10M-parameter Llama
(``--model random-10m``, the default there; or ``tiny``), with ratios to the full batch: peak memory
falls as micro-batches shrink, at some cost in time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time


def _random_10m(device: str | None):
    """A randomly initialised Llama of about 10M parameters with the byte tokenizer (no pretraining)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import algos
    from rewards.tiny import byte_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=320, intermediate_size=1280,
                                         num_hidden_layers=6, num_attention_heads=5, num_key_value_heads=5,
                                         max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return algos.Policy(model, tokenizer, device=device)


def _measure(task_id: str, name: str, steps: int, warmup: int, group_size: int, batch_size: int,
             max_new_tokens: int, device: str | None, queue: mp.Queue, model: str = "tiny",
             micro_batch_size: int | None = None, lora: int | None = None, threads: int | None = None) -> None:
    import torch

    import algos
    import textenv
    from algos.tiny import pretrain_tiny

    if threads:
        torch.set_num_threads(threads)
    env = textenv.make(task_id)
    adapter = {"lora": {"r": lora, "alpha": 2 * lora, "target_modules": "all-linear"}} if lora else {}
    if model == "random-10m":
        policy = _random_10m(device)
    else:
        path = "smollm2" if model == "smollm2" else pretrain_tiny(env.unwrapped.task, progress=False)
        policy = algos.Policy.from_pretrained(path, device=device, **adapter)
    online = "group_size" in algos.get_algorithm(name).config_class.__dataclass_fields__
    extra = {"group_size": group_size} if online else {}
    agent = algos.make(name, policy, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       micro_batch_size=micro_batch_size, **extra)
    agent.learn(env, max_steps=warmup, progress=False)
    if torch.cuda.is_available() and policy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    history = agent.learn(env, max_steps=warmup + steps, progress=False)[warmup:]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if policy.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({
        "algorithm": name, "micro_batch_size": micro_batch_size, "s_per_step": elapsed / steps,
        "cpu_s_per_step": cpu / steps,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "trained_tok_s": sum(h.get("tokens/trained", 0) for h in history) / elapsed,
        "generated_tok_s": sum(h.get("tokens/generated", 0) for h in history) / elapsed,
        "peak_mb": peak_mb, "device": str(policy.device),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="textenv/Arithmetic-v0")
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="default: all five (grao alone with --micro-batch-sizes)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation cap (default: 6 for Arithmetic, 64 otherwise)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--micro-batch-sizes", nargs="+", type=int, default=None,
                        help="measure peak memory at each micro-batch size (prompt groups per pass)")
    parser.add_argument("--model", choices=["tiny", "random-10m", "smollm2"], default=None,
                        help="tiny: the task's pretrained tiny model (default); random-10m: ~10M random "
                             "parameters (default with --micro-batch-sizes); smollm2: the embedded "
                             "SmolLM2-135M-Instruct")
    parser.add_argument("--lora", type=int, default=None, metavar="R",
                        help="train a LoRA adapter of rank R on all linear layers (alpha 2R) instead of all weights")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (a benchmark cell uses 1)")
    args = parser.parse_args(argv)

    sweep = args.micro_batch_sizes is not None
    if sweep and any(m < 1 for m in args.micro_batch_sizes):
        parser.error("--micro-batch-sizes must be >= 1")
    model = args.model or ("random-10m" if sweep else "tiny")
    max_new_tokens = args.max_new_tokens or (32 if sweep else 6 if "Arithmetic" in args.task else 64)
    algorithms = args.algorithms or (["grao"] if sweep else ["sft", "dpo", "ppo", "grpo", "grao"])
    runs = [(name, m) for name in algorithms for m in (args.micro_batch_sizes if sweep else [None])]
    ctx = mp.get_context("spawn")
    rows = []
    for name, micro in runs:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(args.task, name, args.steps, args.warmup, args.group_size,
                                                   args.batch_size, max_new_tokens, args.device, queue, model,
                                                   micro, args.lora, args.threads))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{name}: failed (exit code {proc.exitcode})", file=sys.stderr)
            continue
        rows.append(queue.get())
        print(f"measured {name}" + (f" micro_batch_size={micro}" if sweep else ""), flush=True)
    if not rows:
        return 1
    if sweep:
        print(f"\n{args.task}, {model} ({rows[0]['parameters'] / 1e6:.1f}M parameters), batch {args.batch_size} "
              f"prompts, G = {args.group_size}, max {max_new_tokens} new tokens, {args.steps} steps, "
              f"device {rows[0]['device']}")
        print(f"{'algorithm':10s} {'micro':>6s} {'peak MB':>9s} {'x full':>7s} {'s/step':>8s} {'x full':>7s}")
        for r in rows:
            full = next(f for f in rows if f["algorithm"] == r["algorithm"])
            print(f"{r['algorithm']:10s} {r['micro_batch_size']:6d} {r['peak_mb']:9.0f} "
                  f"{r['peak_mb'] / full['peak_mb']:7.2f} {r['s_per_step']:8.3f} "
                  f"{r['s_per_step'] / full['s_per_step']:7.2f}")
        return 0
    base = next((r for r in rows if r["algorithm"] == "sft"), rows[0])
    print(f"\n{args.task}, batch {args.batch_size} prompts, G = {args.group_size}, "
          f"max {max_new_tokens} new tokens, {args.steps} steps "
          f"after {args.warmup} warm-up, device {rows[0]['device']}")
    print(f"{'algorithm':10s} {'s/step':>8s} {'cpu s/step':>10s} {'x ' + base['algorithm']:>8s} {'trained tok/s':>14s} "
          f"{'generated tok/s':>16s} {'peak MB':>9s}")
    for r in rows:
        print(f"{r['algorithm']:10s} {r['s_per_step']:8.3f} {r['cpu_s_per_step']:10.3f} "
              f"{r['s_per_step'] / base['s_per_step']:8.2f} "
              f"{r['trained_tok_s']:14.0f} {r['generated_tok_s']:16.0f} {r['peak_mb']:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
