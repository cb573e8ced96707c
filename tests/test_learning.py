"""From the tiny base model, each algorithm improves what it optimises: asserted over seeds, with margins
chosen from the spread measured under the perturbations another machine brings.

Floats differ between CPUs and thread counts, and RL turns a last-bit difference into other samples,
so one training run's gain is one draw. Each test trains several seeds and asserts on their mean, with
a margin well below the smallest mean measured under every perturbation tried: 1 and 2 torch threads, the
shipped base model and one pretrained here from seed 1, on two machines. CI runs them at (1 thread, the
shipped base); ``GRAO_TEST_THREADS=2 GRAO_TEST_BASE_SEED=1 python -m pytest tests/test_learning.py`` runs them
the way a second machine with its own base would (about seven minutes here; it ran in CI as a second file until the
multi-turn learning tests needed its time). Each test prints what it observed, so the headroom can be read in
the log (``-s``).

These are the slowest tests: each online algorithm trains 2 seeds x 300 steps of 8 prompts x G = 8.
"""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import BASE_SEED, THREADS

import algos
import textenv
from algos import Policy

# (torch threads, base-model seed) of this run: GRAO_TEST_THREADS and GRAO_TEST_BASE_SEED, by default 1 and the
# shipped base (a module that imports these tests may set its own).
PERTURBATION = (THREADS, BASE_SEED)
CURRENT: dict[str, int] = {}  # the running perturbation's base seed, for report()
SEEDS = (0, 1)  # two seeds: a third cost CI a minute a pass and, where measured, moved no mean below its margin


@pytest.fixture(scope="module")
def env():
    return textenv.make("textenv/Arithmetic-v0")


@pytest.fixture(scope="module")
def perturbation(request):
    """Run the module's tests with its ``PERTURBATION``: torch threads (restored afterwards), base seed."""
    threads, base_seed = request.module.PERTURBATION
    CURRENT["base_seed"] = base_seed
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield threads, base_seed
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def base_path(env, perturbation):
    """The shipped base model (seed 0), or one pretrained here from the perturbation's base seed."""
    from algos.tiny import default_recipe, pretrain_tiny

    task = env.unwrapped.task
    seed = perturbation[1]
    return pretrain_tiny(task, dataclasses.replace(default_recipe(task.name), seed=seed), progress=False)


def report(what: str, values: list[float], asserted: str) -> None:
    print(f"\n{what} (threads {torch.get_num_threads()}, base seed {CURRENT['base_seed']}): "
          f"{', '.join(f'{v:+.3f}' for v in values)}; mean {np.mean(values):+.3f}; asserted {asserted}")


def eval_reward(policy: Policy, env, samples: int = 4) -> float:
    """Mean reward over all 200 eval prompts x ``samples`` samples (temperature 0.7, fixed seed)."""
    examples = env.unwrapped.task.split("eval")
    out = policy.generate([ex.prompt for ex in examples], num_samples=samples, max_new_tokens=6, seed=2024)
    rewards, _ = env.unwrapped.score([ex for ex in examples for _ in range(samples)], out.texts)
    return float(np.mean(rewards))


def test_base_model_is_mixed(env, base_path):
    """The tiny base is imperfect but not hopeless: most groups of 8 hold better and worse answers.
    Measured: exact 0.396 / 0.314 and mixed groups 0.953 / 1.000 (shipped base / base seed 1)."""
    policy = Policy.from_pretrained(base_path)
    examples = env.unwrapped.task.split("eval")[:64]
    out = policy.generate([ex.prompt for ex in examples], num_samples=8, max_new_tokens=6, seed=0)
    rewards, _ = env.unwrapped.score([ex for ex in examples for _ in range(8)], out.texts)
    groups = rewards.reshape(64, 8)
    exact, mixed = float(np.mean(rewards == 1.0)), float(np.mean(groups.max(1) > groups.min(1)))
    print(f"\nbase model: exact {exact:.3f} (asserted 0.15-0.6), mixed groups {mixed:.3f} (asserted >= 0.7)")
    assert 0.15 <= exact <= 0.6
    assert mixed >= 0.7


def test_sft_lowers_reference_nll(env, base_path):
    """Measured (seeds 0, 1): drops of 0.071 and 0.076 nats (shipped base), 0.058 and 0.072 (base seed 1);
    asserted: mean > 0.03."""
    drops = []
    for seed in SEEDS:
        agent = algos.make("sft", Policy.from_pretrained(base_path), lr=1e-4, seed=seed)
        before = agent.reference_nll(env)
        agent.learn(env, 150, progress=False)
        drops.append(before - agent.reference_nll(env))
    report("SFT reference-NLL drop", drops, "mean > 0.03")
    assert np.mean(drops) > 0.03


def test_dpo_raises_the_chosen_minus_rejected_margin(env, base_path):
    """Measured (seeds 0, 1, both base models): margin gains 2.19-2.42 nats, last-10-step accuracies
    0.75-0.82, means 0.28-0.29 above chance; asserted: mean gain > 0.5, mean accuracy above chance by > 0.15."""
    pairs = env.unwrapped.task.pairs("eval")[:64]
    prompts = [ex.prompt for ex in pairs]
    gains, accuracies = [], []
    for seed in SEEDS:
        agent = algos.make("dpo", Policy.from_pretrained(base_path), lr=1e-4, seed=seed)

        @torch.no_grad()
        def margin(agent=agent) -> float:
            chosen, _ = agent.policy.text_logprobs(prompts, [ex.chosen for ex in pairs])
            rejected, _ = agent.policy.text_logprobs(prompts, [ex.rejected for ex in pairs])
            return float((chosen.sum(-1) - rejected.sum(-1)).mean())

        before = margin()
        history = agent.learn(env, 100, progress=False)
        gains.append(margin() - before)
        accuracies.append(float(np.mean([h["rewards/accuracies"] for h in history[-10:]])))
    report("DPO margin gain", gains, "mean > 0.5")
    report("DPO last-10-step accuracy above chance (0.5)", [a - 0.5 for a in accuracies], "mean > 0.15")
    assert np.mean(gains) > 0.5
    assert np.mean(accuracies) - 0.5 > 0.15


# Eval-reward gains measured with these settings, mean over seeds 0 and 1 (shipped base / base seed 1):
# on the machine that first measured them, grpo +0.040 / +0.040, grao +0.050 / +0.051 (single seeds +0.025
# to +0.054; seed 2 gave +0.042 to +0.055); on an AMD EPYC (where base seed 1 is another model: it is
# pretrained here), grpo +0.040 / +0.026, grao +0.050 / +0.035. One and two torch threads gave the same
# numbers on the first machine (these matrices are too small to be split); the base seed changes every
# number. Each margin is about half the smallest mean measured. Learning rates: GRPO at 3e-4 gained -0.020 to
# +0.018 and collapsed at 1e-3. PPO runs one epoch of one minibatch over each rollout (its defaults, 2 x 2,
# took 1.6x as long): on the AMD EPYC seeds 0 / 1 gained +0.032 / +0.028 (shipped base, 1 thread) and +0.041 /
# +0.015 (base seed 1, 2 threads), means 0.030 and 0.028, where 2 x 2 gained means of +0.035 and +0.010 there
# (+0.033 / +0.033 on the first machine) and 2 x 2 at lr 2e-4 less. Its margin rests on this machine only.
@pytest.mark.parametrize(("name", "config", "margin"), [
    ("grpo", {"lr": 1e-4}, 0.012),
    ("grao", {"lr": 1e-4}, 0.02),
    ("ppo", {"lr": 1e-4, "whiten_rewards": True, "num_iterations": 1, "num_minibatches": 1}, 0.01),
])
def test_online_algorithms_raise_the_eval_reward(env, base_path, name, config, margin):
    before = eval_reward(Policy.from_pretrained(base_path), env)
    gains = []
    for seed in SEEDS:
        agent = algos.make(name, Policy.from_pretrained(base_path), batch_size=8, group_size=8, max_new_tokens=6,
                           seed=seed, **config)
        agent.learn(env, 300, progress=False)
        gains.append(eval_reward(agent.policy, env) - before)
    report(f"{name} eval-reward gain from {before:.3f}", gains, f"mean > {margin}")
    assert np.mean(gains) > margin
