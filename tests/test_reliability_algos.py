"""Bad input and faults at the algos layer: each row is an input a user may give and the error it must get."""

import math

import gymnasium as gym
import numpy as np
import pytest
from conftest import random_policy

import algos
import textenv
from algos import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def env():
    return textenv.make("textenv/Arithmetic-v0")


@pytest.mark.parametrize(("name", "config", "message"), [
    ("sft", {"lr": float("nan")}, r"SFTConfig.lr must be a finite number, got nan"),
    ("sft", {"lr": float("inf")}, r"SFTConfig.lr must be a finite number, got inf"),
    ("sft", {"lr": 0.0}, r"SFTConfig.lr must be > 0"),
    ("grao", {"temperature": float("nan")}, r"GRAOConfig.temperature must be a finite number"),
    ("grao", {"temperature": 0.0}, r"GRAOConfig.temperature must be > 0"),
    ("grpo", {"top_p": 0.0}, r"GRPOConfig.top_p must be > 0"),
    ("grpo", {"top_p": 1.5}, r"GRPOConfig.top_p must be <= 1"),
    ("dpo", {"seed": -1}, r"DPOConfig.seed must be >= 0"),
    ("sft", {"warmup_steps": -1}, r"SFTConfig.warmup_steps must be >= 0"),
    ("ppo", {"micro_batch_size": 0}, r"PPOConfig.micro_batch_size must be >= 1"),
    ("grao", {"num_iterations": 0}, r"GRAOConfig.num_iterations must be >= 1"),
    ("ppo", {"target_kl": float("inf")}, r"PPOConfig.target_kl must be a finite number"),
    ("sft", {"lr_scheduler": "exponential"}, r"lr_scheduler.* must be one of \['constant', 'linear', 'cosine'\]"),
])
def test_config_values_are_refused_naming_the_key(name, config, message):
    with pytest.raises(ConfigError, match=message):
        algos.make(name, random_policy(), **config)


@pytest.mark.parametrize("total", [0, -3, 2.5, True, "10"])
def test_learn_refuses_a_total_that_is_not_a_positive_whole_number(env, total):
    agent = algos.make("sft", random_policy(), batch_size=2)
    with pytest.raises(ValueError, match=r"learn\(max_steps=.*\) needs a whole number >= 1"):
        agent.learn(env, total, progress=False)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_samples": 0}, r"num_samples=0\) needs a whole number >= 1"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"temperature": float("nan")}, r"temperature must be a finite number > 0"),
])
def test_generate_refuses_bad_sampling_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_policy().generate(["1+1="], max_new_tokens=2, **kwargs)


@pytest.mark.parametrize("broken", ["agent.json", "history.json", "state"])
def test_a_checkpoint_file_that_fails_to_decode_is_named(tmp_path, env, broken):
    kw = {"batch_size": 2, "group_size": 2, "max_new_tokens": 3}
    algos.make("ppo", random_policy(), **kw).learn(env, max_steps=1, checkpoint_every=1, checkpoint_dir=tmp_path,
                                                   progress=False)
    path = tmp_path / "step-1" / broken
    assert path.exists()
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:  # the sharded state: every shard
        file.write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(CheckpointError, match=rf"{path.name}.*cannot be read"):
        algos.make("ppo", random_policy(), **kw).learn(env, max_steps=2, resume_from=tmp_path / "step-1",
                                                       progress=False)


@pytest.mark.parametrize("broken", ["agent.json", "policy/model.safetensors", "value_head.safetensors"])
def test_a_saved_agent_file_that_fails_to_decode_is_named(tmp_path, env, broken):
    agent = algos.make("ppo", random_policy(), batch_size=2, group_size=2, max_new_tokens=3)
    agent.save(tmp_path / "saved")
    path = tmp_path / "saved" / broken
    path.write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(CheckpointError, match=rf"{path.name}.*cannot be read"):
        algos.Agent.load(tmp_path / "saved")


def test_training_honours_reward_wrappers(env):
    wrapped = gym.wrappers.TransformReward(env, lambda r: -1000.0)
    wrapped.reset(seed=0)
    assert wrapped.step("37")[1] == -1000.0
    record = algos.make("grpo", random_policy(), batch_size=2, group_size=2, max_new_tokens=3,
                        beta=0.0).learn(wrapped, 1, progress=False)[0]
    assert record["reward/mean"] == -1000.0
    scaled = gym.wrappers.TransformReward(gym.wrappers.TransformReward(env, lambda r: r + 1), lambda r: 2 * r)
    examples = env.unwrapped.task.split("eval")[:3]
    raw, _ = env.unwrapped.score(examples, ["5", "6", "7"])
    got, _ = textenv.batched(scaled).score(examples, ["5", "6", "7"])
    np.testing.assert_allclose(got, 2 * (raw + 1))  # inner wrapper first, as step() applies them
    np.testing.assert_allclose(textenv.batched(scaled).reference_rewards(examples),
                               2 * (env.unwrapped.reference_rewards(examples) + 1))


def test_a_wrapper_training_cannot_honour_is_refused_by_name(env):
    wrapped = gym.wrappers.TransformObservation(env, lambda o: o.upper(), env.observation_space)
    agent = algos.make("sft", random_policy(), batch_size=2)
    with pytest.raises(TypeError, match="cannot honour the wrapper TransformObservation"):
        agent.learn(wrapped, 1, progress=False)
    with pytest.raises(TypeError, match="CartPoleEnv is not a textenv environment"):
        agent.learn(gym.make("CartPole-v1").unwrapped, 1, progress=False)


def test_learn_accepts_a_vector_env():
    vec = textenv.make_vec("textenv/Arithmetic-v0", num_prompts=2, group_size=3)
    history = algos.make("grao", random_policy(), batch_size=2, group_size=3, max_new_tokens=3).learn(
        vec, 2, progress=False)
    assert [h["step"] for h in history] == [1, 2] and all(math.isfinite(h["loss"]) for h in history)


@pytest.mark.parametrize(("schedule", "expected"), [
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.0, 0.5, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]),
])
def test_learning_rate_schedules_with_warmup(env, schedule, expected):
    """transformers' schedules: warm-up 0 -> lr over 2 steps, then constant, linear or cosine to step 6."""
    agent = algos.make("sft", random_policy(), batch_size=2, lr=1e-3, warmup_steps=2, lr_scheduler=schedule)
    history = agent.learn(env, 6, progress=False)
    # The lr logged with step k is the one step k + 1 uses; the first step ran with lr(0) = 0.
    assert [h["lr"] for h in history][:-1] == pytest.approx([1e-3 * e for e in expected[1:]])
