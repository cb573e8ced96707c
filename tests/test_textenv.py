"""The environments, the registry (Gymnasium and entry points), and the evaluation metrics."""

import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import textenv
from rewards import PairwiseJudge, RewardError
from rewards.tiny import byte_tokenizer
from textenv import (
    Example,
    Task,
    TaskError,
    TextGenEnv,
    TextSpace,
    TextVectorEnv,
    TokenEnv,
    evaluate_completions,
    evaluate_examples,
)

BUILTIN = ["textenv/Arithmetic-v0", "textenv/Sentiment-v0", "textenv/Dialogue-v0", "textenv/Preference-v0",
           "textenv/ChatSums-v0", "textenv/Instructions-v0"]
# A reward model small enough to train in about a second; cached under a per-session directory.
FAST_BT = {"bt_steps": 20, "bt_config": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                         "intermediate_size": 32, "max_length": 160}}


@pytest.fixture(autouse=True, scope="module")
def textenv_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TEXTENV_CACHE", str(tmp_path_factory.mktemp("textenv-cache")))
    yield
    mp.undo()


class CountingReward:
    """Reward = number of "!" in the completion; counts calls and remembers the columns it got."""

    def __init__(self):
        self.calls, self.columns = 0, None

    def __call__(self, prompts, completions, references=None, **columns):
        self.calls += 1
        self.columns = columns
        return [float(c.count("!")) for c in completions]


def bang_task(reward=None, **kw) -> Task:
    train = [Example(f"say {i}:", reference="!" * (i % 3), chosen="!!", rejected="", meta={"k": i}) for i in range(6)]
    evals = [Example("eval:", reference="!")]
    return Task("Bang-v0", {"train": train, "eval": evals}, reward=reward or CountingReward(), **kw)


# ---- the README snippet: a custom reward environment in about ten lines ---------------------------

def test_readme_snippet_custom_reward_env():
    try:
        import textenv

        def politeness(prompts, completions, references=None, **columns):  # TRL-style: one float per completion
            return [1.0 if "please" in c.lower() else 0.0 for c in completions]

        def polite_task():
            data = [textenv.Example(f"Ask for the {x}:", reference=f" Please pass the {x}.")
                    for x in ("salt", "bread", "jam", "tea")]
            return textenv.Task("Polite-v0", splits={"train": data[:3], "eval": data[3:]}, reward=politeness)

        textenv.register("my/Polite-v0", polite_task)
        env = textenv.make("my/Polite-v0")                        # or gymnasium.make("my/Polite-v0")
        prompt, info = env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(" Please pass it.")

        assert prompt.startswith("Ask for the ") and info["reference"].startswith(" Please pass the ")
        assert (reward, terminated, truncated) == (1.0, True, False)
        assert isinstance(gym.make("my/Polite-v0"), TextGenEnv)
        check_env(env)
    finally:
        textenv.unregister("my/Polite-v0")


# ---- spaces ---------------------------------------------------------------------------------------

def test_text_space_accepts_any_text_within_length():
    space = TextSpace(12)
    assert space.contains("Hi, you?\n") and space.contains("") and space.contains("über 中文 ok")
    assert not space.contains("x" * 13) and not space.contains(5) and not space.contains(b"bytes")
    assert not gym.spaces.Text(12).contains("Hi, you?")  # why TextSpace exists
    space.seed(0)
    assert all(space.contains(space.sample()) for _ in range(20))


# ---- TextGenEnv -----------------------------------------------------------------------------------

def test_reset_returns_prompt_and_what_the_task_knows():
    env = TextGenEnv(bang_task(), max_length=50)
    prompt, info = env.reset(options={"index": 4})
    assert prompt == "say 4:"
    assert info == {"prompt": "say 4:", "reference": "!", "chosen": "!!", "rejected": "", "index": 4,
                    "split": "train", "meta": {"k": 4}}
    prompt, info = env.reset(options={"split": "eval", "index": 0})
    assert (prompt, info["split"], info["reference"]) == ("eval:", "eval", "!")


def test_reset_seed_is_deterministic_and_covers_the_split():
    env = TextGenEnv(bang_task())
    assert env.reset(seed=3)[0] == env.reset(seed=3)[0]
    assert {env.reset(seed=s)[1]["index"] for s in range(60)} == set(range(6))


def test_step_scores_the_completion_and_ends_the_episode():
    reward = CountingReward()
    env = TextGenEnv(bang_task(reward))
    env.reset(options={"index": 2})
    obs, r, terminated, truncated, info = env.step("yes!!!")
    assert (obs, r, terminated, truncated) == ("say 2:yes!!!", 3.0, True, False)
    assert info["reward_components"] == {"CountingReward": 3.0}
    assert reward.columns == {"k": [2]}  # meta travels to the reward as a keyword column
    with pytest.raises(gym.error.ResetNeeded, match="Bang-v0: call reset"):
        env.step("again")


def test_step_errors_are_clear():
    env = TextGenEnv(bang_task(), max_length=5)
    with pytest.raises(gym.error.ResetNeeded, match=r"Bang-v0: call reset\(\) before step\(\)"):
        env.step("!")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="Bang-v0: the action must be the completion as a str, got int"):
        env.step(3)
    with pytest.raises(ValueError, match="completion has 6 characters, more than max_length=5"):
        env.step("!!!!!!")
    with pytest.raises(IndexError, match="index 6 is out of range for split 'train' with 6 examples"):
        env.reset(options={"index": 6})
    with pytest.raises(TaskError, match="has no split 'test'"):
        env.reset(options={"split": "test"})
    with pytest.raises(ValueError, match=r"unknown reset options \['prompt'\]"):
        env.reset(options={"prompt": "x"})


@pytest.mark.parametrize("bad, message", [
    (lambda p, c, r=None, **k: [1.0] * (len(c) + 1), r"reward 'bad' \(in my/Bad-v0\) returned 3 values for 2"),
    (lambda p, c, r=None, **k: [float("nan")] * len(c), r"reward 'bad' \(in my/Bad-v0\) returned a non-finite"),
])
def test_reward_errors_name_the_env(bad, message):
    bad.__name__ = "bad"
    textenv.register("my/Bad-v0", lambda: bang_task(bad))
    try:
        env = textenv.make("my/Bad-v0")
        examples = env.sample(2, np.random.default_rng(0))
        with pytest.raises(RewardError, match=message):
            env.score(examples, ["!", "!!"])
        env.reset(seed=0)
        with pytest.raises(RewardError, match=r"\(in my/Bad-v0\)"):
            env.step("!")
    finally:
        textenv.unregister("my/Bad-v0")


# ---- batched API ----------------------------------------------------------------------------------

def test_batched_api_one_reward_call_per_batch():
    reward = CountingReward()
    env = TextGenEnv(bang_task(reward))
    examples = env.sample(4, np.random.default_rng(0))
    assert len({ex.prompt for ex in examples}) == 4  # without replacement when possible
    group = [ex for ex in examples for _ in range(3)]  # G = 3 samples per prompt
    total, parts = env.score(group, ["!" * (i % 4) for i in range(12)])
    assert reward.calls == 1
    np.testing.assert_array_equal(total, [i % 4 for i in range(12)])
    np.testing.assert_array_equal(parts["CountingReward"], total)
    assert reward.columns["k"] == [ex.meta["k"] for ex in group]
    refs = env.reference_rewards(examples)
    np.testing.assert_array_equal(refs, [ex.reference.count("!") for ex in examples])
    assert len(env.sample(10, np.random.default_rng(0), split="eval")) == 10  # with replacement


def test_reference_rewards_is_zero_for_a_pairwise_judge_and_needs_references():
    judge = PairwiseJudge(lambda p, c, r: int(np.sign(len(c) - len(r))))
    env = TextGenEnv(bang_task(judge))
    examples = env.task.split("train")
    np.testing.assert_array_equal(env.reference_rewards(examples), np.zeros(6))
    with pytest.raises(TaskError, match="Bang-v0: example 1 has no reference"):
        env.reference_rewards([examples[0], Example("q")])
    with pytest.raises(RewardError, match="got 2 examples for 1 completions"):
        env.score(examples[:2], ["!"])


# ---- TextVectorEnv --------------------------------------------------------------------------------

def test_vector_env_serves_groups_with_one_reward_call_per_step():
    reward = CountingReward()
    venv = TextVectorEnv(TextGenEnv(bang_task(reward)), num_prompts=2, group_size=3)
    assert venv.num_envs == 6 and venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert venv.single_action_space == TextSpace(1024)
    assert venv.observation_space == gym.spaces.Tuple([venv.single_observation_space] * 6)
    obs, info = venv.reset(seed=0, options={"indices": [5, 1]})
    assert obs == ("say 5:",) * 3 + ("say 1:",) * 3
    np.testing.assert_array_equal(info["group"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(info["index"], [5, 5, 5, 1, 1, 1])
    assert info["_index"].all()
    obs2, rewards, terminated, truncated, info = venv.step(["", "!", "!!", "!!!", "", "!"])
    assert reward.calls == 1
    np.testing.assert_array_equal(rewards, [0, 1, 2, 3, 0, 1])
    assert terminated.all() and not truncated.any()
    assert list(info["final_obs"]) == ["say 5:", "say 5:!", "say 5:!!", "say 1:!!!", "say 1:", "say 1:!"]
    np.testing.assert_array_equal(info["final_info"]["reward_components"]["CountingReward"], rewards)
    np.testing.assert_array_equal(info["final_info"]["index"], [5, 5, 5, 1, 1, 1])
    assert len(obs2) == 6 and len(set(obs2[:3])) == 1 and len(set(obs2[3:])) == 1  # next batch, same grouping
    assert all(o == f"say {i}:" for o, i in zip(obs2, info["index"], strict=True))


def test_vector_env_errors():
    venv = TextVectorEnv(bang_task(), num_prompts=1, group_size=2)
    with pytest.raises(gym.error.ResetNeeded):
        venv.step(["a", "b"])
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="got 3 actions for 2 sub-envs"):
        venv.step(["a", "b", "c"])
    with pytest.raises(TypeError, match="action 1 is int"):
        venv.step(["a", 1])


def test_make_vec_through_gymnasium():
    venv = gym.make_vec("textenv/Arithmetic-v0", num_envs=8, group_size=4)
    assert isinstance(venv, TextVectorEnv) and (venv.num_prompts, venv.group_size) == (2, 4)
    obs, info = venv.reset(seed=1)
    assert len(set(obs[:4])) == 1 and len(set(obs[4:])) == 1
    _, rewards, *_ = venv.step([info["reference"][0]] * 4 + ["-1"] * 4)
    np.testing.assert_array_equal(rewards[:4], 1.0)
    assert (rewards[4:] < 1.0).all()
    assert textenv.make_vec("Sentiment-v0", num_prompts=3, group_size=2).num_envs == 6


# ---- TokenEnv -------------------------------------------------------------------------------------

def test_token_env_eos_terminates_and_scores_the_decoded_text():
    tok = byte_tokenizer()
    reward = CountingReward()
    env = TokenEnv(bang_task(reward), max_new_tokens=5)
    assert env.action_space == gym.spaces.Discrete(259)
    obs, info = env.reset(options={"index": 1})
    prompt_ids = [tok.bos_token_id, *tok("say 1:")["input_ids"]]
    assert obs["input_ids"][: len(prompt_ids)].tolist() == prompt_ids
    assert obs["attention_mask"].sum() == len(prompt_ids)
    for ch in "a!":
        obs, r, terminated, truncated, info = env.step(tok(ch)["input_ids"][0])
        assert (r, terminated, truncated, info) == (0.0, False, False, {})
    assert obs["attention_mask"].sum() == len(prompt_ids) + 2
    obs, r, terminated, truncated, info = env.step(tok.eos_token_id)
    assert (r, terminated, truncated, info["completion"]) == (1.0, True, False, "a!")
    assert reward.calls == 1


def test_token_env_length_cap_truncates_and_still_scores():
    tok = byte_tokenizer()
    env = TokenEnv(bang_task(), max_new_tokens=3)
    env.reset(seed=0)
    bang = tok("!")["input_ids"][0]
    results = [env.step(bang) for _ in range(3)]
    assert [(r[1], r[2], r[3]) for r in results] == [(0.0, False, False), (0.0, False, False), (3.0, False, True)]
    with pytest.raises(gym.error.ResetNeeded):
        env.step(bang)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="token id in \\[0, 259\\), got 'a'"):
        env.step("a")
    with pytest.raises(TypeError, match="got 300"):
        env.step(300)


# ---- registry -------------------------------------------------------------------------------------

def test_builtin_envs_are_listed_and_gymnasium_make_works():
    assert set(BUILTIN) | {"textenv/HH-v0"} <= set(textenv.list_envs())
    env = gym.make("textenv/Arithmetic-v0")
    assert type(env) is TextGenEnv and env.spec.id == "textenv/Arithmetic-v0"
    assert type(textenv.make("Arithmetic-v0")) is TextGenEnv  # the namespace may be left out
    token_env = gym.make("textenv/Arithmetic-v0", level="token", max_new_tokens=4)
    assert type(token_env) is TokenEnv and token_env.max_new_tokens == 4
    assert textenv.make_task("textenv/Arithmetic-v0", seed=1).name == "Arithmetic-v0"


def test_unknown_env_id_suggests_the_closest():
    with pytest.raises(textenv.EnvNotFound, match=r"unknown textenv environment 'textenv/Arithmetc-v0'; "
                                                  r"did you mean 'textenv/Arithmetic-v0'"):
        textenv.make("textenv/Arithmetc-v0")
    with pytest.raises(TaskError, match="did you mean 'textenv/Dialogue-v0'"):
        textenv.make_task("Dialog-v0")
    with pytest.raises(TaskError, match="level must be 'text' or 'token', got 'char'"):
        textenv.make("textenv/Arithmetic-v0", level="char")


def test_register_refuses_duplicates_and_bad_factories():
    textenv.register("my/Dup-v0", bang_task)
    try:
        textenv.register("my/Dup-v0", bang_task)  # the same registration again is a no-op
        with pytest.raises(TaskError, match="'my/Dup-v0' is already registered; pass override=True"):
            textenv.register("my/Dup-v0", lambda: bang_task())
        textenv.register("my/Dup-v0", bang_task(), override=True)  # a fixed Task works too
        assert textenv.make_task("my/Dup-v0").name == "Bang-v0"
        with pytest.raises(TaskError, match="already registered"):
            textenv.register("CartPole-v1", bang_task)  # a Gymnasium id is not overwritten silently
    finally:
        textenv.unregister("my/Dup-v0")
    assert "my/Dup-v0" not in textenv.list_envs() and "my/Dup-v0" not in gym.registry
    textenv.register("my/NotATask-v0", lambda: "nope")
    try:
        with pytest.raises(TaskError, match="returned str, expected textenv.Task"):
            textenv.make_task("my/NotATask-v0")
    finally:
        textenv.unregister("my/NotATask-v0")


def test_registered_defaults_and_prebuilt_task():
    textenv.register("my/Defaults-v0", bang_task, max_length=7)
    try:
        env = textenv.make("my/Defaults-v0")
        assert env.action_space.max_length == 7
        task = bang_task()
        assert textenv.make("my/Defaults-v0", task=task).task is task
    finally:
        textenv.unregister("my/Defaults-v0")


def test_plugins_register_envs_through_entry_points(tmp_path, monkeypatch):
    dist = tmp_path / "fake_textenv_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-textenv-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[textenv.envs]\nfake = fake_textenv_plugin:register_envs\n"
                                           "broken = fake_textenv_plugin:missing_function\n")
    (tmp_path / "fake_textenv_plugin.py").write_text(textwrap.dedent("""
        import textenv

        def echo_task():
            data = [textenv.Example("echo:", reference="echo")]
            return textenv.Task("Echo-v0", {"train": data}, reward=lambda p, c, r=None, **k: [1.0] * len(c))

        def register_envs():
            textenv.register("fake/Echo-v0", echo_task)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.warns(RuntimeWarning, match="plugin 'broken'.*failed to load"):
            assert "fake/Echo-v0" in textenv.list_envs()
        env = gym.make("fake/Echo-v0")
        env.reset(seed=0)
        assert env.step("anything")[1] == 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert textenv.load_plugins() == []  # each entry point loads once
    finally:
        textenv.unregister("fake/Echo-v0")
        sys.modules.pop("fake_textenv_plugin", None)


@pytest.mark.parametrize("level", ["text", "token"])
@pytest.mark.parametrize("env_id", BUILTIN)
def test_check_env_passes_on_builtin_envs(env_id, level):
    kwargs = FAST_BT if env_id == "textenv/Preference-v0" else {}
    env = gym.make(env_id, level=level, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any complaint of the checker fails the test
        check_env(env)


# ---- metrics --------------------------------------------------------------------------------------

def metric_task(reward, metrics=None) -> Task:
    examples = [Example("p1", reference="!", meta={"s": "a"}), Example("p2", reference="!!", meta={"s": "a"}),
                Example("p3", reference="", meta={"s": "b"}), Example("p4", reference="!", meta={"s": "b"})]
    return Task("Metric-v0", {"eval": examples}, reward=reward, metrics=metrics or {}, subset_key="s")


def test_evaluate_completions_absolute_reward_by_hand():
    nonempty = lambda p, c, r=None, **k: [float(len(x) > 0) for x in c]  # noqa: E731
    task = metric_task(lambda p, c, r=None, **k: [float(x.count("!")) for x in c], {"nonempty": nonempty})
    examples = task.split("eval")
    # R(o) = 2, 2, 0, 0 against R(y) = 1, 2, 0, 1: win, tie, tie, loss; base R = 1, 3, 0, 1
    out = evaluate_completions(task, examples, ["!!", "!!", "", ""], base_completions=["!", "!!!", "", "!"])
    expected = {"n": 4, "reward": 1.0, "ras": 0.25, "tie": 0.5, "nag": -0.25,
                # nonempty: o = 1, 1, 0, 0; y = 1, 1, 0, 1; base = 1, 1, 0, 1
                "nonempty": 0.5, "nonempty_ras": 0.0, "nonempty_tie": 0.75, "nonempty_nag": -0.25,
                "a/n": 2, "a/reward": 2.0, "a/ras": 0.5, "a/tie": 0.5, "a/nag": 0.0,
                "a/nonempty": 1.0, "a/nonempty_ras": 0.0, "a/nonempty_tie": 1.0, "a/nonempty_nag": 0.0,
                "b/n": 2, "b/reward": 0.0, "b/ras": 0.0, "b/tie": 0.5, "b/nag": -0.5,
                "b/nonempty": 0.0, "b/nonempty_ras": 0.0, "b/nonempty_tie": 0.5, "b/nonempty_nag": -0.5}
    assert out == pytest.approx(expected)


def test_evaluate_examples_per_prompt_records_by_hand():
    task = metric_task(lambda p, c, r=None, **k: [float(x.count("!")) for x in c])
    examples = task.split("eval")
    # same numbers as above: R(o) = 2, 2, 0, 0 vs R(y) = 1, 2, 0, 1 and base R = 1, 3, 0, 1
    metrics, records = evaluate_examples(task, examples, ["!!", "!!", "", ""], base_completions=["!", "!!!", "", "!"])
    assert metrics == evaluate_completions(task, examples, ["!!", "!!", "", ""], base_completions=["!", "!!!", "", "!"])
    assert [r["prompt"] for r in records] == ["p1", "p2", "p3", "p4"]
    assert [r["subset"] for r in records] == ["a", "a", "b", "b"]
    assert records[1] == {"prompt": "p2", "reference": "!!", "completion": "!!", "subset": "a", "reward": 2.0,
                          "ras": 0.0, "tie": 1.0, "nag": -1.0}
    assert [r["ras"] for r in records] == [1.0, 0.0, 0.0, 0.0] and [r["nag"] for r in records] == [1.0, -1.0, 0, -1.0]
    _, no_refs = evaluate_examples(task, [Example("q1")], ["!"])
    assert no_refs == [{"prompt": "q1", "reference": None, "completion": "!", "subset": None, "reward": 1.0}]


def test_evaluate_completions_pairwise_judge_by_hand():
    judge = PairwiseJudge(lambda p, c, r: int(np.sign(len(c) - len(r))), name="longer")
    env = TextGenEnv(metric_task(judge), split="eval")
    examples = env.task.split("eval")
    # R(o, y) with |y| = 1, 2, 0, 1: |o| = 3, 2, 1, 0 -> 1, 0, 1, -1
    # NAG judges o against the base directly: |base| = 1, 5, 1, 0 -> 1, -1, 0, 0
    out = env.evaluate(examples, ["!!!", "!!", "!", ""], base_completions=["!", "!!!!!", "!", ""])
    assert out["reward"] == pytest.approx(0.25)
    assert (out["ras"], out["tie"], out["nag"]) == pytest.approx((0.5, 0.25, 0.0))
    assert (out["a/ras"], out["a/tie"], out["b/ras"], out["b/nag"]) == pytest.approx((0.5, 0.5, 0.5, 0.0))
    assert "nag" not in env.evaluate(examples, ["", "", "", ""])


def test_evaluate_completions_errors_and_missing_references():
    task = metric_task(lambda p, c, r=None, **k: [0.0] * len(c))
    with pytest.raises(TaskError, match="got 1 completions and None base completions for 4 examples"):
        evaluate_completions(task, task.split("eval"), ["x"])
    no_refs = [Example("q1"), Example("q2")]
    out = evaluate_completions(task, no_refs, ["a", "b"])
    assert out == {"n": 2.0, "reward": 0.0}  # no RAS without references, no subset without the key


@pytest.mark.parametrize("level", ["text", "token"])
def test_check_env_passes_on_hh_from_a_local_file(level):
    fixture = Path(__file__).parent / "fixtures" / "hh_sample.jsonl"
    env = gym.make("textenv/HH-v0", level=level, path=str(fixture), reward="vader")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


def test_sample_can_require_references_or_pairs():
    task = Task("Mixed-v0", {"train": [Example("a", reference="x"), Example("b", chosen="y", rejected="z"),
                                       Example("c")]}, reward=lambda p, c, references=None: [0.0] * len(c))
    env = TextGenEnv(task)
    rng = np.random.default_rng(0)
    assert {ex.prompt for ex in env.sample(5, rng, require="reference")} == {"a"}
    assert {ex.prompt for ex in env.sample(5, rng, require="pair")} == {"b"}
    assert {ex.prompt for ex in env.sample(3, rng)} == {"a", "b", "c"}  # without replacement: each once
    with pytest.raises(ValueError, match=r"Mixed-v0: sample\(require='refs'\) must be None, 'reference' or 'pair'"):
        env.sample(1, rng, require="refs")


def test_unknown_task_argument_names_the_task_and_its_parameters():
    with pytest.raises(TaskError, match=r"textenv/Arithmetic-v0: bad task arguments \['n_evl'\].*takes: .*n_eval"):
        textenv.make("textenv/Arithmetic-v0", n_evl=3)


def test_an_option_of_the_other_level_is_an_error():
    with pytest.raises(TaskError, match=r"option\(s\) \['max_new_tokens'\] do not apply to level='text'"):
        textenv.make("textenv/Arithmetic-v0", max_new_tokens=6)
    assert isinstance(textenv.make("textenv/Arithmetic-v0", level="token", max_new_tokens=6), TokenEnv)
