"""From the tiny base model, each algorithm improves what it optimises (fixed seeds, asserted with margins).

These are the slowest tests: the Arithmetic-v0 base model is pretrained once (about 15 s, cached on
disk) and each algorithm trains for a bounded number of steps on it.
"""

import numpy as np
import pytest
import torch

import algos
import textenv
from algos import Policy


@pytest.fixture(scope="module")
def env():
    return textenv.make("textenv/Arithmetic-v0")


@pytest.fixture(scope="module")
def base_path(env):
    from algos.tiny import pretrain_tiny

    return pretrain_tiny(env.unwrapped.task, progress=False)


def eval_reward(policy: Policy, env, samples: int = 4) -> float:
    """Mean reward over all 200 eval prompts x ``samples`` samples (temperature 0.7, fixed seed)."""
    examples = env.unwrapped.task.split("eval")
    out = policy.generate([ex.prompt for ex in examples], num_samples=samples, max_new_tokens=6, seed=2024)
    rewards, _ = env.unwrapped.score([ex for ex in examples for _ in range(samples)], out.texts)
    return float(np.mean(rewards))


def test_base_model_is_mixed(env, base_path):
    """The tiny base is imperfect but not hopeless: most groups of 8 hold better and worse answers."""
    policy = Policy.from_pretrained(base_path)
    examples = env.unwrapped.task.split("eval")[:64]
    out = policy.generate([ex.prompt for ex in examples], num_samples=8, max_new_tokens=6, seed=0)
    rewards, _ = env.unwrapped.score([ex for ex in examples for _ in range(8)], out.texts)
    groups = rewards.reshape(64, 8)
    exact = float(np.mean(rewards == 1.0))
    assert 0.15 <= exact <= 0.5
    assert np.mean(groups.max(1) > groups.min(1)) >= 0.8


def test_sft_lowers_reference_nll(env, base_path):
    agent = algos.make("sft", Policy.from_pretrained(base_path), lr=1e-4, seed=0)
    before = agent.reference_nll(env)
    agent.learn(env, 150, progress=False)
    after = agent.reference_nll(env)
    assert after < before - 0.03, (before, after)


def test_dpo_raises_the_chosen_minus_rejected_margin(env, base_path):
    agent = algos.make("dpo", Policy.from_pretrained(base_path), lr=1e-4, seed=0)
    pairs = env.unwrapped.task.pairs("eval")[:64]
    prompts = [ex.prompt for ex in pairs]

    @torch.no_grad()
    def margin() -> float:
        chosen, mc = agent.policy.text_logprobs(prompts, [ex.chosen for ex in pairs])
        rejected, mr = agent.policy.text_logprobs(prompts, [ex.rejected for ex in pairs])
        return float((chosen.sum(-1) - rejected.sum(-1)).mean())

    before = margin()
    history = agent.learn(env, 100, progress=False)
    after = margin()
    assert after > before + 0.3, (before, after)
    assert np.mean([h["rewards/accuracies"] for h in history[-10:]]) > 0.7


@pytest.mark.parametrize(("name", "config"), [
    ("grpo", {"lr": 3e-4}),
    ("grao", {"lr": 1e-4}),
    ("ppo", {"lr": 1e-4, "whiten_rewards": True}),
])
def test_online_algorithms_raise_the_eval_reward(env, base_path, name, config):
    policy = Policy.from_pretrained(base_path)
    before = eval_reward(policy, env)
    agent = algos.make(name, policy, batch_size=8, group_size=8, max_new_tokens=6, seed=0, **config)
    agent.learn(env, 300, progress=False)
    after = eval_reward(agent.policy, env)
    print(f"{name}: {before:.3f} -> {after:.3f}")
    assert after > before + 0.025, (before, after)
