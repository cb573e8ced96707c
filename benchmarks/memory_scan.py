"""What one training forward + backward costs in memory on SmolLM2, by shape: the numbers behind the README's
memory estimates for real models.

    python -m benchmarks.memory_scan [--rows 16] [--prompt-tokens 48] [--completion-tokens 16 64] [--full]

For each completion length and with gradient checkpointing off and on, one process builds SmolLM2-135M-Instruct
(LoRA r = 16 on all linear layers, or all weights with ``--full``), makes a batch of ``--rows`` sequences of
``--prompt-tokens`` + T random tokens, hands freed memory back to the system (glibc ``malloc_trim``), and runs
``policy.logprobs`` with gradients and a backward pass of their sum. The working set is the peak resident set
during that forward + backward (Linux ``VmHWM``, reset just before) minus the resident set before it: the
activations the backward keeps, the logits at the T completion positions, the gradients and the temporaries.
The fit per row: working set = a x prompt tokens + c x completion tokens, where a is the activations of a
token and c - a what a completion token adds (its logits row of ``vocab_size`` floats, the log-softmax's
and the gradient's); two lengths T give a and c (the first and the last are used).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
from pathlib import Path
from typing import Any


def _rss(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure(rows: int, prompt: int, completion: int, checkpointing: bool, full: bool, queue: mp.Queue) -> None:
    import torch

    import algos
    from algos.policy import EncodedBatch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lora = None if full else {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    policy = algos.Policy.from_pretrained("smollm2", lora=lora, gradient_checkpointing=checkpointing)
    vocab = policy.model.config.vocab_size
    ids = torch.randint(3, vocab, (rows, prompt + completion))
    batch = EncodedBatch(ids[:, :prompt], torch.ones(rows, prompt, dtype=torch.long), ids[:, prompt:],
                         torch.ones(rows, completion, dtype=torch.long))
    for _ in range(2):  # the first pass warms up (lazy allocations, autograd's caches); the second counts
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        policy.logprobs(batch, temperature=0.7).sum().backward()
        peak = _rss("VmHWM")
        policy.model.zero_grad(set_to_none=True)
    queue.put({"completion": completion, "checkpointing": checkpointing, "working_mb": peak - before,
               "vocab": vocab})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--completion-tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--full", action="store_true", help="train all weights instead of a LoRA adapter")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    results: list[dict[str, Any]] = []
    for checkpointing in (False, True):
        for completion in args.completion_tokens:
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(args.rows, args.prompt_tokens, completion, checkpointing,
                                                       args.full, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                print(f"T={completion}, checkpointing={checkpointing}: failed")
                return 1
            results.append(queue.get())
    what = "all weights" if args.full else "LoRA r=16 on all linear layers"
    print(f"SmolLM2-135M-Instruct, {what}, fp32, {args.rows} rows x ({args.prompt_tokens} prompt + T completion) "
          f"tokens, one forward + backward of the log-probs")
    print("| gradient checkpointing | T | working set MB | MB per row |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {'on' if r['checkpointing'] else 'off'} | {r['completion']} | {r['working_mb']:.0f} | "
              f"{r['working_mb'] / args.rows:.1f} |")
    for checkpointing in (False, True):
        points = [r for r in results if r["checkpointing"] == checkpointing]
        if len(points) >= 2:
            (t0, w0), (t1, w1) = [(p["completion"], p["working_mb"] / args.rows) for p in (points[0], points[-1])]
            per_completion = (w1 - w0) / (t1 - t0)  # MB per completion token of a row, activations included
            per_token = (w0 - per_completion * t0) / args.prompt_tokens
            logits_floats = (per_completion - per_token) * 2**20 / 4 / results[0]["vocab"]
            print(f"checkpointing {'on' if checkpointing else 'off'}: {per_token * 1024:.0f} KB per token of a row "
                  f"(activations), {per_completion * 1024:.0f} KB per completion token, so "
                  f"{(per_completion - per_token) * 1024:.0f} KB more for its logits = {logits_floats:.1f} "
                  f"vocabulary-sized float32 rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
