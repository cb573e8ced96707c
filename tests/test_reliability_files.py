"""Silent wrong results, closed: every row is an input that used to be accepted (or trusted, or hung) and the
error it now gets -- its type and a fragment of the message, which names the key and the file -- or the
corrected behaviour.

Tables first: config values refused at construction; the group-size rule; what ``learn(env, max_steps)``
does; files read back (agent, checkpoint, policy and adapter metadata, results, base-eval caches, tiny model
markers, reward-model configs); reward output shapes; ``Example`` fields; loader options. Then
property-based tests: any input to every Agent config, ``Example``, the loaders and the files read back
either parses to valid values or raises the project's own error naming the key, never another exception.
"""

import json
import math
import re
import shutil
import tempfile
import time
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import algos
import rewards
import textenv
from algos import CheckpointError, ConfigError
from algos.agent import SavedAgent, read_saved_agent, schedule_at
from algos.fields import accepts
from benchmarks import runner
from textenv import Example, TaskError
from textenv.data import examples_from_columns, examples_from_records, load_hf, load_hh, load_jsonl

CONFIGS = {name: algos.get_algorithm(name).config_class for name in ("sft", "dpo", "ppo", "grpo", "grao")}


@pytest.fixture(scope="module")
def env():
    return textenv.make("textenv/Arithmetic-v0")


# ----------------------------------------------------------------------------- configs refuse at construction
# (algorithm, config values, message fragment): each refused by the dataclass itself, not only by algos.make.
CONFIG_ROWS = [
    ("sft", {"batch_size": "8"}, r"SFTConfig.batch_size must be int, got str '8'"),
    ("sft", {"max_new_tokens": 1.5}, r"SFTConfig.max_new_tokens must be int, got float"),
    ("sft", {"num_iterations": True}, r"SFTConfig.num_iterations must be int, got bool"),
    ("sft", {"lr": "1e-4"}, r"SFTConfig.lr must be float, got str"),
    ("sft", {"lr": 10**400}, r"SFTConfig.lr must be a finite number"),
    ("grao", {"imitation": "false"}, r"GRAOConfig.imitation must be bool, got str"),
    ("sft", {"weight_decay": -0.01}, r"SFTConfig.weight_decay must be >= 0, got -0.01"),
    ("sft", {"seed": 2**64}, r"SFTConfig.seed must be <= 18446744073709551615"),
    ("sft", {"top_k": -1}, r"SFTConfig.top_k must be >= 0"),
    ("sft", {"repetition_penalty": 0}, r"SFTConfig.repetition_penalty must be > 0"),
    ("sft", {"num_minibatches": 0}, r"SFTConfig.num_minibatches must be >= 1"),
    ("sft", {"micro_batch_size": 0}, r"SFTConfig.micro_batch_size must be >= 1"),
    ("sft", {"generation_chunk": 0}, r"SFTConfig.generation_chunk must be >= 1"),
    ("sft", {"generation_chunk": "all"}, r"SFTConfig.generation_chunk must be int or None"),
    ("dpo", {"beta": 0.0}, r"DPOConfig.beta must be > 0"),
    ("dpo", {"label_smoothing": 0.5}, r"DPOConfig.label_smoothing must be in \[0, 0.5\), got 0.5"),
    ("dpo", {"label_smoothing": -0.1}, r"DPOConfig.label_smoothing must be in \[0, 0.5\)"),
    ("dpo", {"loss_type": "hinge"}, r"DPOConfig.loss_type must be one of \['sigmoid', 'ipo'\]"),
    ("ppo", {"gamma": 1.5}, r"PPOConfig.gamma must be in \[0, 1\], got 1.5"),
    ("ppo", {"lam": -0.1}, r"PPOConfig.lam must be in \[0, 1\]"),
    ("ppo", {"clip_eps": 1.0}, r"PPOConfig.clip_eps must be in \(0, 1\), got 1.0"),
    ("ppo", {"vf_clip": 0}, r"PPOConfig.vf_clip must be > 0"),
    ("ppo", {"vf_coef": -1}, r"PPOConfig.vf_coef must be >= 0"),
    ("ppo", {"kl_coef": -0.1}, r"PPOConfig.kl_coef must be >= 0"),
    ("ppo", {"kl_kind": "k2"}, r"PPOConfig.kl_kind must be one of \['k1', 'k3', 'abs', 'mse'\]"),
    ("ppo", {"target_kl": 0.0}, r"PPOConfig.target_kl must be > 0"),
    ("ppo", {"kl_horizon": 0}, r"PPOConfig.kl_horizon must be >= 1"),
    ("ppo", {"whiten_rewards": 1}, r"PPOConfig.whiten_rewards must be bool, got int"),
    ("ppo", {"group_size": 0}, r"PPOConfig.group_size must be >= 1"),
    ("grpo", {"beta": -0.04}, r"GRPOConfig.beta must be >= 0"),
    ("grpo", {"clip_eps": 0}, r"GRPOConfig.clip_eps must be in \(0, 1\)"),
    ("grpo", {"clip_eps_high": 0.0}, r"GRPOConfig.clip_eps_high must be > 0"),
    ("grpo", {"scale_rewards": "std"}, r"GRPOConfig.scale_rewards must be one of \['group', 'batch', 'none'\]"),
    ("grpo", {"group_size": "8"}, r"GRPOConfig.group_size must be int, got str"),
    ("grao", {"beta": -0.5}, r"GRAOConfig.beta must be >= 0"),
    ("grao", {"lam": -0.6}, r"GRAOConfig.lam must be >= 0"),
    ("grao", {"eps": 0.0}, r"GRAOConfig.eps must be > 0"),
    ("grao", {"score_temperature": 0.0}, r"GRAOConfig.score_temperature must be > 0"),
    ("grao", {"score_temperature": "hot"}, r"GRAOConfig.score_temperature must be one of \['sampling'\] or float"),
    ("grao", {"imitation": "yes"}, r"GRAOConfig.imitation must be bool, got str"),
    ("grao", {"group_size": 0}, r"GRAOConfig.group_size must be >= 1"),
]


@pytest.mark.parametrize(("name", "values", "message"), CONFIG_ROWS)
def test_config_values_are_refused_at_construction_naming_the_key(name, values, message):
    with pytest.raises(ConfigError, match=message):
        CONFIGS[name](**values)  # the dataclass itself, as research code builds it
    with pytest.raises(ConfigError, match=message):
        CONFIGS[name].from_dict(values, where="cfg.toml")


def test_range_errors_from_a_table_name_where_it_came_from():
    with pytest.raises(ConfigError, match=r"PPOConfig.gamma must be in \[0, 1\], got 2.0 \(in run.toml \[ppo\]\)"):
        algos.PPOConfig.from_dict({"gamma": 2.0}, where="run.toml [ppo]")


def test_an_int_for_a_float_option_becomes_that_float():
    config = algos.DPOConfig(lr=1, beta=2)
    assert (config.lr, config.beta) == (1.0, 2.0) and isinstance(config.lr, float)


# ----------------------------------------------------------------------------- group_size = 1
def _varied_env():
    """Arithmetic's prompts and references with a reward that varies with the completion's length, so a
    group of one sample scores differently from its reference and from the other prompts' samples."""
    task = textenv.make("textenv/Arithmetic-v0").unwrapped.task
    lengths = textenv.Task("Lengths-v0", splits={"train": task.split("train")[:32], "eval": task.split("eval")[:4]},
                           reward=lambda completions, **kw: [float(len(c)) for c in completions])
    return textenv.TextGenEnv(lengths)


# (algorithm, config, outcome): refused naming the rule, or allowed because the step still learns.
GROUP_ROWS = [
    ("grpo", {}, r"GRPOConfig.group_size must be >= 2, got 1: advantages are relative to the group"),
    ("grao", {"group": "samples"}, r"GRAOConfig.group_size must be >= 2, got 1: with group='samples'"),
    ("grao", {}, "learns"),  # the reference answer is the lone sample's baseline
    ("ppo", {}, "learns"),  # the value head is the baseline, not the group
]


@pytest.mark.parametrize(("name", "config", "outcome"), GROUP_ROWS)
def test_group_size_one_is_refused_where_it_would_train_nothing(name, config, outcome):
    settings_ = {"batch_size": 4, "group_size": 1, "max_new_tokens": 4, "seed": 0, **config}
    if outcome != "learns":
        with pytest.raises(ConfigError, match=outcome):
            algos.make(name, random_policy(), **settings_)
        return
    history = algos.make(name, random_policy(), **settings_).learn(_varied_env(), max_steps=2, progress=False)
    assert any(h["grad_norm"] > 1e-3 for h in history) and any(abs(h["loss"]) > 0 for h in history)


def test_a_benchmark_whose_budget_gives_grpo_one_sample_is_refused_when_parsed():
    from benchmarks import config as bench_config

    raw = {"budget": {"group_size": 1}, "tasks": {"textenv/Arithmetic-v0": {}},
           "algorithms": {"grpo": {}, "ppo": {}}}
    with pytest.raises(bench_config.BenchConfigError, match=r"GRPOConfig.group_size must be >= 2, got 1: .*\(in "
                                                            r"bench.toml \[algorithms.grpo\] with the budget of"):
        bench_config.parse(raw, where="bench.toml")
    assert bench_config.parse({**raw, "algorithms": {"ppo": {}}}, where="bench.toml").budget.group_size == 1


# ----------------------------------------------------------------------------- learn(env, max_steps)
def _steps(history):
    return [h["step"] for h in history]


def test_learn_trains_up_to_max_steps_so_two_calls_of_two_train_two(env):
    agent = algos.make("sft", random_policy(), batch_size=2)
    assert _steps(agent.learn(env, max_steps=2, progress=False)) == [1, 2]
    weights = [p.detach().clone() for p in agent.policy.parameters()]
    with pytest.warns(UserWarning, match=r"learn\(max_steps=2\) has nothing to train: the agent is already at step "
                                         r"2 .* pass max_steps=4 for 2 more"):
        history = agent.learn(env, 2, progress=False)
    assert _steps(history) == [1, 2] and agent.step == 2
    assert all(torch.equal(a, b) for a, b in zip(weights, agent.policy.parameters(), strict=True))
    assert _steps(agent.learn(env, max_steps=4, progress=False)) == [1, 2, 3, 4]


def test_learn_resumed_past_max_steps_trains_nothing_and_says_so(tmp_path, env):
    algos.make("sft", random_policy(), batch_size=2).learn(env, max_steps=3, checkpoint_every=3,
                                                            checkpoint_dir=tmp_path, progress=False)
    agent = algos.make("sft", random_policy(), batch_size=2)
    with pytest.warns(UserWarning, match="already at step 3"):
        history = agent.learn(env, max_steps=2, resume_from=tmp_path / "step-3", progress=False)
    assert _steps(history) == [1, 2, 3] and agent.step == 3


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_the_schedule_is_placed_at_a_step_in_constant_time_with_the_rate_stepping_reaches(kind):
    def optimizer():
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)

    stepped = schedule_at(optimizer(), kind, 10, 2 * 10**6, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for step in range(1, 30_001):
            stepped.step()
            if step in (1, 9, 10, 11, 777, 30_000):
                assert schedule_at(optimizer(), kind, 10, 2 * 10**6, step).get_last_lr() == stepped.get_last_lr()
    start = time.perf_counter()
    far = schedule_at(optimizer(), kind, 10, 2 * 10**6, 10**6)
    assert time.perf_counter() - start < 0.1
    assert far.last_epoch == 10**6 and far.get_last_lr() == [1e-3 * far.lr_lambdas[0](10**6)]


def test_resuming_at_step_a_million_is_instant_and_follows_the_schedule(tmp_path, env):
    kw = {"batch_size": 2, "lr": 1e-3, "lr_scheduler": "linear"}
    algos.make("sft", random_policy(), **kw).learn(env, max_steps=1, checkpoint_every=1, checkpoint_dir=tmp_path,
                                                    progress=False)
    meta = json.loads((tmp_path / "step-1" / "agent.json").read_text())
    (tmp_path / "step-1" / "agent.json").write_text(json.dumps({**meta, "step": 10**6}))
    agent = algos.make("sft", random_policy(), **kw)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="nothing to train"):
        agent.learn(env, max_steps=10, resume_from=tmp_path / "step-1", progress=False)
    record = agent.learn(env, max_steps=10**6 + 4, progress=False)[-1]
    assert time.perf_counter() - start < 30 and record["step"] == 10**6 + 4
    assert record["lr"] == pytest.approx(0.0)  # the linear schedule's end, as stepping reaches it


# ----------------------------------------------------------------------------- files read back
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PPO checkpoint at step 1 (it has an algorithm state, kl_coef, besides weights and config), and the
    same agent saved (``Agent.save``: what ``Agent.load`` reads), side by side."""
    root = tmp_path_factory.mktemp("saved")
    env = textenv.make("textenv/Arithmetic-v0")
    agent = algos.make("ppo", random_policy(), batch_size=2, group_size=2, max_new_tokens=3)
    agent.learn(env, max_steps=1, checkpoint_every=1, checkpoint_dir=root / "ckpt", progress=False)
    agent.save(root / "ckpt" / "agent")
    return root / "ckpt" / "step-1"


def _edit_json(path: Path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _without(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def _with(key, value):
    return lambda d: {**d, key: value}


def _in_config(key, value):
    return lambda d: {**d, "config": {**d["config"], key: value}}


# (file in the checkpoint, edit of its JSON, message fragment); every one a CheckpointError naming the file.
CHECKPOINT_ROWS = [
    pytest.param("agent.json", _with("step", "abc"), r"agent.json: key 'step' must be int, got str 'abc'",
                 id="step-str"),
    pytest.param("agent.json", _with("step", 1.5), r"agent.json: key 'step' must be int, got float", id="step-float"),
    pytest.param("agent.json", _with("step", -1), r"agent.json: key 'step' must be >= 0, got -1", id="step-negative"),
    pytest.param("agent.json", _with("step", True), r"agent.json: key 'step' must be int, got bool", id="step-bool"),
    pytest.param("agent.json", _without("step"), r"agent.json: missing key 'step'", id="step-missing"),
    pytest.param("agent.json", _with("algorithm", 3), r"agent.json: key 'algorithm' must be str", id="algo-int"),
    pytest.param("agent.json", _with("algorithm", "nope"), r"agent.json: key 'algorithm': no algorithm 'nope' is "
                 r"registered", id="algo-unknown"),
    pytest.param("agent.json", _with("algorithm", "grpo"), r"agent.json: this checkpoint is for 'grpo', not 'ppo'",
                 id="algo-other"),
    pytest.param("agent.json", _with("config", [1]), r"agent.json: key 'config' must be dict\[str, Any\]",
                 id="config-list"),
    pytest.param("agent.json", _in_config("lr", "fast"), r"agent.json: key 'config': PPOConfig.lr must be float, got "
                 r"str 'fast'", id="config-lr-str"),
    pytest.param("agent.json", _in_config("gamma", 3.0), r"agent.json: key 'config': PPOConfig.gamma must be in "
                 r"\[0, 1\]", id="config-gamma"),
    pytest.param("agent.json", _in_config("lrr", 1.0), r"agent.json: key 'config': unknown PPOConfig key 'lrr'",
                 id="config-unknown-key"),
    pytest.param("agent.json", _with("state", {}), r"agent.json: key 'state': missing 'kl_coef'", id="state-missing"),
    pytest.param("agent.json", _with("state", {"kl_coef": "abc"}), r"agent.json: key 'state': kl_coef must be float",
                 id="state-str"),
    pytest.param("agent.json", _with("state", {"kl_coef": -1.0}), r"agent.json: key 'state': kl_coef must be >= 0",
                 id="state-negative"),
    pytest.param("agent.json", lambda d: [d], r"agent.json: expected a JSON object, got list", id="agent-list"),
    pytest.param("history.json", lambda h: {"step": 1}, r"history.json must be list\[dict\[str, float\]\], got dict",
                 id="history-dict"),
    pytest.param("history.json", lambda h: [{"step": "1", "loss": 0.5}], r"history.json must be list",
                 id="history-str"),
    pytest.param("history.json", lambda h: [{"loss": 0.5}], r"history.json: record 0: key 'step' must be an integer "
                 r"in \[1, 1\]", id="history-no-step"),
    pytest.param("history.json", lambda h: [{"step": 7}], r"record 0: key 'step' must be an integer in \[1, 1\] .*"
                 r"got 7", id="history-step-beyond"),
    pytest.param("policy/policy.json", _with("chat", "yes"), r"policy.json: key 'chat' must be bool, got str 'yes'",
                 id="policy-chat-str"),
    pytest.param("policy/policy.json", lambda d: None, r"policy.json: expected a JSON object, got NoneType",
                 id="policy-null"),
]


@pytest.mark.parametrize(("name", "edit", "message"), CHECKPOINT_ROWS)
def test_a_checkpoint_file_with_a_wrong_value_is_named_with_its_key(tmp_path, saved, env, name, edit, message):
    """Each file edited in a checkpoint (which ``learn`` resumes from) and in a saved agent (which ``Agent.load``
    reads), where the folder has it: a checkpoint has no policy folder, a saved agent no history."""
    if (saved / name).exists():
        folder = tmp_path / "step-1"
        shutil.copytree(saved, folder)
        _edit_json(folder / name, edit)
        agent = algos.make("ppo", random_policy(), batch_size=2, group_size=2, max_new_tokens=3)
        with pytest.raises(CheckpointError, match=message):
            agent.learn(env, max_steps=2, resume_from=folder, progress=False)
    if (saved.parent / "agent" / name).exists():
        folder = tmp_path / "agent"
        shutil.copytree(saved.parent / "agent", folder)
        _edit_json(folder / name, edit)
        with pytest.raises(CheckpointError, match=message if not (saved / name).exists() else Path(name).name):
            algos.Agent.load(folder)


def test_loading_a_folder_as_another_algorithm_is_refused(saved):
    with pytest.raises(CheckpointError, match=r"agent.json: this checkpoint is for 'ppo', not 'grpo'"):
        algos.GRPO.load(saved.parent / "agent")


def test_a_lora_adapter_config_with_a_wrong_base_is_named(tmp_path):
    random_policy().save(tmp_path / "base")
    algos.Policy.from_pretrained(tmp_path / "base", lora={"r": 2}).save(tmp_path / "adapter")
    _edit_json(tmp_path / "adapter" / "adapter_config.json", _with("base_model_name_or_path", 3))
    with pytest.raises(CheckpointError, match=r"adapter_config.json: key 'base_model_name_or_path' must be str"):
        algos.Policy.from_pretrained(tmp_path / "adapter")


def _result(**changes):
    """A result file's content as the runner writes it (small), with ``changes`` applied (None deletes)."""
    result = {"schema": runner.SCHEMA, "key": "k", "task": "textenv/Arithmetic-v0", "algorithm": "sft",
              "algo": "sft", "seed": 0, "metrics": {"reward": 0.5, "n": 4.0}, "base_metrics": {"reward": 0.25},
              "history": [{"step": 1, "loss": 1.0}], "tokens_generated": 0.0, "tokens_trained": 12.0,
              "optimizer_steps": 1, "wall_time_s": 0.5, "config": {}, "examples": [], "base_examples": None,
              "subset_key": None, "sft_steps": 0}
    result.update(changes)
    return {k: v for k, v in result.items() if v is not None or k in ("base_examples", "subset_key")}


# (result content, fragment of the problem printed when it is set aside); None: trusted as it is.
RESULT_ROWS = [
    pytest.param(_result(), None, id="valid"),
    pytest.param(_result(seed="0"), r"key 'seed' must be int, got str '0'", id="seed-str"),
    pytest.param(_result(seed=-1), r"key 'seed' must be >= 0", id="seed-negative"),
    pytest.param(_result(metrics=3), r"key 'metrics' must be dict\[str, float \| None\], got int", id="metrics-int"),
    pytest.param(_result(metrics={"reward": "high"}), r"key 'metrics' must be dict", id="metric-str"),
    pytest.param(_result(history=[{"loss": 1.0}]), r"key 'history': record 0 has no integer 'step'", id="no-step"),
    pytest.param(_result(history={"step": 1}), r"key 'history' must be list", id="history-dict"),
    pytest.param(_result(wall_time_s=-2.0), r"key 'wall_time_s' must be >= 0", id="time-negative"),
    pytest.param(_result(tokens_trained="12"), r"key 'tokens_trained' must be float", id="tokens-str"),
    pytest.param(_result(config=None), r"missing key 'config'", id="config-missing"),
    pytest.param(_result(subset_key=3), r"key 'subset_key' must be str or None", id="subset-int"),
    pytest.param([_result()], r"expected a JSON object, got list", id="list"),
]


@pytest.mark.parametrize(("content", "problem"), RESULT_ROWS)
def test_a_result_file_is_trusted_only_when_every_key_checks(tmp_path, capsys, content, problem):
    path = tmp_path / "results" / "t" / "sft" / "seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content))
    assert (runner.load_results(tmp_path) == [content]) == (problem is None)
    if problem is not None:
        assert re.search(problem, capsys.readouterr().out)
    got = runner.read_result(path, "k")
    if problem is None:
        assert got == content
        return
    assert got is None and not path.exists() and len(list(path.parent.glob("seed0.corrupt-*"))) == 1
    assert re.search(rf"seed0.json: .*{problem}.*moved to seed0.corrupt-", capsys.readouterr().out)


@pytest.mark.parametrize(("content", "problem"), [
    ({"key": "k", "completions": ["1", 2], "metrics": {}}, r"key 'completions' must be list\[str\]"),
    ({"key": "k", "completions": ["1"], "metrics": {"reward": [1]}}, r"key 'metrics' must be dict"),
    ({"key": 5, "completions": ["1"], "metrics": {}}, r"key 'key' must be str"),
    ({"key": "k", "completions": ["1"], "metrics": {}, "examples": "none"}, r"key 'examples' must be "),
])
def test_a_base_eval_cache_with_a_wrong_key_is_set_aside(tmp_path, capsys, content, problem):
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(content))
    assert runner.read_base_eval(path, "k", 1) is None and not path.exists()
    assert re.search(rf"not a base eval \({problem}", capsys.readouterr().out)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A tiny base model trained for two steps into a fresh cache (seconds), and its recipe."""
    from algos.tiny import TinyRecipe, pretrain_tiny

    task = textenv.make("textenv/Arithmetic-v0").unwrapped.task
    recipe = TinyRecipe(hidden=16, layers=1, heads=2, steps=2, batch_size=4, seq_len=16, max_positions=32,
                        warmup_steps=1)
    cache = tmp_path_factory.mktemp("tiny")
    return task, recipe, cache, pretrain_tiny(task, recipe, cache_dir=cache, progress=False)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda info: {**info, "recipe": {**info["recipe"], "hidden": 999}}, r"tiny_recipe.json: key 'recipe' is .*"
     r"'hidden': 999.*but this cache entry is for .*remove .* to rebuild the model"),
    (lambda info: {**info, "code_version": "0"}, r"tiny_recipe.json: key 'code_version' is '0'"),
    (lambda info: [info], r"tiny_recipe.json: expected a JSON object, got list"),
])
def test_a_tiny_model_marker_that_does_not_match_its_recipe_is_named(tiny_cache, edit, message):
    from algos.tiny import pretrain_tiny

    task, recipe, cache, path = tiny_cache
    marker = path / "tiny_recipe.json"
    original = marker.read_text()
    try:
        _edit_json(marker, edit)
        with pytest.raises(CheckpointError, match=message):
            pretrain_tiny(task, recipe, cache_dir=cache, progress=False)
        marker.write_text("{not json")
        with pytest.raises(CheckpointError, match=r"tiny_recipe.json: cannot be read"):
            pretrain_tiny(task, recipe, cache_dir=cache, progress=False)
    finally:
        marker.write_text(original)
    assert pretrain_tiny(task, recipe, cache_dir=cache, progress=False) == path


@pytest.mark.parametrize(("content", "message"), [
    ('{"model_type": "bradley_terry", "hidden_size": "64"}',
     r"key 'hidden_size' must be a whole number >= 1, got '64'"),
    ('{"model_type": "bradley_terry", "layers": 2}', r"unknown key 'layers'; valid keys: hidden_size"),
    ('{"model_type": "bradley_terry"', r"reward_config.json' is not valid JSON"),
    ('["bradley_terry"]', r"is not a bradley_terry config"),
])
def test_a_reward_model_config_with_a_wrong_key_is_named(tmp_path, content, message):
    from rewards.learned import BradleyTerryRewardModel, BTConfig

    BradleyTerryRewardModel(BTConfig(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)).save(tmp_path)
    (tmp_path / "reward_config.json").write_text(content)
    with pytest.raises(rewards.RewardError, match=message):
        BradleyTerryRewardModel.load(tmp_path)


# ----------------------------------------------------------------------------- reward shapes
def _reward(values):
    return rewards.resolve(lambda prompts, completions, references=None: values, name="shaped")


# (reward output for 2 completions, message fragment); None: accepted as is.
SHAPE_ROWS = [
    pytest.param([0.5, 1.0], None, id="list"),
    pytest.param(np.array([0.5, 1.0]), None, id="1d-array"),
    pytest.param(torch.tensor([0.5, 1.0]), None, id="1d-tensor"),
    pytest.param(np.ones((2, 1)), r"returned an array of shape \(2, 1\); expected one value per completion, a 1-D "
                 r"sequence of shape \(2,\)", id="column"),
    pytest.param(np.ones((1, 2)), r"returned an array of shape \(1, 2\)", id="row"),
    pytest.param([[0.5], [1.0]], r"returned an array of shape \(2, 1\)", id="nested-list"),
    pytest.param(torch.ones(2, 1), r"returned an array of shape \(2, 1\)", id="column-tensor"),
    pytest.param(np.float64(0.5), r"returned a scalar \(shape \(\)\)", id="scalar"),
    pytest.param([0.5], r"returned 1 values for 2 completions", id="short"),
]


@pytest.mark.parametrize(("values", "message"), SHAPE_ROWS)
def test_a_reward_returns_exactly_one_value_per_completion(values, message):
    reward = _reward(values)
    if message is None:
        assert reward(["p", "q"], ["a", "b"], where="env").tolist() == [0.5, 1.0]
        return
    with pytest.raises(rewards.RewardError, match=r"reward 'shaped' \(in env\) " + message):
        reward(["p", "q"], ["a", "b"], where="env")


# ----------------------------------------------------------------------------- Example fields
USER = [{"role": "user", "content": "hi"}]
ASSISTANT = [{"role": "assistant", "content": "hello"}]

EXAMPLE_ROWS = [
    pytest.param({"prompt": "2+2="}, None, id="text"),
    pytest.param({"prompt": USER, "reference": ASSISTANT, "chosen": "a", "rejected": None, "meta": {"k": 1}}, None,
                 id="messages"),
    pytest.param({"prompt": 3}, r"Example.prompt is int, expected str or a list of messages", id="prompt-int"),
    pytest.param({"prompt": None}, r"Example.prompt is NoneType", id="prompt-none"),
    pytest.param({"prompt": []}, r"Example.prompt: expected a non-empty list of messages", id="prompt-empty"),
    pytest.param({"prompt": [{"role": "user"}]}, r"Example.prompt: message 0 has no 'content'", id="no-content"),
    pytest.param({"prompt": "p", "reference": 1.5}, r"Example.reference is float", id="reference-float"),
    pytest.param({"prompt": "p", "chosen": USER}, r"Example.chosen: message 0 has role 'user'; an answer holds "
                 r"assistant messages only", id="chosen-user"),
    pytest.param({"prompt": "p", "rejected": {"role": "assistant"}}, r"Example.rejected is dict", id="rejected-dict"),
    pytest.param({"prompt": "p", "meta": 3}, r"Example.meta must be a dict of str keys, got int", id="meta-int"),
    pytest.param({"prompt": "p", "meta": [("k", 1)]}, r"Example.meta must be a dict of str keys, got list",
                 id="meta-list"),
    pytest.param({"prompt": "p", "meta": {1: "x"}}, r"Example.meta: key 1 is int, expected str", id="meta-int-key"),
]


@pytest.mark.parametrize(("fields", "message"), EXAMPLE_ROWS)
def test_example_fields_are_checked_naming_the_field(fields, message):
    if message is None:
        example = Example(**fields)
        assert isinstance(example.meta, dict) and example.meta is not fields.get("meta")
        return
    with pytest.raises(TaskError, match=message):
        Example(**fields)


# ----------------------------------------------------------------------------- loader options
@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "rows.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    (root / "hh.jsonl").write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                                               "rejected": "\n\nHuman: hi\n\nAssistant: go"}) + "\n")
    return root


def _hf_rows():
    import datasets

    return datasets.Dataset.from_dict({"prompt": ["1+1="], "answer": ["2"]})


# (loader call on the fixture files, message fragment); every one a TaskError naming the option.
LOADER_ROWS = [
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", prompt=3),
                 r"rows.jsonl': prompt must be a non-empty string or None, got 3", id="prompt-int"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", prompt=""),
                 r"prompt must be a non-empty string or None, got ''", id="prompt-empty"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", reference=["answer"]), r"reference must be a string or None, "
                 r"got \['answer'\]", id="reference-list"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", meta={"k": 1}), r"meta must be None, a column name, a list "
                 r"of column names or a \{meta key: column\} dict of strings, got \{'k': 1\}", id="meta-dict-int"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", meta=5), r"meta must be None, a column name", id="meta-int"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", limit="3"), r"limit must be None or an integer >= 0, got '3'",
                 id="limit-str"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", limit=True), r"limit must be None or an integer >= 0, got True",
                 id="limit-bool"),
    pytest.param(lambda d: load_jsonl(d / "rows.jsonl", messages=1), r"messages must be a string or None, got 1",
                 id="messages-int"),
    pytest.param(lambda d: load_jsonl(3), r"'3': path must be a path \(str or pathlib.Path\), got 3", id="path-int"),
    pytest.param(lambda d: load_hf(_hf_rows(), split=0), r"load_hf\(dataset\): split must be a non-empty string",
                 id="hf-split-int"),
    pytest.param(lambda d: load_hf(_hf_rows(), data_dir=["x"]), r"data_dir must be a string or None", id="hf-data-dir"),
    pytest.param(lambda d: load_hf(_hf_rows(), chosen=2.0), r"chosen must be a string or None, got 2.0",
                 id="hf-chosen-float"),
    pytest.param(lambda d: load_hh(d / "hh.jsonl", messages="yes"), r"hh.jsonl': messages must be True or False, got "
                 r"'yes'", id="hh-messages-str"),
    pytest.param(lambda d: load_hh(d / "hh.jsonl", split=""), r"split must be a non-empty string", id="hh-split-empty"),
    pytest.param(lambda d: load_hh(d / "hh.jsonl", subset=1), r"subset must be a string or None", id="hh-subset-int"),
    pytest.param(lambda d: examples_from_columns({"prompt": ["a"]}, "table", rejected=0),
                 r"table: rejected must be a string or None, got 0", id="columns-rejected"),
    pytest.param(lambda d: examples_from_records([{"prompt": "a"}], "rows", prompt=None),
                 r"rows: prompt=None takes the prompt from the shared start of chosen and rejected; name both",
                 id="records-prompt-none-without-pairs"),
]


@pytest.mark.parametrize(("load", "message"), LOADER_ROWS)
def test_loader_options_are_checked_before_reading_naming_the_option(data_files, load, message):
    with pytest.raises(TaskError, match=message):
        load(data_files)


def test_valid_loader_options_still_load(data_files):
    rows = load_jsonl(data_files / "rows.jsonl", reference="answer", meta=["answer"], limit=1)
    assert [(e.prompt, e.reference, e.meta) for e in rows] == [("1+1=", "2", {"answer": "2"})]
    assert load_hf(_hf_rows(), reference="answer", meta={"gold": "answer"})[0].meta == {"gold": "2"}
    assert load_hh(data_files / "hh.jsonl", messages=True)[0].chosen == [{"role": "assistant", "content": "hello"}]


# ----------------------------------------------------------------------------- property-based
VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.sampled_from(["sampling", "grpo", "dapo", "ipo", "k3", "samples", "linear", "batch"]),
                   st.lists(st.integers(-5, 5), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
SMALL_NUMBERS = st.one_of(st.integers(-2, 10), st.floats(-1.0, 2.0))


def _valid_config(config) -> None:
    """What a config that constructed must hold: every value of its field's type, floats finite, key ranges."""
    hints = typing.get_type_hints(type(config))
    for key, value in config.to_dict().items():
        assert accepts(hints[key], value), (key, value)
        assert not isinstance(value, float) or math.isfinite(value), (key, value)
    assert config.lr > 0 and config.temperature > 0 and 0 < config.top_p <= 1 and config.weight_decay >= 0
    assert config.batch_size >= 1 and config.max_new_tokens >= 1 and 1 <= config.num_minibatches <= config.batch_size
    assert 0 <= config.seed < 2**64
    if isinstance(config, algos.GRPOConfig):
        assert config.group_size >= 2 and 0 < config.clip_eps < 1 and config.beta >= 0
    if isinstance(config, algos.PPOConfig):
        assert 0 <= config.gamma <= 1 and 0 <= config.lam <= 1 and 0 < config.clip_eps < 1
    if isinstance(config, algos.DPOConfig):
        assert config.beta > 0 and 0 <= config.label_smoothing < 0.5
    if isinstance(config, algos.GRAOConfig):
        assert config.group_size >= (2 if config.group == "samples" else 1) and config.eps > 0


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.data())
def test_any_agent_config_is_valid_or_a_config_error_naming_the_key(name, data):
    cls = CONFIGS[name]
    keys = sorted(cls.__dataclass_fields__)
    values = data.draw(st.dictionaries(st.sampled_from(keys), st.one_of(VALUES, SMALL_NUMBERS), max_size=5))
    for build in (lambda: cls(**values), lambda: cls.from_dict(values, where="fuzz")):
        try:
            config = build()
        except ConfigError as err:
            assert any(key in str(err) for key in values), str(err)
            continue
        _valid_config(config)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.text(max_size=8), VALUES)
def test_an_unknown_config_key_is_a_config_error_naming_it(name, key, value):
    cls = CONFIGS[name]
    try:
        cls.from_dict({key: value})
    except ConfigError as err:
        assert repr(key) in str(err) or key in str(err)
        return
    assert key in cls.__dataclass_fields__


MESSAGE = st.dictionaries(st.sampled_from(["role", "content", "name"]),
                          st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "robot"]),
                                    st.text(max_size=4), st.integers(), st.none()), max_size=3)
TEXTS = st.one_of(st.text(max_size=6), st.none(), st.integers(), st.floats(), st.lists(MESSAGE, max_size=3),
                  st.lists(st.text(max_size=3), max_size=2), st.tuples(MESSAGE), MESSAGE)
METAS = st.one_of(st.dictionaries(st.one_of(st.text(max_size=3), st.integers(), st.none()), VALUES, max_size=3),
                  VALUES)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"prompt": TEXTS, "reference": TEXTS, "chosen": TEXTS, "rejected": TEXTS,
                                           "meta": METAS}))
def test_any_example_is_valid_or_a_task_error_naming_the_field(fields):
    fields.setdefault("prompt", "p")
    try:
        example = Example(**fields)
    except TaskError as err:
        assert any(str(err).startswith(f"Example.{key}") for key in fields), str(err)
        return
    for key in ("prompt", "reference", "chosen", "rejected"):
        value = getattr(example, key)
        assert (value is None and key != "prompt") or isinstance(value, str) or (
            isinstance(value, list) and value and all(isinstance(m["content"], str) for m in value))
    assert isinstance(example.meta, dict) and all(isinstance(k, str) for k in example.meta)


COLUMN_OPTIONS = st.one_of(st.sampled_from(["prompt", "answer", "conv", "missing"]), st.none(), VALUES)
ROW_VALUES = st.one_of(st.text(max_size=4), TEXTS, st.lists(MESSAGE, min_size=1, max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["prompt", "answer", "conv", "extra"]), ROW_VALUES, max_size=4),
                max_size=3),
       st.fixed_dictionaries({}, optional={"prompt": COLUMN_OPTIONS, "reference": COLUMN_OPTIONS,
                                           "chosen": COLUMN_OPTIONS, "rejected": COLUMN_OPTIONS,
                                           "messages": COLUMN_OPTIONS,
                                           "meta": st.one_of(COLUMN_OPTIONS, st.lists(COLUMN_OPTIONS, max_size=2),
                                                             st.dictionaries(st.text(max_size=3), COLUMN_OPTIONS,
                                                                             max_size=2))}))
def test_any_rows_and_column_options_load_or_raise_a_task_error(rows, options):
    try:
        examples = examples_from_records(rows, "fuzz.jsonl", **options)
    except TaskError as err:  # names the source, or the options that conflict (messages= with prompt=)
        assert str(err).startswith("fuzz.jsonl") or any(f"{key}=" in str(err) for key in options), str(err)
        return
    assert len(examples) == len(rows) and all(isinstance(e, Example) for e in examples)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional={"prompt": COLUMN_OPTIONS, "reference": COLUMN_OPTIONS,
                                           "meta": COLUMN_OPTIONS, "limit": VALUES, "messages": VALUES}),
       st.fixed_dictionaries({}, optional={"split": VALUES, "subset": VALUES, "data_dir": VALUES, "limit": VALUES,
                                           "messages": VALUES}))
def test_any_loader_options_load_or_raise_a_task_error_naming_the_file(data_files, jsonl_options, hh_options):
    for load, options in ((load_jsonl, jsonl_options), (load_hh, hh_options)):
        path = data_files / ("rows.jsonl" if load is load_jsonl else "hh.jsonl")
        try:
            examples = load(path, **options)
        except TaskError as err:
            assert str(path) in str(err), str(err)
            continue
        assert examples and all(isinstance(e, Example) for e in examples)


SAVED_KEYS = {"algorithm": st.one_of(st.sampled_from(["ppo", "grao", "x"]), VALUES),
              "config": st.one_of(st.fixed_dictionaries({}, optional={"lr": VALUES, "gamma": VALUES}), VALUES),
              "step": st.one_of(st.integers(-3, 10**12), VALUES), "state": VALUES}


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.fixed_dictionaries({}, optional=SAVED_KEYS), VALUES))
def test_any_agent_json_reads_to_valid_values_or_a_checkpoint_error_naming_the_file(content):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "agent.json").write_text(json.dumps(content))
        try:
            meta = read_saved_agent(Path(tmp))
            config = meta.agent_config(Path(tmp))
        except CheckpointError as err:
            assert str(err).startswith(str(Path(tmp) / "agent.json")), str(err)
            return
    assert isinstance(meta, SavedAgent) and meta.algorithm in algos.list_algorithms()
    assert isinstance(meta.step, int) and not isinstance(meta.step, bool) and meta.step >= 0
    assert isinstance(meta.state, dict) and isinstance(config, algos.AgentConfig)


RESULT_KEYS = ["schema", "key", "task", "algorithm", "algo", "seed", "metrics", "base_metrics", "history",
               "tokens_generated", "tokens_trained", "optimizer_steps", "wall_time_s", "config", "examples"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(RESULT_KEYS), st.one_of(VALUES, st.lists(VALUES, max_size=2)), max_size=3),
       st.lists(st.sampled_from(RESULT_KEYS), max_size=2))
def test_any_result_file_is_trusted_only_with_valid_values(changes, removed):
    content = {k: v for k, v in {**_result(), **changes}.items() if k not in removed}
    problem = runner.file_problem(runner.ResultFile, content)
    if problem is not None:
        assert any(key in problem for key in [*changes, *removed]), problem
        return
    assert isinstance(content["seed"], int) and content["seed"] >= 0 and isinstance(content["metrics"], dict)
    assert all(isinstance(h, dict) and isinstance(h["step"], int) for h in content["history"])

