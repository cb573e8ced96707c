"""One training run on two processes (CPU, gloo) equals the one-process run with the same global batch.

The two-process runs are real launches (``torchrun``, ``accelerate launch``) of this file as a worker
and of ``python -m algos.train``; the one-process references run in this process. Tiny random models
and 2 steps keep the whole module under a minute or so on two cores.
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
COMMON = {"batch_size": 4, "max_new_tokens": 4, "seed": 1}
ONLINE = {"group_size": 3, "generation_chunk": 2}  # chunks of batch_size / 2: samples as on one process
# Each case exercises a batch-wide statistic or the step's machinery on two processes.
CASES = {
    "sft": ("sft", {"micro_batch_size": 1}),
    "dpo": ("dpo", {}),
    "grpo": ("grpo", {**ONLINE, "scale_rewards": "batch", "num_iterations": 2}),
    "grao": ("grao", {**ONLINE, "micro_batch_size": 1}),
    "ppo": ("ppo", {**ONLINE, "whiten_rewards": True, "target_kl": 0.01, "kl_horizon": 10, "num_minibatches": 1}),
}
STEPS = 2


def varied_env() -> textenv.TextGenEnv:
    """Arithmetic's data with a reward that varies between random completions (the built-in one gives a
    random model all zeros, which would leave advantages and their batch statistics untested)."""
    task = textenv.make_task("textenv/Arithmetic-v0")

    def byte_sum(prompts, completions, references=None, **columns):
        return [(sum(map(ord, c)) % 7) / 6 for c in completions]

    return textenv.TextGenEnv(textenv.Task("Varied-v0", splits=task.splits, reward=byte_sum))


def trained(agent: algos.Agent) -> dict[str, torch.Tensor]:
    return {str(i): p.detach().clone() for i, p in enumerate(agent._trained_parameters())}


def train_case(case: str, model_dir: Path, log_dir: Path | None = None) -> algos.Agent:
    name, config = CASES[case]
    agent = algos.make(name, algos.Policy.from_pretrained(model_dir), **COMMON, **config)
    agent.learn(varied_env(), STEPS, progress=False, log_dir=log_dir)
    return agent


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "tokens/per_s"} for r in history]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
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
def test_two_processes_train_every_algorithm_as_one_process_does(model_dir, tmp_path):
    launch(torchrun(str(Path(__file__)), str(tmp_path), str(model_dir)), tmp_path)
    for case in CASES:
        ranks = [load_file(tmp_path / f"{case}-rank{r}.safetensors") for r in (0, 1)]
        histories = [json.loads((tmp_path / f"{case}-rank{r}.json").read_text()) for r in (0, 1)]
        one = train_case(case, model_dir)
        for key, value in trained(one).items():
            assert torch.equal(ranks[0][key], ranks[1][key]), f"{case}: ranks differ in parameter {key}"
            # Float summation order differs across ranks; Adam turns a gradient's noise into up to ~lr * noise/|g|
            # on parameters whose gradient is near 0, so the weights agree to a small fraction of one step (lr 1e-4).
            assert torch.allclose(ranks[0][key], value, rtol=0, atol=1e-5), \
                f"{case}: parameter {key} differs from one process by {(ranks[0][key] - value).abs().max()}"
        for got, want in zip(histories[0], one.history, strict=True):
            assert got.keys() == want.keys()
            for key in ("loss", "grad_norm", "tokens/trained", "reward/mean", "kl_coef", "nll"):
                if key in want:
                    assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), f"{case}: {key}"
        assert untimed(histories[0]) == untimed(histories[1]), f"{case}: ranks logged different records"
    # Each rank was asked to write to its own folder; only rank 0 did.
    assert (tmp_path / "logs-rank0" / "history.jsonl").exists() and (tmp_path / "saved-rank0" / "agent.json").exists()
    assert not (tmp_path / "logs-rank1").exists() and not (tmp_path / "saved-rank1").exists()


TRAIN = ["grao", "--env", "textenv/Arithmetic-v0", "--steps", "2", "--quiet", "--eval-every", "2",
         "--eval-prompts", "4", "--set", "batch_size=4", "--set", "group_size=3", "--set", "max_new_tokens=4",
         "--set", "generation_chunk=2"]


@pytest.fixture(scope="module")
def torchrun_out(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "run"
    launch(torchrun("-m", "algos.train", *TRAIN, "--model", str(model_dir), "--out", str(out),
                    "--checkpoint-every", "1"), out.parent)
    return out


def test_the_trainer_on_two_processes_writes_once_what_one_process_writes(torchrun_out, model_dir, tmp_path):
    out = torchrun_out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events.")) == [
        "checkpoints", "final", "history.jsonl"]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]

    from algos.train import main
    main([*TRAIN, "--model", str(model_dir), "--out", str(tmp_path / "one")])
    one_history = [json.loads(line) for line in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    evals = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in (history[-1], one_history[-1])]
    assert evals[0] and evals[0] == pytest.approx(evals[1])  # rank 0 evaluated, as one process does
    two, one = algos.Agent.load(out / "final"), algos.Agent.load(tmp_path / "one" / "final")
    assert two.step == one.step == 2
    for a, b in zip(trained(two).values(), trained(one).values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=2e-6)


def test_accelerate_launch_resumes_a_two_process_checkpoint_exactly(torchrun_out, model_dir, tmp_path):
    out = tmp_path / "resumed"
    launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "algos.train", *TRAIN, "--model", str(model_dir), "--out", str(out),
            "--resume", str(torchrun_out / "checkpoints" / "step-1")], tmp_path)
    assert [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()] == [2]
    resumed, uninterrupted = algos.Agent.load(out / "final"), algos.Agent.load(torchrun_out / "final")
    for a, b in zip(trained(resumed).values(), trained(uninterrupted).values(), strict=True):
        assert torch.equal(a, b)


def _worker(out: Path, model_dir: Path) -> None:
    """Under torchrun: every rank trains each case and saves its own weights and history (a test's view;
    the library itself writes on rank 0 only)."""
    torch.set_num_threads(1)
    engines.init_process_group()
    rank = torch.distributed.get_rank()
    for case in CASES:
        agent = train_case(case, model_dir, log_dir=out / f"logs-rank{rank}" if case == "sft" else None)
        save_file(trained(agent), out / f"{case}-rank{rank}.safetensors")
        (out / f"{case}-rank{rank}.json").write_text(json.dumps(agent.history))
    agent.save(out / f"saved-rank{rank}")
    engines.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
