"""The engines' parity checks on a GPU, with NCCL, and the peak GPU memory of each engine.

    python -m benchmarks.gpu_check                         # one CUDA GPU: a world of one over NCCL
    torchrun --nproc_per_node 2 -m benchmarks.gpu_check    # several GPUs
    python -m benchmarks.gpu_check --device cpu            # the same checks on the CPU over gloo (a dry run)

A world of one still runs every CUDA and NCCL path of the engines (DDP's bucketed all-reduce and its
comm hook, FSDP2's all-gather and reduce-scatter, lock-step generation, sharded checkpoints, full state
dicts). For each algorithm and each engine (DDP, FSDP2, FSDP2 with CPU offload) a tiny random model
trains 2 steps in micro-batches; its weights are compared with the one-process engine's on the same
global batch, and a run resumed from the step-1 checkpoint must end bitwise where it ends. Then a
larger random model (about 120M parameters) trains one SFT step per engine, in float32 and in
bf16 with gradient checkpointing, and the peak GPU memory of each is printed. Exits non-zero when a
check fails. Nothing is downloaded: the models are random, the data is Arithmetic's.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

import algos
import textenv
from algos import engine as engines
from algos.fsdp import FSDP2Engine
from rewards.tiny import byte_tokenizer

ENGINES: dict[str, Callable[[], engines.Engine]] = {
    "local": engines.Engine, "ddp": engines.DDPEngine, "fsdp": FSDP2Engine,
    "fsdp+offload": lambda: FSDP2Engine(cpu_offload=True)}
CASES = {"sft": {}, "dpo": {}, "grpo": {"group_size": 3, "scale_rewards": "batch", "num_iterations": 2},
         "grao": {"group_size": 3}, "ppo": {"group_size": 3, "whiten_rewards": True, "target_kl": 0.01,
                 "num_minibatches": 1}}  # minibatches are drawn per rank: equal to one process only as one
TOLERANCE = 1e-4  # GPU kernels sum in other orders than one process's; a wrong gradient is off by ~lr = 1e-4 and up


def engines_for(device: torch.device) -> dict[str, Callable[[], engines.Engine]]:
    """CPU offload only where there is a GPU to offload from."""
    return {k: v for k, v in ENGINES.items() if device.type == "cuda" or k != "fsdp+offload"}


def start(device: str) -> torch.device:
    """A process group even for one process (NCCL for CUDA tensors), and this rank's device."""
    if "WORLD_SIZE" not in os.environ:  # not launched: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("cuda:nccl,cpu:gloo")
        return torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("gloo")
    return torch.device("cpu")


def say(text: str) -> None:
    if dist.get_rank() == 0:
        print(text, flush=True)


def random_policy(device: torch.device, hidden: int = 32, layers: int = 2, bf16: bool = False,
                  gradient_checkpointing: bool = False) -> algos.Policy:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(4, hidden // 64), num_key_value_heads=max(2, hidden // 256),
        max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return algos.Policy(model, tokenizer, device=device, bf16=bf16, gradient_checkpointing=gradient_checkpointing)


def varied_env() -> textenv.TextGenEnv:
    task = textenv.make_task("textenv/Arithmetic-v0")

    def byte_sum(prompts, completions, references=None, **columns):
        return [(sum(map(ord, c)) % 7) / 6 for c in completions]

    return textenv.TextGenEnv(textenv.Task("Varied-v0", splits=task.splits, reward=byte_sum))


def weights(agent: algos.Agent) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().float().cpu() for name, module in agent._trained.items()
            for k, v in agent.engine.full_state_dict(module).items()}


def parity(device: torch.device, folder: Path) -> list[str]:
    """Each algorithm under each engine against the one-process engine; returns what failed."""
    failures, world = [], dist.get_world_size()
    common = {"batch_size": 2 * world, "max_new_tokens": 4, "seed": 1, "micro_batch_size": 1, "lr": 1e-4,
              "generation_chunk": 1}
    say("| algorithm | engine | max abs diff to one process | resume bitwise | peak GPU MiB |\n|---|---|---|---|---|")
    for name, config in CASES.items():
        reference = None
        for engine_name, make_engine in engines_for(device).items():
            if engine_name == "local" and world > 1:
                one = algos.make(name, random_policy(device), engines.Engine(), **{**common, **config})
                one.learn(varied_env(), 2, progress=False)  # each rank alone, on the whole batch
                reference = weights(one)
                continue
            _reset_peak(device)
            agent = algos.make(name, random_policy(device), make_engine(), **common, **config)
            agent.learn(varied_env(), 2, progress=False, checkpoint_every=1, checkpoint_dir=folder / engine_name / name)
            peak = _peak(device)
            got = weights(agent)
            resumed = algos.make(name, random_policy(device), make_engine(), **common, **config)
            resumed.learn(varied_env(), 2, progress=False, resume_from=folder / engine_name / name / "step-1")
            exact = all(torch.equal(a, b) for a, b in zip(got.values(), weights(resumed).values(), strict=True))
            if reference is None:
                reference = got
            diff = max((got[k] - v).abs().max().item() for k, v in reference.items()) if dist.get_rank() == 0 else 0.0
            say(f"| {name} | {engine_name} | {diff:.3g} | {exact} | {peak:.0f} |")
            if diff > TOLERANCE or not exact:
                failures.append(f"{name} under {engine_name}: diff {diff:.3g}, resume bitwise {exact}")
    return failures


def memory(device: torch.device, hidden: int, layers: int) -> None:
    """Peak GPU memory of one SFT step per engine, fp32 and bf16 + checkpointing (by default a random Llama of
    about 120M parameters: hidden 1024, 8 layers)."""
    say("\n| engine | precision | peak GPU MiB (rank 0) |\n|---|---|---|")
    for engine_name, make_engine in engines_for(device).items():
        for bf16 in (False, True):
            policy = random_policy(device, hidden=hidden, layers=layers, bf16=bf16, gradient_checkpointing=bf16)
            agent = algos.make("sft", policy, make_engine(), batch_size=8 * dist.get_world_size(),
                               micro_batch_size=4, max_new_tokens=16)
            _reset_peak(device)
            agent.learn(varied_env(), 1, progress=False)
            say(f"| {engine_name} | {'bf16 + checkpointing' if bf16 else 'fp32'} | {_peak(device):.0f} |")
            del agent, policy
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--skip-memory", action="store_true", help="only the parity checks")
    parser.add_argument("--memory-model", type=int, nargs=2, default=(1024, 8), metavar=("HIDDEN", "LAYERS"),
                        help="the random Llama whose peak memory is measured (default 1024 8: ~120M parameters)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu runs the same checks over gloo")
    device = start(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    say(f"torch {torch.__version__}, {name}, world of {dist.get_world_size()}, backend {dist.get_backend()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if dist.get_world_size() > 1:  # every rank checkpoints to rank 0's folder
            box = [str(folder)]
            dist.broadcast_object_list(box, src=0)
            folder = Path(box[0])
        failures = parity(device, folder)
    if not args.skip_memory:
        memory(device, *args.memory_model)
    engines.close()
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
