"""MultiTurnEnv: the Gymnasium contract on every built-in multi-turn env, registry and make, how the reward
is composed, termination and truncation, the info deltas a rollout reads, determinism, and the user snippet."""

import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import textenv
from rewards.tiny import byte_tokenizer
from textenv import MultiTurnEnv, MultiTurnTask, Reply, TaskError, format_tool_call, make_group
from textenv.multiturn import check_multiturn_task, render_conversation
from textenv.tasks import MULTITURN

README = Path(__file__).resolve().parent.parent / "README.md"


class Counter(MultiTurnTask):
    """Turn reward 0.1 per "!" in the message; "stop" ends it with final reward 1, running out gives -1."""

    name, max_turns = "Counter-v0", 3
    splits = {"train": [{"start": 0}, {"start": 10}, {"start": 20}], "eval": [{"start": 99}]}

    def reset(self, row, rng):
        return [{"role": "user", "content": f"count from {row['start']}"}], {"n": row["start"], "stopped": False}

    def respond(self, state, message):
        state["n"] += 1
        state["stopped"] = message["content"] == "stop"
        return Reply([{"role": "user", "content": str(state["n"])}] if not state["stopped"] else [],
                     reward=0.1 * message["content"].count("!"), done=state["stopped"],
                     invalid=message["content"] == "")

    def final_reward(self, state):
        return 1.0 if state["stopped"] else -1.0

    def oracle(self, state):
        return "stop"


# ---- the snippet ----------------------------------------------------------------------------------------

def test_the_user_snippet_runs_as_written():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "MultiTurnTask" in b]
    assert len(blocks) == 1
    code = blocks[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 35
    try:
        namespace = {}
        exec(compile(code, "README.md multi-turn block", "exec"), namespace)
        env = namespace["env"]
        assert type(env) is MultiTurnEnv and env.tools[0]["function"]["name"] == "unlock"
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(format_tool_call("unlock", {"code": "0000"}))
        assert (reward, terminated, truncated, info["env_messages"][0]["content"]) == (0.0, False, False, "wrong code")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(gym.make("my/Vault-v0"))
    finally:
        textenv.unregister("my/Vault-v0")


# ---- Gymnasium contract and registry ------------------------------------------------------------------

@pytest.mark.parametrize("env_id", sorted(MULTITURN))
def test_check_env_passes_on_builtin_multiturn_envs(env_id):
    env = gym.make(env_id)
    assert type(env) is MultiTurnEnv and env.spec.id == env_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any complaint of the checker fails the test
        check_env(env)


def test_multiturn_envs_are_listed_made_and_built_like_the_others():
    assert set(MULTITURN) <= set(textenv.list_envs())
    env = textenv.make("Nim-v0", max_turns=4, max_length=50)  # the namespace may be left out
    assert (env.max_turns, env.action_space.max_length, env.task.max_turns) == (4, 50, 11)
    task = textenv.make_task("textenv/KeyValue-v0", n_train=5, n_eval=2)
    assert isinstance(task, MultiTurnTask) and len(task.splits["train"]) == 5
    assert textenv.make("textenv/KeyValue-v0", task=task).task is task
    with pytest.raises(TaskError, match="a multi-turn task has only the text level, got level='token'"):
        textenv.make("textenv/Nim-v0", level="token")
    with pytest.raises(TaskError, match=r"option\(s\) \['max_new_tokens'\] do not apply to a multi-turn env"):
        textenv.make("textenv/Nim-v0", max_new_tokens=3)
    with pytest.raises(TaskError, match=r"option\(s\) \['max_turns'\] do not apply to level='text'"):
        textenv.make("textenv/Arithmetic-v0", max_turns=3)
    with pytest.raises(TaskError, match=r"textenv/Nim-v0: bad task arguments \['heaps'\]"):
        textenv.make("textenv/Nim-v0", heaps=3)
    with pytest.raises(TaskError, match="is a multi-turn env, which has no vector form; textenv.multiturn.make_group"):
        textenv.make_vec("textenv/Nim-v0", num_prompts=2)


def test_register_a_task_class_or_instance():
    textenv.register("my/Counter-v0", Counter)
    try:
        textenv.register("my/Counter-v0", Counter)  # the same registration again is a no-op
        env = gym.make("my/Counter-v0", max_turns=2)
        assert type(env) is MultiTurnEnv and env.max_turns == 2 and env.tools == []
        textenv.register("my/Counter-v0", Counter(), override=True)
        assert isinstance(textenv.make_task("my/Counter-v0"), Counter)
    finally:
        textenv.unregister("my/Counter-v0")
    textenv.register("my/Nothing-v0", lambda: 42)
    try:
        with pytest.raises(TaskError, match="returned int, expected textenv.Task or textenv.MultiTurnTask"):
            textenv.make("my/Nothing-v0")
    finally:
        textenv.unregister("my/Nothing-v0")


def test_a_bad_task_class_is_a_task_error_naming_what_is_wrong():
    class NoName(Counter):
        name = ""

    class NoRespond(MultiTurnTask):
        name, splits = "NoRespond-v0", {"train": [1]}

        def reset(self, row, rng):
            return [{"role": "user", "content": "hi"}], None

    class ZeroTurns(Counter):
        max_turns = 0

    class EmptySplit(Counter):
        splits = {"train": []}

    def untyped(x):
        """Nothing.

        Args:
            x: A thing.
        """

    class BadTool(Counter):
        tools = [untyped]

    with pytest.raises(TaskError, match=r"needs a textenv.MultiTurnTask, got Reply"):
        check_multiturn_task(Reply())
    with pytest.raises(TaskError, match=r"MultiTurnEnv needs a task instance, got the class Counter; pass Counter\(\)"):
        MultiTurnEnv(Counter)
    with pytest.raises(TaskError, match=r"task NoName: set the class attribute name"):
        MultiTurnEnv(NoName())
    with pytest.raises(TaskError, match=r"task 'NoRespond-v0' does not define respond\(\)"):
        MultiTurnEnv(NoRespond())
    with pytest.raises(TaskError, match=r"task 'Counter-v0': max_turns must be an integer >= 1, got 0"):
        MultiTurnEnv(ZeroTurns())
    with pytest.raises(TaskError, match=r"task 'Counter-v0': split 'train' must be a non-empty list of rows"):
        MultiTurnEnv(EmptySplit())
    with pytest.raises(TaskError, match=r"task 'Counter-v0': tool '.*untyped': cannot derive its JSON schema "
                                        r"\(Argument x is missing a type hint in function untyped\)"):
        MultiTurnEnv(BadTool())
    with pytest.raises(TaskError, match="has no split 'test'; splits: \\['eval', 'train'\\]"):
        MultiTurnEnv(Counter(), split="test")


def test_task_mistakes_at_run_time_name_the_task():
    class NotAReply(Counter):
        def respond(self, state, message):
            return 1.0

    class BadMessage(Counter):
        def reset(self, row, rng):
            return [{"role": "robot", "content": "hi"}], {}

    env = MultiTurnEnv(NotAReply())
    env.reset(seed=0)
    with pytest.raises(TaskError, match=r"task 'Counter-v0': respond\(\) returned float, expected textenv.Reply"):
        env.step("x")
    with pytest.raises(TaskError, match=r"task 'Counter-v0': reset\(\) messages: message 0 has unknown role 'robot'"):
        MultiTurnEnv(BadMessage()).reset(seed=0)


# ---- reward, termination, truncation, info ------------------------------------------------------------

def test_reward_is_turn_reward_plus_final_reward_on_the_last_step():
    env = MultiTurnEnv(Counter())
    obs, info = env.reset(options={"index": 1})
    assert obs == "user: count from 10" and info["messages"] == [{"role": "user", "content": "count from 10"}]
    assert (info["split"], info["index"], info["row"]) == ("train", 1, {"start": 10})
    assert info["episode_stats"] == {"return": 0.0, "turns": 0, "invalid_actions": 0, "tool_calls": 0,
                                     "tool_errors": 0}
    obs, reward, terminated, truncated, info = env.step("go!!")
    assert (reward, terminated, truncated) == (pytest.approx(0.2), False, False)
    assert (info["turn_reward"], info["final_reward"], info["turn"], info["invalid_action"]) == \
        (pytest.approx(0.2), 0.0, 1, False)
    assert obs == "user: count from 10\nassistant: go!!\nuser: 11"
    obs, reward, terminated, truncated, info = env.step("stop")
    assert (reward, terminated, truncated, info["final_reward"]) == (1.0, True, False, 1.0)
    assert info["env_messages"] == [] and info["messages"][-1] == {"role": "assistant", "content": "stop"}
    assert info["episode_stats"]["return"] == pytest.approx(1.2)
    with pytest.raises(gym.error.ResetNeeded, match="the episode has ended"):
        env.step("more")


def test_truncation_at_max_turns_gives_the_final_reward_once():
    env = MultiTurnEnv(Counter(), max_turns=2)
    env.reset(seed=0)
    steps = [env.step(a) for a in ("!", "")]
    assert [s[1:4] for s in steps] == [(pytest.approx(0.1), False, False), (-1.0, False, True)]
    assert [s[4]["final_reward"] for s in steps] == [0.0, -1.0]
    assert steps[1][4]["episode_stats"] == {"return": pytest.approx(-0.9), "turns": 2, "invalid_actions": 1,
                                            "tool_calls": 0, "tool_errors": 0}
    assert [s[4]["invalid_action"] for s in steps] == [False, True]


def test_info_messages_grow_by_the_assistant_message_and_exactly_env_messages():
    env = textenv.make("textenv/KeyValue-v0")
    _, info = env.reset(seed=5)
    before = info["messages"]
    action = "Looking. " + env.oracle() + '<tool_call>{"name": "get", "arguments": {"key": "zz"}}</tool_call>'
    _, _, _, _, info = env.step(action)
    assert info["messages"] == before + [info["assistant"]] + info["env_messages"]
    assert info["assistant"]["content"] == "Looking." and len(info["assistant"]["tool_calls"]) == 2
    assert [m["role"] for m in info["env_messages"]] == ["tool", "tool"]
    assert info["env_messages"][1]["content"] == "Error: get raised LookupError: no key 'zz' in the store"
    assert (info["tool_calls"], info["tool_errors"], info["invalid_action"]) == (2, 1, True)
    info["messages"].append("mutated")  # infos are copies
    assert env.messages == before + [info["assistant"]] + info["env_messages"]


def test_step_errors_are_clear():
    env = MultiTurnEnv(Counter(), max_length=5)
    with pytest.raises(gym.error.ResetNeeded, match="no episode yet"):
        env.step("hi")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="the action must be the assistant message as a str, got int"):
        env.step(3)
    with pytest.raises(ValueError, match="the message has 6 characters, more than max_length=5"):
        env.step("x" * 6)
    with pytest.raises(ValueError, match=r"unknown reset options \['seed'\]"):
        env.reset(options={"seed": 1})
    with pytest.raises(IndexError, match="index 3 is out of range for split 'train' with 3 rows"):
        env.reset(options={"index": 3})


def test_an_observation_longer_than_its_space_truncates_the_episode():
    env = MultiTurnEnv(Counter(), max_observation_length=40)
    obs, _ = env.reset(options={"index": 0})
    obs, reward, terminated, truncated, info = env.step("a fairly long message")
    assert (terminated, truncated, reward, info["final_reward"]) == (False, True, -1.0, -1.0)
    assert len(obs) == 40 and obs in env.observation_space and obs.endswith("user: 1")
    with pytest.raises(TaskError, match="the first messages render to more than max_observation_length=5"):
        MultiTurnEnv(Counter(), max_observation_length=5).reset(seed=0)


# ---- determinism and groups ----------------------------------------------------------------------------

def play(env, seed, actions):
    out = [env.reset(seed=seed)]
    out += [env.step(a) for a in actions]
    return out


def test_same_seed_same_episode_and_seeds_cover_the_split():
    a, b = textenv.make("textenv/GuessNumber-v0"), textenv.make("textenv/GuessNumber-v0")
    actions = ["50", "25", "nope"]
    assert play(a, 7, actions) == play(b, 7, actions)
    rows = {textenv.make("textenv/Nim-v0").reset(seed=s)[1]["index"] for s in range(40)}
    assert len(rows) > 30  # seeds draw different rows


def test_make_group_gives_envs_one_seed_starts_alike():
    envs = make_group("textenv/Nim-v0", 4, max_turns=6)
    assert len(envs) == 4 and len({id(e.task) for e in envs}) == 1 and envs[0].max_turns == 6
    starts = [e.reset(seed=11) for e in envs]
    assert all(s == starts[0] for s in starts)
    results = [e.step(m) for e, m in zip(envs, ["take 1 from heap 1", envs[1].oracle(), "pass", "take 1 from heap 1"],
                                        strict=True)]
    assert results[0] == results[3] and results[1][1] == 0.0 and results[2][2] is True
    assert envs[0].state is not envs[3].state  # each env has its own episode
    with pytest.raises(TaskError, match="is a single-turn task; use textenv.make_vec"):
        make_group("textenv/Arithmetic-v0", 2)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1, got 0"):
        make_group("textenv/Nim-v0", 0)


# ---- rendering, oracle and demonstrations -------------------------------------------------------------

TEMPLATE = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{{ '\\n' }}{% endif %}"
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
            "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]"
            "{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def test_a_tokenizer_renders_the_observation_with_its_template_and_the_tools():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = TEMPLATE
    env = textenv.make("textenv/KeyValue-v0", tokenizer=tokenizer)
    obs, info = env.reset(seed=0)
    key = env.state.chain[0]
    assert obs == f"TOOLS:get;submit;\n<user>{info['messages'][0]['content']}\n"
    obs, *_ = env.step(env.oracle())
    assert obs.endswith(f'<assistant>[call get {{"key": "{key}"}}]\n<tool>{env.state.chain[1]}\n')
    assert env.render_conversation(env.messages, add_generation_prompt=True).endswith("\n<assistant>")


def test_the_plain_rendering_lists_tools_and_writes_calls_back_in_hermes_format():
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ok",
                 "tool_calls": [{"type": "function", "function": {"name": "get", "arguments": {"key": "a"}}}]},
                {"role": "tool", "name": "get", "content": "b"}]
    tools = [{"type": "function", "function": {"name": "get"}}]
    assert render_conversation(messages, tools) == (
        'tools: [{"type": "function", "function": {"name": "get"}}]\nuser: hi\n'
        'assistant: ok\n<tool_call>\n{"name": "get", "arguments": {"key": "a"}}\n</tool_call>\ntool: b')
    assert render_conversation(messages[:1], add_generation_prompt=True) == "user: hi\nassistant:"


def test_demonstration_is_the_oracle_playing_through_the_env():
    task = textenv.make_task("textenv/KeyValue-v0")
    env = MultiTurnEnv(task)
    env.reset(seed=0, options={"index": 3})
    while True:
        *_, terminated, truncated, info = env.step(env.oracle())
        if terminated or truncated:
            break
    assert task.demonstration("train", 3) == info["messages"] and info["final_reward"] == 1.0
    corpus = task.corpus("eval")
    assert len(corpus) == len(task.demonstrations("eval")) == 200
    assert corpus[0].startswith('tools: [{"type": "function", "function": {"name": "get"')
    assert "</tool_call>" in corpus[0]
    with pytest.raises(NotImplementedError, match="task 'Counter-v0' has no oracle"):
        MultiTurnTask.oracle(Counter(), None)


def test_oracle_and_state_need_an_episode():
    env = MultiTurnEnv(Counter())
    with pytest.raises(gym.error.ResetNeeded):
        env.oracle()
    with pytest.raises(gym.error.ResetNeeded):
        _ = env.state
    assert env.messages == [] and np.isclose(env.reset(seed=0)[1]["episode_stats"]["return"], 0.0)
