"""The Agent interface: configs, registry, act/learn/save/load, checkpoints and resume."""

import json

import numpy as np
import pytest
import torch
from conftest import random_policy

import algos
import textenv
from algos import Agent, AgentConfig, ConfigError


@pytest.fixture(scope="module")
def env():
    return textenv.make("textenv/Arithmetic-v0")


def test_registry_lists_the_five_algorithms_and_suggests_names():
    assert set(algos.list_algorithms()) >= {"sft", "dpo", "ppo", "grpo", "grao"}
    with pytest.raises(ValueError, match=r"unknown algorithm 'graoo'.*did you mean 'grao'"):
        algos.make("graoo", random_policy())


@pytest.mark.parametrize(("name", "config", "message"), [
    ("grao", {"betta": 0.5}, r"unknown GRAOConfig key 'betta'.*valid keys: .*beta"),
    ("grao", {"beta": "high"}, r"GRAOConfig.beta.* must be float, got str"),
    ("grao", {"group": "everyone"}, r"GRAOConfig.group.* must be one of \['samples\+reference', 'samples'\]"),
    ("grpo", {"loss_type": "ppo"}, r"loss_type.* must be one of \['grpo', 'dr_grpo', 'dapo'\]"),
    ("dpo", {"label_smoothing": 0.7}, r"label_smoothing must be in \[0, 0.5\)"),
    ("sft", {"lr": -1.0}, r"SFTConfig.lr must be > 0"),
    ("ppo", {"num_iterations": 0}, r"num_iterations must be >= 1"),
    ("grao", {"imitation": False, "exploration": False, "regularizer": False}, "at least one"),
    ("sft", {"batch_size": True}, r"batch_size.* must be int, got bool"),
])
def test_bad_config_is_an_error_naming_the_key(name, config, message):
    with pytest.raises(ConfigError, match=message):
        algos.make(name, random_policy(), **config)


def test_a_new_algorithm_registers_from_research_code(env):
    @algos.register("test-imitate-first-token")
    class FirstToken(Agent):
        config_class = AgentConfig

        def make_batch(self, env, rng):
            ex = env.task.with_references("train")[int(rng.integers(10))]
            return algos.Batch(1, answers=self.policy.encode([ex.prompt], [ex.reference[:1]]))

        def loss(self, batch, totals):
            loss = -self.policy.logprobs(batch.answers).sum()
            return loss, {}

    try:
        agent = algos.make("test-imitate-first-token", random_policy(), lr=1e-3)
        history = agent.learn(env, 3, progress=False)
        assert [h["step"] for h in history] == [1, 2, 3]
        with pytest.raises(ValueError, match="already registered"):
            algos.register("test-imitate-first-token")(FirstToken)
    finally:
        algos.agent._ALGORITHMS.pop("test-imitate-first-token")


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo", "grao", "ppo"])
def test_every_algorithm_trains_logs_and_round_trips(tmp_path, env, name):
    agent = algos.make(name, random_policy(), batch_size=4, max_new_tokens=4, seed=3,
                       **({"group_size": 4} if name in {"grpo", "grao", "ppo"} else {}))
    before = [p.detach().clone() for p in agent.policy.parameters()]
    history = agent.learn(env, 2, log_dir=tmp_path / "logs", eval_env=env, eval_every=2,
                          eval_kwargs={"num_prompts": 8}, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert "eval/reward" in history[-1] and "eval/reward" not in history[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))
    lines = (tmp_path / "logs" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))

    agent.save(tmp_path / "agent")
    loaded = Agent.load(tmp_path / "agent")
    assert type(loaded) is type(agent) and loaded.config == agent.config and loaded.step == 2
    prompts = ["12+7=", "3+4="]
    assert loaded.act(prompts, greedy=True) == agent.act(prompts, greedy=True)


@pytest.mark.parametrize("name", ["grao", "ppo", "dpo"])
def test_resumed_training_equals_uninterrupted_training(tmp_path, env, name):
    # Bitwise, and so only within one process environment: both runs are made here, in this test, on this
    # machine with this thread count and these library versions; never compared with recorded numbers.
    kw = {"batch_size": 4, "max_new_tokens": 4, "seed": 1, **({"group_size": 3} if name != "dpo" else {})}
    straight = algos.make(name, random_policy(), **kw)
    straight.learn(env, max_steps=4, progress=False)

    first = algos.make(name, random_policy(), **kw)
    first.learn(env, max_steps=2, checkpoint_every=2, checkpoint_dir=tmp_path, progress=False)
    resumed = algos.make(name, random_policy(seed=99), **kw)  # different init: resume must overwrite it
    history = resumed.learn(env, max_steps=4, resume_from=tmp_path / "step-2", progress=False)

    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for a, b in zip(straight.policy.model.state_dict().values(), resumed.policy.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h["loss"] for h in history] == [h["loss"] for h in straight.history]


def test_same_seed_same_numbers(env):
    # Bitwise, and so only within one process environment: both runs are made here, in this test, on this
    # machine with this thread count and these library versions; never compared with recorded numbers.
    runs = []
    for _ in range(2):
        agent = algos.make("grao", random_policy(), batch_size=2, group_size=3, max_new_tokens=4, seed=5)
        runs.append([h["loss"] for h in agent.learn(env, 2, progress=False)])
    assert runs[0] == runs[1]


def test_checkpoint_of_another_algorithm_is_refused(tmp_path, env):
    sft = algos.make("sft", random_policy(), batch_size=2)
    sft.learn(env, 1, checkpoint_every=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="is for 'sft', not 'grao'"):
        algos.make("grao", random_policy()).learn(env, max_steps=2, resume_from=tmp_path / "step-1", progress=False)


@pytest.mark.parametrize("name", ["grpo", "ppo", "grao"])
def test_online_algorithms_take_a_pairwise_judge(name):
    """Dialogue-v0's reward is a judge R(o, y) in {-1, 0, 1}; GRAO scores the reference itself as 0."""
    env = textenv.make("textenv/Dialogue-v0")
    assert env.unwrapped.task.reward.pairwise
    agent = algos.make(name, random_policy(), batch_size=2, group_size=3, max_new_tokens=8, seed=0)
    record = agent.learn(env, 1, progress=False)[0]
    assert np.isfinite(record["loss"]) and -1 <= record["reward/mean"] <= 1
    if name == "grao":
        assert record["reward/reference_mean"] == 0.0


def test_constructor_overrides_are_validated_too():
    agent = algos.GRAO(random_policy(), algos.GRAOConfig(lr=1e-3), beta=0.25)
    assert agent.config.lr == 1e-3 and agent.config.beta == 0.25
    with pytest.raises(ConfigError, match=r"GRAOConfig.beta.* must be float, got str"):
        algos.GRAO(random_policy(), algos.GRAOConfig(), beta="high")
    with pytest.raises(ConfigError, match="GRAO needs a GRAOConfig, got SFTConfig"):
        algos.GRAO(random_policy(), algos.SFTConfig())


def test_learn_logs_sampled_eval_completions_as_tensorboard_text(tmp_path, env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    agent = algos.make("sft", random_policy(), batch_size=2, max_new_tokens=3)
    agent.learn(env, 2, eval_env=env, eval_every=1, eval_kwargs={"num_prompts": 6}, log_dir=tmp_path,
                progress=False)
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("eval/completions/text_summary")
    assert [t.step for t in texts] == [1, 2]
    table = texts[-1].tensor_proto.string_val[0].decode()
    examples = env.unwrapped.task.split("eval")[:4]
    assert table.startswith("| prompt | reference | completion |")
    assert table.count("\n") == 1 + len(examples) and examples[3].prompt in table
