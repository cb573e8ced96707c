"""algos.check_agent: every registered algorithm keeps the Agent contract; broken toy agents are caught."""

import numpy as np
import pytest
import torch
from conftest import random_policy

import algos
import textenv
from algos import Agent, AgentCheckError, AgentConfig, Batch


@pytest.mark.parametrize("name", algos.list_algorithms())
def test_every_registered_algorithm_keeps_the_contract(name):
    algos.check_agent(name)


class Imitate(Agent):
    """A correct minimal algorithm: SFT on reference answers, written from scratch."""

    config_class = AgentConfig

    def make_batch(self, env, rng):
        examples = env.sample(self.config.batch_size, rng, "train", require="reference")
        return Batch(len(examples), answers=self.policy.encode([e.prompt for e in examples],
                                                               [e.reference for e in examples]))

    def loss(self, batch, totals):
        logps = self.policy.logprobs(batch.answers)
        return -logps.sum() / totals.tokens["answers"], {"nll": -logps.sum().item()}


class NaNStats(Imitate):
    def loss(self, batch, totals):
        loss, stats = super().loss(batch, totals)
        return loss, {**stats, "weird": float("nan")}


class NoTokenCount(Imitate):
    def update(self, env, rng):
        stats = super().update(env, rng)
        del stats["tokens/trained"]
        return stats


class Unseeded(Imitate):
    def make_batch(self, env, rng):
        return super().make_batch(env, np.random.default_rng())  # ignores the step's generator


class ForgetsItsState(Imitate):
    def setup(self):
        self.batches_seen = 0

    def make_batch(self, env, rng):
        self.batches_seen += 1
        return super().make_batch(env, rng)

    def state(self):
        return {"batches_seen": self.batches_seen}  # ...but load_state does not restore it


class ActsOnUnsavedState(Imitate):
    def setup(self):
        self.suffix = ""

    def make_batch(self, env, rng):
        self.suffix += "!"
        return super().make_batch(env, rng)

    def act(self, prompts, **generation):
        return [c + self.suffix for c in super().act(prompts, **generation)]


class LocalTokenMean(Imitate):
    def loss(self, batch, totals):  # normalised by the micro-batch, not the step
        logps = self.policy.logprobs(batch.answers)
        return -logps.sum() / batch.answers.num_tokens, {}


@pytest.fixture
def registered():
    names = []

    def register(cls):
        name = f"toy-{cls.__name__.lower()}"
        algos.register(name)(cls)
        names.append(name)
        return name

    yield register
    for name in names:
        algos.unregister(name)


def test_a_correct_toy_algorithm_passes(registered):
    algos.check_agent(registered(Imitate))


@pytest.mark.parametrize(("cls", "promise"), [
    (NaNStats, r"statistics are finite floats.*weird"),
    (NoTokenCount, r"include 'loss' and 'tokens/trained'.*missing \['tokens/trained'\]"),
    (Unseeded, "the same seed gives the same numbers"),
    (ForgetsItsState, r"checkpoint \+ resume equals an uninterrupted run.*batches_seen"),
    (ActsOnUnsavedState, r"Agent.save / Agent.load round trip.*other completions"),
    (LocalTokenMean, "a step in micro-batches equals the full-batch step"),
])
def test_a_broken_toy_algorithm_fails_naming_it_and_the_promise(registered, cls, promise):
    name = registered(cls)
    with pytest.raises(AgentCheckError, match=rf"algorithm '{name}' \({cls.__name__}\) breaks the Agent contract: "
                                              rf".*{promise}"):
        algos.check_agent(name)


def test_unknown_algorithm_and_unregister():
    with pytest.raises(algos.AlgorithmNotFound, match=r"unknown algorithm 'gropo'.*did you mean 'grpo'"):
        algos.check_agent("gropo")
    with pytest.raises(algos.AlgorithmNotFound):
        algos.unregister("gropo")


def test_batch_select_and_split_keep_prompt_groups_whole():
    samples = torch.arange(12).view(6, 2)  # 3 groups x 2 samples
    batch = Batch(3, {"reward/mean": 0.5}, samples=samples, answers=torch.tensor([10, 11, 12]), none=None)
    picked = batch.select([2, 0])
    assert picked.groups == 2 and picked.stats == {"reward/mean": 0.5} and picked.none is None
    assert picked.samples.tolist() == [[8, 9], [10, 11], [0, 1], [2, 3]]
    assert picked.answers.tolist() == [12, 10]
    parts = batch.split(2)
    assert [p.groups for p in parts] == [2, 1] and parts[1].samples.tolist() == [[8, 9], [10, 11]]
    assert batch.split(None) == [batch]
    with pytest.raises(ValueError, match="'answers' has 2 rows, not a multiple of 3 groups"):
        Batch(3, answers=torch.zeros(2))
    with pytest.raises(AttributeError, match="no field 'advantages'"):
        _ = batch.advantages


def test_minibatches_split_the_groups_evenly():
    """10 prompts in 3 minibatches: optimiser steps on 4, 3 and 3 groups (never a step on a single leftover)."""
    sizes = []

    class Recording(algos.PPO):
        def optimizer_step(self, batch):
            sizes.append(batch.groups)
            return super().optimizer_step(batch)

    agent = Recording(random_policy(), algos.PPOConfig(batch_size=10, num_minibatches=3, num_iterations=2,
                                                       max_new_tokens=3))
    agent.learn(textenv.make("textenv/Arithmetic-v0"), 1, progress=False)
    assert sorted(sizes) == [3, 3, 3, 3, 4, 4]
    with pytest.raises(algos.ConfigError, match=r"num_minibatches \(5\) must be <= batch_size \(4\)"):
        algos.PPOConfig(batch_size=4, num_minibatches=5)
