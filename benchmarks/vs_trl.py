"""Our GRPO step against TRL's ``GRPOTrainer`` on the same real model, batch and LoRA: time, phases, memory.

    pip install trl        # not a dependency of the project: only this script imports it
    python -m benchmarks.vs_trl [--rounds 3] [--steps 3] [--warmup 1] [--threads 2] [--lora 16 | --full]

Both sides train SmolLM2-135M-Instruct (the embedded "smollm2" checkpoint; TRL loads the same cached
safetensors folder) on ChatSums-v0's chat prompts with the task's reward: 4 prompts x G = 4 samples x
``--max-new-tokens`` 16, beta = 0.04, learning rate 2e-4, temperature 0.7, fp32, one update per batch,
LoRA r = 16 (alpha 32) on all linear layers, or all weights with ``--full``. Each measurement is a fresh
child process (so that its peak resident memory is its own), and the two sides alternate round by round
(ours, TRL, ours, TRL, ...) so that a shared machine's load falls on both alike; the table reports
medians over rounds.

The phases are timed by wrapping the model's ``forward`` and ``generate``, ``torch.autograd.backward`` and
``AdamW.step`` in the child, the same wrappers on both sides: generation, forwards without gradients
(the reference policy, old log-probs), forwards with gradients (the policy), backward, optimiser, and the
rest of the step (reward, tokenisation, bookkeeping). Peak memory is the peak resident set of the process
over the measured steps, and per phase the peak while the phase ran (Linux ``VmHWM``, reset at every phase
start through ``/proc/self/clear_refs``); "after load" is the resident set once the model and the trainer
are built. Both include what glibc's allocator keeps after tensors are freed (it does not hand most of it
back to the system), which is how a process holding 55 MB of live activations between steps sits at 3 GB.
Gradient checkpointing is on for both sides by default because TRL's ``GRPOConfig`` turns it on by default
(this project leaves it off unless asked); ``--no-gradient-checkpointing`` turns it off on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASES = ("generate", "forward (no grad)", "forward (grad)", "backward", "optimizer", "other")


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


class PhaseTimer:
    """Seconds and peak resident memory per phase; a phase nested in another (the forwards inside generate,
    the optimiser's own backward hooks) counts for the outer one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mb: dict[str, float] = defaultdict(float)
        self.active: str | None = None
        self.overall_mb = 0.0  # the peak over the whole measurement, phases or not (VmHWM is reset per phase)

    def wrap(self, owner: Any, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.active is not None:
                return original(*args, **kwargs)
            import torch

            self.active = phase
            if phase == "forward":
                self.active = "forward (grad)" if torch.is_grad_enabled() else "forward (no grad)"
            self.overall_mb = max(self.overall_mb, _rss_mb("VmHWM"))
            _reset_peak()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[self.active] += time.perf_counter() - start
                self.peak_mb[self.active] = max(self.peak_mb[self.active], _rss_mb("VmHWM"))
                self.active = None

        setattr(owner, attribute, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.peak_mb.clear()
        _reset_peak()
        self.overall_mb = _rss_mb("VmHWM")


def _instrument() -> PhaseTimer:
    import torch
    from transformers import LlamaForCausalLM, LlamaModel

    timer = PhaseTimer()
    timer.wrap(LlamaForCausalLM, "generate", "generate")
    timer.wrap(LlamaForCausalLM, "forward", "forward")
    timer.wrap(LlamaModel, "forward", "forward")  # what TRL's fused LM head calls (it replaces the model's forward)
    timer.wrap(torch.autograd, "backward", "backward")
    timer.wrap(torch.optim.AdamW, "step", "optimizer")
    return timer


def _prompts_and_reward(n: int):
    import textenv

    env = textenv.make("textenv/ChatSums-v0").unwrapped
    examples = env.task.split("train")[:n]
    reward = env.task.reward

    def chat_sums_reward(completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(r) for r in reward(texts, texts, references=list(reference))]

    return examples, chat_sums_reward


def _ours(args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch

    import algos
    import textenv

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    timer = _instrument()
    lora = None if args.full else {"r": args.lora, "alpha": 2 * args.lora, "target_modules": "all-linear"}
    policy = algos.Policy.from_pretrained("smollm2", lora=lora, gradient_checkpointing=args.gradient_checkpointing)
    agent = algos.make("grpo", policy, lr=2e-4, batch_size=args.batch_size, group_size=args.group_size,
                       max_new_tokens=args.max_new_tokens, temperature=0.7, beta=0.04)
    env = textenv.make("textenv/ChatSums-v0")
    policy.reference()
    after_load = _rss_mb()
    agent.learn(env, max_steps=args.warmup, progress=False)
    timer.reset()
    start = time.perf_counter()
    agent.learn(env, max_steps=args.warmup + args.steps, progress=False)
    queue.put(_row("ours", timer, time.perf_counter() - start, args.steps, after_load))


def _trl(args: argparse.Namespace, queue: mp.Queue) -> None:
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from algos.smollm2 import smollm2_path

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    timer = _instrument()
    examples, reward = _prompts_and_reward(256)
    data = datasets.Dataset.from_list([{"prompt": ex.prompt, "reference": ex.reference[-1]["content"]}
                                       for ex in examples])
    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    peft_config = None
    if not args.full:
        import peft

        peft_config = peft.LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0,
                                      target_modules="all-linear", task_type="CAUSAL_LM")
    per_step = args.batch_size * args.group_size
    config = trl.GRPOConfig(
        output_dir=str(Path(args.tmp) / "trl"), use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=2e-4, per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1, num_generations=args.group_size, max_completion_length=args.max_new_tokens,
        temperature=0.7, top_p=1.0, top_k=0, beta=0.04, num_iterations=1, loss_type="grpo", seed=0,
        disable_tqdm=True, dataloader_num_workers=0, bf16=False, fp16=False, disable_dropout=True,
        lr_scheduler_type="constant", gradient_checkpointing=args.gradient_checkpointing)
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            if len(marks) == 0 and state_step() == args.warmup:
                timer.reset()
                marks.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if state_step() == args.warmup + args.steps:
                marks.append(time.perf_counter())

    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                              processing_class=tokenizer, peft_config=peft_config, callbacks=[StepClock()])

    def state_step() -> int:
        return trainer.state.global_step

    after_load = _rss_mb()
    trainer.train()
    queue.put(_row("trl " + trl.__version__, timer, marks[1] - marks[0], args.steps, after_load))


def _row(name: str, timer: PhaseTimer, elapsed: float, steps: int, after_load: float) -> dict[str, Any]:
    seconds = {phase: timer.seconds.get(phase, 0.0) / steps for phase in PHASES[:-1]}
    seconds["other"] = elapsed / steps - sum(seconds.values())
    return {"name": name, "s_per_step": elapsed / steps, "seconds": seconds, "phase_peak_mb": dict(timer.peak_mb),
            "peak_mb": max(timer.overall_mb, _rss_mb("VmHWM"), *timer.peak_mb.values()), "after_load_mb": after_load}


def _run(target: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 else None


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lora", type=int, default=16, metavar="R")
    parser.add_argument("--full", action="store_true", help="train all weights instead of a LoRA adapter")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="recompute activations in the backward pass, on both sides (default: on, as TRL's "
                             "GRPOConfig defaults it; --no-gradient-checkpointing is this project's default)")
    parser.add_argument("--only", choices=["ours", "trl"], default=None, help="measure one side only")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.threads) < 1 or args.warmup < 0:
        parser.error("--rounds, --steps and --threads must be >= 1, --warmup >= 0")
    sides = [("ours", _ours), ("trl", _trl)]
    sides = [s for s in sides if args.only in (None, s[0])]
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        for round_ in range(args.rounds):
            for side, target in sides:
                row = _run(target, args)
                if row is None:
                    print(f"round {round_ + 1}: {side} failed")
                    return 1
                results[side].append(row)
                print(f"round {round_ + 1}: {row['name']:10s} {row['s_per_step']:6.2f} s/step, "
                      f"peak {row['peak_mb']:6.0f} MB", flush=True)
    what = "full fine-tuning" if args.full else f"LoRA r={args.lora} on all linear layers"
    what += ", gradient checkpointing " + ("on" if args.gradient_checkpointing else "off")
    print(f"\nSmolLM2-135M-Instruct, {what}, {args.batch_size} prompts x G={args.group_size} x "
          f"{args.max_new_tokens} new tokens, beta 0.04, fp32, {args.threads} threads; medians over "
          f"{args.rounds} rounds of {args.steps} steps after {args.warmup} warm-up")
    header = ["", "s/step", *PHASES, "peak RSS MB", "after load MB", *[f"peak in {p}" for p in PHASES[:-1]]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rows in results.values():
        med = statistics.median
        cells = [rows[0]["name"], f"{med(r['s_per_step'] for r in rows):.2f}",
                 *[f"{med(r['seconds'][p] for r in rows):.2f}" for p in PHASES],
                 f"{med(r['peak_mb'] for r in rows):.0f}", f"{med(r['after_load_mb'] for r in rows):.0f}",
                 *[f"{med(r['phase_peak_mb'].get(p, 0.0) for r in rows):.0f}" for p in PHASES[:-1]]]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
