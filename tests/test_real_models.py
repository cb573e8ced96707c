"""What a real chat model needs, on a tiny Qwen2-shaped one built offline: chat templates, the model's EOS
ids and generation defaults, context checks, LoRA with the adapter-off reference, bf16 autocast, gradient
checkpointing and micro-batches, through all five algorithms."""

import numpy as np
import pytest
import torch
from conftest import random_policy

import algos
import textenv
from algos import Policy
from algos.tiny_chat import build_tiny_chat_model

QA = [("What is two plus two?", "Four.", "Five."), ("Name a colour.", "Blue.", "A dog."),
      ("Say hello.", "Hello!", "No."), ("What is the capital of France?", "Paris.", "Rome."),
      ("Count to three.", "One, two, three.", "Four."), ("Is water wet?", "Yes.", "Purple.")]


def reward_len(completions, **kwargs):  # a TRL reward function, as TRL's docs write it
    return [-abs(12 - len(c)) / 12 for c in completions]


def chat_env() -> textenv.TextGenEnv:
    def turn(role, text):
        return [{"role": role, "content": text}]

    data = [textenv.Example(turn("user", q), reference=turn("assistant", a), chosen=turn("assistant", a),
                            rejected=turn("assistant", r)) for q, a, r in QA]
    return textenv.TextGenEnv(textenv.Task("ChatToy-v0", splits={"train": data, "eval": data[:2]},
                                           reward=reward_len))


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("grao-cache"))


# ------------------------------------------------------------------------------------------------ sampling
def test_sampling_has_no_hidden_top_k_with_distinct_logits():
    policy = random_policy()
    with torch.no_grad():
        for p in policy.model.parameters():
            p.mul_(3.0)  # a peaked-enough distribution whose logits are all distinct
        ids = torch.tensor([[policy.tokenizer.bos_token_id]])
        logits = policy.model(ids).logits[0, -1]
    assert len(set(logits.tolist())) == logits.numel()
    samples = policy.generate(["1"] * 64, num_samples=16, temperature=1.0, max_new_tokens=1, seed=0)
    first = {int(row[0]) for row in samples.completion_ids}
    assert len(first) > 50  # transformers' default top_k=50 would cap this at 50
    limited = policy.generate(["1"] * 64, num_samples=16, temperature=1.0, max_new_tokens=1, seed=0, top_k=5)
    assert len({int(row[0]) for row in limited.completion_ids}) <= 5


def test_the_model_generation_config_does_not_leak_its_sampling_defaults(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    assert policy.model.generation_config.top_k == 20  # Qwen2.5-Instruct's default, meant to be ignored
    samples = policy.generate([[{"role": "user", "content": "hi"}]] * 32, num_samples=16, temperature=1.0,
                              max_new_tokens=1, seed=0)
    assert len({int(row[0]) for row in samples.completion_ids}) > 20


def test_every_eos_id_of_the_generation_config_ends_a_completion(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    im_end, endoftext = policy.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert policy.eos_token_ids == sorted([im_end, endoftext])
    word = policy.tokenizer("Hi", add_special_tokens=False)["input_ids"][0]
    prompt = torch.tensor([[word]])
    finished = torch.tensor([[word, endoftext, word, word], [word, im_end, endoftext, endoftext],
                             [word, word, word, word]])
    s = policy._samples(["p"], 3, [(prompt, torch.ones_like(prompt), finished)])
    assert s.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert s.truncated.tolist() == [False, False, True]


# ------------------------------------------------------------------------------------------------ prompts
def test_message_prompts_go_through_the_chat_template(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    messages = [{"role": "user", "content": "What is two plus two?"}]
    expected = policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    ids, mask = policy.encode_prompts([messages])
    assert ids[0].tolist() == list(expected) and mask.all()
    plain, _ = policy.encode_prompts(["What is two plus two?"])
    assert plain[0].tolist() != list(expected)  # a plain string is not templated...
    policy.chat = True
    assert policy.encode_prompts(["What is two plus two?"])[0][0].tolist() == list(expected)  # ...unless asked
    batch = policy.encode([messages], [[{"role": "assistant", "content": "Four."}]])
    assert batch.completion_ids[0].tolist() == [*policy.tokenizer("Four.", add_special_tokens=False)["input_ids"],
                                                policy.tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="prompt 0 is a list of messages but the tokenizer has no chat template"):
        random_policy().encode_prompts([messages])


def test_prompts_longer_than_the_context_are_an_error_or_left_truncated():
    policy = random_policy()  # 128 positions
    long = "7" * 120
    with pytest.raises(ValueError, match=r"prompt 1 has 121 tokens and the answer may take 16, 137 in all, past "
                                         r"the model's context of 128 positions"):
        policy.generate(["1+1=", long], max_new_tokens=16)
    policy.truncate_prompts = True
    ids, mask = policy.encode_prompts([long], room=16)
    assert ids.shape[1] == 112 and ids[0, -1].item() == policy.tokenizer("7")["input_ids"][-1]
    assert len(policy.generate([long], max_new_tokens=16, seed=0).texts) == 1


# ------------------------------------------------------------------------------------------------ LoRA
def test_lora_reference_is_the_adapter_off_model_and_only_the_adapter_trains(chat_dir, tmp_path):
    base = Policy.from_pretrained(chat_dir)
    policy = Policy.from_pretrained(chat_dir, lora={"r": 4, "alpha": 8})
    names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(policy.parameters()) == len(names)
    reference = policy.reference()
    assert reference.model is policy.model and reference.parameters() == []
    env = chat_env()
    agent = algos.make("dpo", policy, batch_size=2, lr=1e-2)
    agent.learn(env, 2, progress=False)
    batch = policy.encode([QA[0][0]], [QA[0][1]])
    with torch.no_grad():
        torch.testing.assert_close(reference.logprobs(batch), base.logprobs(batch))  # adapter off = base
        assert not torch.allclose(policy.logprobs(batch), base.logprobs(batch))       # adapter on moved
    agent.save(tmp_path / "agent")
    assert (tmp_path / "agent" / "policy" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "agent" / "policy" / "model.safetensors").exists()       # only the adapter is saved
    loaded = algos.Agent.load(tmp_path / "agent")
    assert loaded.policy.is_lora
    with torch.no_grad():
        torch.testing.assert_close(loaded.policy.logprobs(batch), policy.logprobs(batch))
        merged = policy.merge()
        assert not merged.is_lora
        torch.testing.assert_close(merged.logprobs(batch), policy.logprobs(batch), rtol=1e-4, atol=1e-5)


def test_lora_checkpoint_resume_equals_uninterrupted_training(chat_dir, tmp_path):
    env, kw = chat_env(), {"batch_size": 2, "group_size": 2, "max_new_tokens": 4, "lr": 1e-2}

    def fresh():  # peft draws the adapter's initial weights from the global RNG: the same start each time
        torch.manual_seed(0)
        return Policy.from_pretrained(chat_dir, lora={"r": 4})

    straight = algos.make("grpo", fresh(), **kw)
    straight.learn(env, max_steps=2, progress=False)
    first = algos.make("grpo", fresh(), **kw)
    first.learn(env, max_steps=1, checkpoint_every=1, checkpoint_dir=tmp_path, progress=False)
    resumed = algos.make("grpo", fresh(), **kw)
    resumed.learn(env, max_steps=2, resume_from=tmp_path / "step-1", progress=False)
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ memory
def test_bf16_autocast_loss_is_close_to_fp32(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    batch = policy.encode([q for q, _, _ in QA], [a for _, a, _ in QA])
    with torch.no_grad():
        fp32 = algos.losses.sft_loss(policy.logprobs(batch), batch.completion_mask)[0]
        policy.autocast = torch.bfloat16
        bf16 = algos.losses.sft_loss(policy.logprobs(batch), batch.completion_mask)[0]
    assert bf16.dtype == torch.float32 and bf16.item() != fp32.item()
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)


def test_gradient_checkpointing_is_active_and_keeps_the_numbers(chat_dir):
    def forward(checkpointing: bool) -> tuple[int, torch.Tensor]:
        """Tensors kept for the backward pass by one training forward, and the log-probs."""
        policy = Policy.from_pretrained(chat_dir, gradient_checkpointing=checkpointing)
        assert policy.model.training == checkpointing
        batch = policy.encode([q for q, _, _ in QA[:2]], [a for _, a, _ in QA[:2]])
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            logps = policy.logprobs(batch)
        (-logps.sum()).backward()
        return sum(saved), logps.detach()

    plain_saved, plain = forward(False)
    ckpt_saved, ckpt = forward(True)
    assert ckpt_saved < 0.7 * plain_saved  # the layers' activations are recomputed, not kept
    torch.testing.assert_close(ckpt, plain)  # train mode, dropout off: the same log-probs


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo", "grao"])
def test_a_step_in_micro_batches_gives_the_weights_of_one_full_batch(name):
    env = textenv.make("textenv/Arithmetic-v0")
    kw = {"batch_size": 4, "max_new_tokens": 4, "seed": 2, "lr": 1e-3, **({"group_size": 3} if name in
                                                                          {"grpo", "grao"} else {})}
    whole = algos.make(name, random_policy(), **kw)
    parts = algos.make(name, random_policy(), micro_batch_size=1, **kw)
    whole.learn(env, 1, progress=False)
    parts.learn(env, 1, progress=False)
    moved = 0
    for a, b, start in zip(whole.policy.parameters(), parts.policy.parameters(), random_policy().parameters(),
                           strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
        moved += int(not torch.equal(a, start))
    assert moved > 0


# ------------------------------------------------------------------------------------------------ all together
@pytest.mark.parametrize("name", ["sft", "dpo", "ppo", "grpo", "grao"])
def test_every_algorithm_trains_a_chat_model_with_lora_micro_batches_and_bf16(chat_dir, name):
    env = chat_env()
    policy = Policy.from_pretrained(chat_dir, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                                    bf16=True)
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    kw = {"batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 6, "lr": 1e-2, "seed": 0,
          **({"group_size": 2} if name in {"ppo", "grpo", "grao"} else {})}
    history = algos.make(name, policy, **kw).learn(env, 2, progress=False)
    assert all(np.isfinite(h["loss"]) for h in history)
    after = dict(policy.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())              # base weights untouched
    assert any(not torch.equal(after[n], p) for n, p in adapter.items())       # the adapter trained


# ------------------------------------------------------------------------------------------------ configs
def _bench(tmp_path, base: str):
    path = tmp_path / "c.toml"
    path.write_text(f'seeds = [0]\n[base]\nmodel = "tiny"\n{base}\n[tasks."textenv/Arithmetic-v0"]\n'
                    f'[algorithms.grao]\nmicro_batch_size = 2\n')
    return path


def test_benchmark_configs_take_chat_lora_and_memory_settings(tmp_path):
    from benchmarks import config as bench_config

    config = bench_config.load(_bench(tmp_path, 'chat = true\ntruncate_prompts = true\nbf16 = true\n'
                                                'gradient_checkpointing = true\n[base.lora]\nr = 4\n'
                                                'alpha = 8\ndropout = 0.1\ntarget_modules = ["q_proj", "v_proj"]'))
    assert config.base_options["lora"] == {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert config.base_options["chat"] is True
    assert config.base_options["bf16"] is True and config.base_options["gradient_checkpointing"] is True
    assert config.algorithms[0].hyperparameters == {"micro_batch_size": 2}
    hh = bench_config.load("hh")
    assert hh.base_options["chat"] and hh.base_options["lora"]["r"] == 16 and hh.base_options["bf16"]
    assert all(a.hyperparameters["micro_batch_size"] for a in hh.algorithms)


@pytest.mark.parametrize(("base", "message"), [
    ("[base.lora]\nrank = 4", r"unknown key 'rank' in \[base.lora\]; valid keys: alpha, dropout, r, target_modules"),
    ("[base.lora]\nr = 0", r"\[base.lora\] r must be >= 1"),
    ("[base.lora]\ndropout = 1.5", r"\[base.lora\] dropout must be < 1"),
    ("[base.lora]\ntarget_modules = [1, 2]", r"\[base.lora\] target_modules must be a string"),
    ("chat = \"yes\"", r"\[base\] chat must be"),
])
def test_bad_lora_and_chat_settings_name_the_key(tmp_path, base, message):
    from benchmarks import config as bench_config

    with pytest.raises(bench_config.BenchConfigError, match=message):
        bench_config.load(_bench(tmp_path, base))


def test_hh_as_chat_messages_from_the_fixture():
    from pathlib import Path

    from textenv.tasks import hh_task

    task = hh_task(Path(__file__).parent / "fixtures" / "hh_sample.jsonl", reward="vader", messages=True)
    ex = task.split("train")[0]
    assert isinstance(ex.prompt, list) and ex.prompt[0]["role"] == "user" and ex.prompt[-1]["role"] == "user"
    assert ex.reference == ex.chosen and ex.chosen[0]["role"] == "assistant"
    env = textenv.TextGenEnv(task)
    prompt, info = env.reset(seed=0)
    assert isinstance(prompt, str) and isinstance(info["prompt"], list)
