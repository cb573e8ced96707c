"""One training run on two processes (CPU, gloo) equals the one-process run with the same global batch,
under both data-parallel engines (DDP and FSDP2).

The two-process runs are real launches (``torchrun``, ``accelerate launch``) of this file as a worker
(one launch per engine, every algorithm inside it) and of ``python -m algos.train``; the one-process
references run in this process. Tiny random models and 2 steps keep the whole module to a few minutes
on two busy cores. Float sums differ between one process and two (and between machines and thread
counts), so weights are compared within tolerances measured here, never against recorded numbers.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import algos
import textenv
from algos import engine as engines
from algos.train import parse_settings, parse_value

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMMON = {"batch_size": 4, "max_new_tokens": 4, "seed": 1, "micro_batch_size": 1}  # 2 micro-batches per rank
ONLINE = {"group_size": 3, "generation_chunk": 2}  # chunks of batch_size / 2: samples as on one process
LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
# Each case exercises a batch-wide statistic, the reference policy or the step's machinery on two processes.
CASES = {
    "sft": ("sft", {}),
    "dpo": ("dpo", {}),  # the reference is a frozen copy (sharded under FSDP2)
    "dpo_lora": ("dpo", {}),  # the reference is the adapter switched off
    "grpo": ("grpo", {**ONLINE, "scale_rewards": "batch", "num_iterations": 2}),
    "grao": ("grao", ONLINE),
    "ppo": ("ppo", {**ONLINE, "whiten_rewards": True, "target_kl": 0.01, "kl_horizon": 10, "num_minibatches": 1}),
}
# The same algorithms on a multi-turn env (ByteTurns): each process plays its share of the step's episode groups.
MULTITURN_CASES = {
    "sft_multiturn": ("sft", {"generation_chunk": 2}),
    "dpo_multiturn": ("dpo", {"generation_chunk": 2}),
    "grpo_multiturn": ("grpo", {**ONLINE, "scale_rewards": "batch", "credit": "per_turn", "turn_gamma": 0.9}),
    "grao_multiturn": ("grao", ONLINE),
    "ppo_multiturn": ("ppo", {**ONLINE, "whiten_rewards": True, "num_minibatches": 1}),
}
STEPS = 2
# Measured here (torch 2.13 CPU, gloo, 1 thread per process): two processes against one after 2 steps at
# lr 1e-4, the largest difference over all weights of all cases: DDP 6e-8, FSDP2 2.8e-7 (GRPO: micro-batch
# gradients are reduce-scattered one by one, and the gradient norm is summed shard by shard). Adam moves a
# weight by about lr per step and turns summation noise into up to ~lr * noise / |g| on weights whose
# gradient is near 0; the bound, several times the largest seen, is still a fiftieth of one step, so a
# wrong gradient (a missing rank, a doubled one) fails it by far.
TOLERANCE = {"ddp": 2e-6, "fsdp": 2e-6}


def varied_env() -> textenv.TextGenEnv:
    """Arithmetic's data with a reward that varies between random completions (the built-in one gives a
    random model all zeros, which would leave advantages and their batch statistics untested)."""
    task = textenv.make_task("textenv/Arithmetic-v0")

    def byte_sum(prompts, completions, references=None, **columns):
        return [(sum(map(ord, c)) % 7) / 6 for c in completions]

    return textenv.TextGenEnv(textenv.Task("Varied-v0", splits=task.splits, reward=byte_sum))


class ByteTurns(textenv.MultiTurnTask):
    """A multi-turn task whose rewards vary between random texts: each turn pays (byte sum % 7) / 6, and an
    episode ends at a message whose byte sum is a multiple of 3 (else after 3 turns), so episodes of one
    step, and the two processes' shares, end at different turns. The oracle says "7"."""

    name = "ByteTurns-v0"
    splits = {"train": list(range(8)), "eval": [0, 1]}
    max_turns = 3

    def reset(self, row, rng):
        return [{"role": "user", "content": f"{row}+{row}="}], row

    def respond(self, state, message):
        total = sum(map(ord, message["content"]))
        return textenv.Reply([{"role": "user", "content": "more"}], reward=(total % 7) / 6, done=total % 3 == 0)

    def oracle(self, state):
        return "7"


def env_of(case: str):
    return textenv.MultiTurnEnv(ByteTurns()) if case in MULTITURN_CASES else varied_env()


def make_case(case: str, model_dir: Path, engine: engines.Engine | None = None) -> algos.Agent:
    name, config = {**CASES, **MULTITURN_CASES}[case]
    torch.manual_seed(0)  # LoRA initialises its A matrices from the global generator
    policy = algos.Policy.from_pretrained(model_dir, lora=LORA if case.endswith("_lora") else None)
    return algos.make(name, policy, engine, **COMMON, **config)


def full_weights(agent: algos.Agent) -> dict[str, torch.Tensor]:
    """Every trained module's whole state dict (gathered on rank 0 when sharded; every rank must call it)."""
    return {f"{name}.{key}": value.detach().clone() for name, module in agent._trained.items()
            for key, value in agent.engine.full_state_dict(module).items()}


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "tokens/per_s"} for r in history]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from conftest import random_policy

    path = tmp_path_factory.mktemp("model") / "tiny-random"
    random_policy().save(path)
    return path


class Gate(torch.nn.Module):
    """A head whose second layer only some ranks use: its parameters get no gradient on the others."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first, self.second = torch.nn.Linear(32, 1), torch.nn.Linear(32, 1)

    def forward(self, hidden: torch.Tensor, both: bool) -> torch.Tensor:
        return self.first(hidden) + (self.second(hidden) if both else 0)


GATE_BATCHES = [(["1+1="], ["2"]), (["7+8="], ["15"])]  # rank r's batch; rank 0 alone uses Gate.second


def gate_gradients(policy: algos.Policy, gate: torch.nn.Module, rank: int) -> None:
    """Backpropagate rank ``rank``'s loss through the policy and the gate (``gate`` may be an engine's wrapper)."""
    batch = policy.encode(*GATE_BATCHES[rank])
    logps, hidden = policy.logprobs_and_hidden(batch)
    (gate(hidden, both=rank == 0).sum() - logps.sum()).backward()


GENERATION = {"prompts": [["1+1=", "22+3="], ["7+8=", "9+9="]], "max_new_tokens": [3, 9], "seed": 5}


# ------------------------------------------------------------------------------------ without launching
def test_each_rank_keeps_its_contiguous_share_of_what_every_rank_draws():
    env = textenv.batched(varied_env())
    drawn = env.sample(4, np.random.default_rng(0))
    shares = [engines.Engine(rank, 2).shard(env).sample(4, np.random.default_rng(0)) for rank in (0, 1)]
    assert shares[0] + shares[1] == drawn
    with pytest.raises(ValueError, match=r"3 examples of a step cannot be split evenly over 2 processes"):
        engines.Engine(0, 2).shard(env).sample(3, np.random.default_rng(0))


def test_a_prompt_samples_the_same_on_rank_1_as_on_one_process(model_dir):
    policy, env = algos.Policy.from_pretrained(model_dir), textenv.batched(varied_env())
    examples = env.sample(4, np.random.default_rng(0))
    settings = SimpleNamespace(group_size=2, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                               max_new_tokens=6, generation_chunk=2)
    one = algos.collect(policy, env, examples, settings, np.random.default_rng(5))
    rank1 = algos.collect(policy, env, examples[2:], settings, np.random.default_rng(5),  # rank 1 of 2
                          offset=engines.Engine(1, 2).offset_of_share(2))
    assert rank1.samples.texts == one.samples.texts[4:] and torch.equal(rank1.rewards, one.rewards[2:])
    assert one.samples.texts[:4] != one.samples.texts[4:]
    with pytest.raises(ValueError, match=r"generate\(\) got 1 seeds for 2 chunks of prompts"):
        policy.generate(["1+1=", "2+2="], batch_size=1, seed=[3])


def test_a_batch_that_does_not_split_over_the_processes_is_refused(model_dir):
    agent = algos.make("grao", algos.Policy.from_pretrained(model_dir), batch_size=3, group_size=2)
    agent.engine = engines.Engine(0, 2)  # what two launched processes would see (checked before any message)
    with pytest.raises(algos.ConfigError, match=r"GRAOConfig.batch_size \(3\) must be a multiple of the number "
                                                r"of processes \(2\)"):
        agent.learn(varied_env(), 1, progress=False)
    agent = algos.make("ppo", algos.Policy.from_pretrained(model_dir), batch_size=4, num_minibatches=4)
    agent.engine = engines.Engine(1, 2)
    with pytest.raises(algos.ConfigError, match=r"num_minibatches \(4\) must be <= batch_size / processes \(2\)"):
        agent.learn(varied_env(), 1, progress=False)


def test_set_values_are_parsed_as_literals_never_evaluated():
    assert parse_settings(["lr=1e-4", "loss_type=dapo", "micro_batch_size=null", "imitation=false",
                           "score_temperature='sampling'", "group_size = 8"]) == {
        "lr": 1e-4, "loss_type": "dapo", "micro_batch_size": None, "imitation": False,
        "score_temperature": "sampling", "group_size": 8}
    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"
    with pytest.raises(algos.ConfigError, match=r"--set 'lr': expected key=value"):
        parse_settings(["lr"])
    with pytest.raises(algos.ConfigError, match=r"--set lr: given twice"):
        parse_settings(["lr=1", "lr=2"])


# ------------------------------------------------------------------------------------ two processes
@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def launched(request, model_dir, tmp_path_factory) -> tuple[str, Path]:
    """One torchrun launch per engine: every case trained, checkpointed and resumed on two processes."""
    out = tmp_path_factory.mktemp(request.param)
    launch(torchrun(str(Path(__file__)), request.param, str(out), str(model_dir)), out)
    return request.param, out


@pytest.fixture(scope="module")
def one_process(model_dir) -> dict[str, algos.Agent]:
    """Each case trained on this one process with the same global batch."""
    agents = {}
    for case in [*CASES, *MULTITURN_CASES]:
        agents[case] = make_case(case, model_dir)
        agents[case].learn(env_of(case), STEPS, progress=False)
    return agents


def test_two_processes_train_every_algorithm_as_one_process_does(launched, one_process):
    engine, out = launched
    for case, one in one_process.items():
        two = load_file(out / f"{case}.safetensors")
        want = full_weights(one)
        assert two.keys() == want.keys(), case
        for key, value in want.items():
            assert torch.allclose(two[key], value, rtol=0, atol=TOLERANCE[engine]), \
                f"{engine}/{case}: {key} differs from one process by {(two[key] - value).abs().max():.3g}"
        start = full_weights(make_case(case, one_process_model_dir(one)))
        if "episodes/turns" in one.history[0]:  # sampled episodes: some ended before the last turn
            assert 1 < one.history[0]["episodes/turns"] < 3, case
        assert any(not torch.equal(want[key], start[key]) for key in want), f"{case}: nothing trained"
        histories = [json.loads((out / f"{case}-rank{r}.json").read_text())["history"] for r in (0, 1)]
        for got, expected in zip(histories[0], one.history, strict=True):
            assert got.keys() == expected.keys()
            for key in ("loss", "grad_norm", "tokens/trained", "reward/mean", "kl_coef", "nll", "episodes/turns"):
                if key in expected:
                    assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), f"{engine}/{case}: {key}"
        assert untimed(histories[0]) == untimed(histories[1]), f"{engine}/{case}: ranks logged different records"


def one_process_model_dir(agent: algos.Agent) -> Path:
    return Path(agent.policy.model.config._name_or_path)


@pytest.mark.parametrize("launched", ["fsdp"], indirect=True)  # an FSDP2 option: only its launch runs it
def test_fsdp2_accumulating_unsharded_gradients_trains_as_one_process(launched, one_process):
    engine, out = launched
    two, want = load_file(out / "sft-unsharded-accumulation.safetensors"), full_weights(one_process["sft"])
    for key, value in want.items():
        assert torch.allclose(two[key], value, rtol=0, atol=TOLERANCE[engine]), key


def test_resume_from_a_two_process_checkpoint_ends_where_the_uninterrupted_run_ends(launched):
    engine, out = launched
    for case in CASES:
        uninterrupted, resumed = (load_file(out / f"{case}{suffix}.safetensors") for suffix in ("", "-resumed"))
        for key, value in uninterrupted.items():
            assert torch.equal(resumed[key], value), f"{engine}/{case}: {key} differs after resuming"


def test_each_rank_holds_half_the_parameters_and_adam_state_under_fsdp2_and_all_under_ddp(launched):
    engine, out = launched
    for case in CASES:
        shards = [json.loads((out / f"{case}-rank{r}.json").read_text())["shards"] for r in (0, 1)]
        for what in ("parameters", "optimizer_state"):
            total, local = shards[0][what]["total"], [s[what]["local"] for s in shards]
            assert sum(local) == (total if engine == "fsdp" else 2 * total), f"{engine}/{case}: {what}"
            if engine == "fsdp":  # uneven rows are padded; a value head's single row sits on one rank
                assert all(abs(n - total / 2) <= 0.02 * total for n in local), f"{case}: {what} {local} of {total}"


def test_a_two_process_lora_policy_merges_into_a_plain_model_on_rank_0(launched, model_dir):
    engine, out = launched
    trained = make_case("dpo_lora", model_dir).policy
    trained.model.load_state_dict({k.removeprefix("policy."): v for k, v in
                                   load_file(out / "dpo_lora.safetensors").items()})
    merged = algos.Policy.from_pretrained(out / "merged")
    assert not merged.is_lora and not any(out.glob("merged/adapter*"))
    batch = trained.encode(["1+1=", "7+8="], ["2", "15"])
    with torch.no_grad():
        torch.testing.assert_close(merged.logprobs(batch), trained.logprobs(batch), rtol=1e-4, atol=1e-5)


def test_a_parameter_without_a_gradient_on_one_rank_is_reduced_with_zeros(launched, model_dir):
    engine, out = launched
    got = load_file(out / "gate-gradients.safetensors")
    want: dict[str, torch.Tensor] = {}
    for rank in (0, 1):  # the sum of what each rank's batch gives on one process, second only from rank 0's
        gate = Gate()
        gate_gradients(algos.Policy.from_pretrained(model_dir), gate, rank)
        for name, p in gate.named_parameters():
            if p.grad is not None:
                want[name] = want.get(name, 0) + p.grad
    assert got.keys() == want.keys() == {"first.weight", "first.bias", "second.weight", "second.bias"}
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"{engine}: {name}")


def test_generation_in_lock_step_when_ranks_end_at_different_lengths(launched, model_dir):
    engine, out = launched
    policy = algos.Policy.from_pretrained(model_dir)
    for rank in (0, 1):
        got = json.loads((out / f"generated-rank{rank}.json").read_text())
        want = policy.generate(GENERATION["prompts"][rank], num_samples=2, temperature=1.0, seed=GENERATION["seed"],
                               max_new_tokens=GENERATION["max_new_tokens"][rank])
        assert got["texts"] == want.texts, f"{engine}: rank {rank} sampled otherwise than one process"
        assert got["width"] == want.completion_ids.shape[1]
    widths = [json.loads((out / f"generated-rank{rank}.json").read_text())["width"] for rank in (0, 1)]
    assert widths[0] < widths[1]  # rank 0 finished first and ran rank 1's remaining decoding steps in lock-step


def test_the_gpu_check_runs_its_parity_checks_on_the_cpu(tmp_path):
    """benchmarks.gpu_check is meant for a CUDA host (NCCL); its CPU dry run keeps it from rotting here."""
    done = launch([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--skip-memory"], tmp_path)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "True" in line]
    assert len(rows) == 15, done.stdout  # 5 algorithms x (one process, DDP, FSDP2), each resumed bitwise


TRAIN = ["grao", "--env", "textenv/Arithmetic-v0", "--steps", "2", "--quiet", "--eval-every", "2",
         "--eval-prompts", "4", "--set", "batch_size=4", "--set", "group_size=3", "--set", "max_new_tokens=4",
         "--set", "generation_chunk=2", "--set", "micro_batch_size=1"]


@pytest.fixture(scope="module")
def torchrun_out(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "run"
    launch(torchrun("-m", "algos.train", *TRAIN, "--engine", "fsdp", "--model", str(model_dir), "--out", str(out),
                    "--checkpoint-every", "1"), out.parent)
    return out


def test_the_fsdp_trainer_on_two_processes_writes_once_what_one_process_writes(torchrun_out, model_dir, tmp_path):
    out = torchrun_out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events.")) == [
        "checkpoints", "final", "history.jsonl"]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    shards = sorted(p.name for p in (out / "checkpoints" / "step-1" / "state").iterdir())
    assert len(shards) == 2 and all(name.endswith(".safetensors") for name in shards)  # one per rank, no pickle

    from algos.train import main
    main([*TRAIN, "--model", str(model_dir), "--out", str(tmp_path / "one")])
    one_history = [json.loads(line) for line in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    evals = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in (history[-1], one_history[-1])]
    assert evals[0] and evals[0] == pytest.approx(evals[1])  # every rank evaluated, as one process does
    two, one = algos.Agent.load(out / "final"), algos.Agent.load(tmp_path / "one" / "final")  # on one process
    assert two.step == one.step == 2 and two.config.engine == "fsdp"
    for a, b in zip(full_weights(two).values(), full_weights(one).values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=TOLERANCE["fsdp"])


def test_accelerate_launch_resumes_a_two_process_fsdp_checkpoint_exactly(torchrun_out, model_dir, tmp_path):
    out = tmp_path / "resumed"
    launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "algos.train", *TRAIN, "--engine", "fsdp", "--model", str(model_dir), "--out", str(out),
            "--resume", str(torchrun_out / "checkpoints" / "step-1")], tmp_path)
    assert [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()] == [2]
    resumed, uninterrupted = algos.Agent.load(out / "final"), algos.Agent.load(torchrun_out / "final")
    for a, b in zip(full_weights(resumed).values(), full_weights(uninterrupted).values(), strict=True):
        assert torch.equal(a, b)


def _worker(engine_name: str, out: Path, model_dir: Path) -> None:
    """Under torchrun: each case trained for 2 steps with a checkpoint after each, then resumed from step 1;
    rank 0 writes both runs' whole weights, every rank its history and shard sizes (a test's view; the
    library itself writes checkpoint shards on every rank and the rest on rank 0 only). Then each rank
    samples its own prompts to its own length in lock-step."""
    torch.set_num_threads(1)
    engines.init_process_group()
    rank = torch.distributed.get_rank()
    for case in CASES:
        agent = make_case(case, model_dir, engines.make_engine(engine_name))
        agent.learn(varied_env(), STEPS, progress=False, checkpoint_every=1, checkpoint_dir=out / f"{case}-ckpt")
        weights = full_weights(agent)
        resumed = make_case(case, model_dir, engines.make_engine(engine_name))
        resumed.learn(varied_env(), STEPS, progress=False, resume_from=out / f"{case}-ckpt" / "step-1")
        resumed_weights = full_weights(resumed)
        if rank == 0:
            save_file(weights, out / f"{case}.safetensors")
            save_file(resumed_weights, out / f"{case}-resumed.safetensors")
        (out / f"{case}-rank{rank}.json").write_text(json.dumps({"history": agent.history,
                                                                 "shards": shard_sizes(agent)}))
        if case == "dpo_lora":
            agent.save_merged(out / "merged")
    for case in MULTITURN_CASES:  # trained only (checkpoints are the same machinery as above)
        agent = make_case(case, model_dir, engines.make_engine(engine_name))
        agent.learn(env_of(case), STEPS, progress=False)
        weights = full_weights(agent)
        if rank == 0:
            save_file(weights, out / f"{case}.safetensors")
        (out / f"{case}-rank{rank}.json").write_text(json.dumps({"history": agent.history}))
    from torch.distributed.tensor import DTensor

    gate, policy = Gate(), algos.Policy.from_pretrained(model_dir)
    engine = engines.make_engine(engine_name)
    gate_gradients(policy, engine.prepare(policy, {"gate": gate})["gate"], rank)
    grads = {name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
             for name, p in gate.named_parameters()}
    if rank == 0:
        save_file(grads, out / "gate-gradients.safetensors")
    if engine_name == "fsdp":  # micro-batch gradients accumulated unsharded, reduce-scattered once per step
        from algos.fsdp import FSDP2Engine

        agent = make_case("sft", model_dir, FSDP2Engine(unsharded_accumulation=True))
        agent.learn(varied_env(), STEPS, progress=False)
        weights = full_weights(agent)
        if rank == 0:
            save_file(weights, out / "sft-unsharded-accumulation.safetensors")
    policy = make_case("sft", model_dir, engines.make_engine(engine_name)).policy
    samples = policy.generate(GENERATION["prompts"][rank], num_samples=2, temperature=1.0, seed=GENERATION["seed"],
                              max_new_tokens=GENERATION["max_new_tokens"][rank])
    (out / f"generated-rank{rank}.json").write_text(json.dumps({"texts": samples.texts,
                                                                "width": samples.completion_ids.shape[1]}))
    engines.close()


def shard_sizes(agent: algos.Agent) -> dict[str, dict[str, int]]:
    """Elements of the trained parameters and of the Adam state: in all, and held by this rank."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> int:
        return t.to_local().numel() if isinstance(t, DTensor) else t.numel()

    params = [p for group in agent.optimizer.param_groups for p in group["params"]]
    states = [t for p in params for k, t in agent.optimizer.state[p].items() if k != "step"]
    return {"parameters": {"total": sum(p.numel() for p in params), "local": sum(local(p) for p in params)},
            "optimizer_state": {"total": sum(t.numel() for t in states), "local": sum(local(t) for t in states)}}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
