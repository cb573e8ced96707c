"""The built-in multi-turn tasks: the oracle always wins, random and naive policies score well below it (the
numbers in each task's docstring), invalid actions are counted, truncation at max_turns, deterministic splits."""

import math

import numpy as np
import pytest

import textenv
from textenv import TaskError, format_tool_call
from textenv.multiturn import Episode
from textenv.tasks.nim import optimal_move


def play(env, policy, index, split="eval", seed=None):
    """One episode of ``policy(state, rng) -> message``; returns (episode_stats, last info, steps)."""
    seed = index if seed is None else seed
    env.reset(seed=seed, options={"split": split, "index": index})
    rng, steps = np.random.default_rng(seed), []
    while True:
        steps.append(env.step(policy(env.state, rng)))
        if steps[-1][2] or steps[-1][3]:
            return steps[-1][4]["episode_stats"], steps[-1][4], steps


def mean_return(env, policy, split="eval"):
    return float(np.mean([play(env, policy, i, split)[0]["return"] for i in range(len(env.task.split(split)))]))


def oracle(env):
    return lambda state, rng: env.task.oracle(state)


def text(state, rng):
    return "I am not sure."


# ---- GuessNumber ----------------------------------------------------------------------------------------

def test_guess_number_oracle_always_wins_within_the_bisection_bound():
    env = textenv.make("textenv/GuessNumber-v0")
    for split in ("train", "eval"):
        for i in range(0, len(env.task.split(split)), 1 if split == "eval" else 10):
            stats, info, _ = play(env, oracle(env), i, split)
            high = info["row"]["high"]
            assert stats["return"] == 1.0 and stats["invalid_actions"] == 0
            assert stats["turns"] <= math.floor(math.log2(high)) + 1


def test_guess_number_baselines_are_the_docstring_numbers():
    env = textenv.make("textenv/GuessNumber-v0")
    assert mean_return(env, oracle(env)) == 1.0
    rows = env.task.split("eval")
    # Ignoring the replies, each of the max_turns guesses hits with probability 1/n: 1 - (1 - 1/n)^turns per row.
    ignoring = sum(1 - (1 - 1 / (r["high"] - r["low"] + 1)) ** env.max_turns for r in rows) / len(rows)
    observed = mean_return(env, lambda s, r: str(int(r.integers(s.low, s.high + 1))))
    assert abs(observed - ignoring) < 3 * math.sqrt(ignoring * (1 - ignoring) / len(rows))
    inside = mean_return(env, lambda s, r: str(int(r.integers(s.lo, s.hi + 1))))
    assert observed < inside < 1.0  # following the replies helps, and only bisection always wins
    assert mean_return(env, text) == 0.0
    discounted = textenv.make("textenv/GuessNumber-v0", discount=0.9)
    assert mean_return(discounted, oracle(discounted)) == pytest.approx(0.6545, abs=1e-4)


def test_guess_number_replies_invalid_guesses_and_truncation():
    env = textenv.make("textenv/GuessNumber-v0")
    index = next(i for i, r in enumerate(env.task.split("eval")) if 5 < r["target"] < r["high"])
    _, info = env.reset(options={"split": "eval", "index": index})
    row = info["row"]
    assert row == {"low": 1, "high": row["high"], "target": row["target"]}
    replies = []
    for guess in ["0", "no number", str(row["high"] + 1), "1", str(row["high"])]:
        *_, info = env.step(f"My guess: {guess}")
        replies.append((info["env_messages"], info["invalid_action"]))
    wrong = {"role": "user", "content": f"Answer with one whole number from 1 to {row['high']}."}
    assert replies == [([wrong], True)] * 3 + [([{"role": "user", "content": "Higher."}], False),
                                               ([{"role": "user", "content": "Lower."}], False)]
    assert info["episode_stats"]["invalid_actions"] == 3 and env.state.lo == 2 and env.state.hi == row["high"] - 1
    for guess in "2345":
        assert env.step(guess)[1:4] == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(str(row["target"]))  # the 10th guess: right, not truncated
    assert (reward, terminated, truncated, info["turn"]) == (1.0, True, False, 10)
    stats, info, steps = play(textenv.make("textenv/GuessNumber-v0", max_turns=4), text, 0)
    assert [s[3] for s in steps] == [False, False, False, True] and stats["return"] == 0.0
    assert stats["invalid_actions"] == 4 and info["final_reward"] == 0.0


def test_guess_number_discount_and_splits():
    task = textenv.make_task("textenv/GuessNumber-v0", discount=0.5)
    env = textenv.make("textenv/GuessNumber-v0", task=task)
    stats, _, _ = play(env, oracle(env), 0)
    assert stats["return"] == 0.5 ** (stats["turns"] - 1)
    rows = lambda t, s: [tuple(r.values()) for r in t.split(s)]  # noqa: E731
    assert not set(rows(task, "train")) & set(rows(task, "eval"))
    assert rows(task, "eval") == rows(textenv.make_task("textenv/GuessNumber-v0"), "eval")
    assert rows(task, "eval") != rows(textenv.make_task("textenv/GuessNumber-v0", seed=1), "eval")
    with pytest.raises(TaskError, match="n_train=9000 \\+ n_eval=200 must be positive and at most the 5022 rows"):
        textenv.make_task("textenv/GuessNumber-v0", n_train=9000)
    with pytest.raises(TaskError, match=r"discount must be in \(0, 1\], got 0"):
        textenv.make_task("textenv/GuessNumber-v0", discount=0)


def test_guess_number_guesses_is_the_turn_limit():
    """``guesses`` sets the task's max_turns: a wrong guess each turn is truncated after exactly that many,
    and bisection wins every row of the small variant (h <= 15) within four."""
    from algos.tiny import GUESS_NUMBER_SMALL

    env = textenv.make("textenv/GuessNumber-v0", guesses=3)
    assert env.unwrapped.max_turns == 3
    env.reset(seed=0)
    steps = [env.step("1000") for _ in range(3)]  # out of range: invalid, the turn is spent
    assert [s[3] for s in steps] == [False, False, True] and not any(s[2] for s in steps)
    small = textenv.make("textenv/GuessNumber-v0", **GUESS_NUMBER_SMALL)
    for index in range(len(small.unwrapped.task.split("eval"))):
        small.reset(seed=0, options={"split": "eval", "index": index})
        done = False
        while not done:
            _, reward, terminated, truncated, _ = small.step(small.unwrapped.oracle())
            done = terminated or truncated
        assert terminated and reward == 1.0
    for bad in (0, 2.5, True):
        with pytest.raises(TaskError, match=f"guesses must be an integer >= 1, got {bad!r}"):
            textenv.make_task("textenv/GuessNumber-v0", guesses=bad)


# ---- KeyValue -------------------------------------------------------------------------------------------

def test_key_value_oracle_always_wins_in_hops_plus_one_turns():
    env = textenv.make("textenv/KeyValue-v0")
    for split in ("train", "eval"):
        for i in range(0, len(env.task.split(split)), 1 if split == "eval" else 5):
            stats, _, _ = play(env, oracle(env), i, split)
            assert stats["return"] == 1.0 and (stats["invalid_actions"], stats["tool_errors"]) == (0, 0)
            assert stats["turns"] == stats["tool_calls"] == len(env.state.chain) + 1
            assert 2 <= len(env.state.chain) <= 4


def test_key_value_baselines_are_the_docstring_numbers():
    env = textenv.make("textenv/KeyValue-v0")

    def random_value(state, rng):
        values = [v for v in state.store.values() if isinstance(v, int)]
        return format_tool_call("submit", {"value": int(rng.choice(values))})

    assert mean_return(env, oracle(env)) == 1.0
    rows = env.task.split("eval")
    # A random stored value is right with probability 1 / (the row's number of values), whatever the draws.
    expected = sum(1 / sum(isinstance(v, int) for v in r["store"].values()) for r in rows) / len(rows)
    observed = mean_return(env, random_value)
    assert abs(observed - expected) < 3 * math.sqrt(expected * (1 - expected) / len(rows))
    assert mean_return(env, text) == 0.0


def test_key_value_invalid_turns_tool_errors_and_truncation():
    env = textenv.make("textenv/KeyValue-v0")
    env.reset(seed=0, options={"index": 0})
    *_, info = env.step("The answer is 42.")
    assert info["env_messages"] == [{"role": "user", "content": "Call get(key) with the key you have, or "
                                                                "submit(value) with the number you found."}]
    assert (info["invalid_action"], info["tool_calls"]) == (True, 0)
    *_, info = env.step(format_tool_call("get", {"key": "nokey"}))
    assert info["env_messages"] == [{"role": "tool", "name": "get",
                                     "content": "Error: get raised LookupError: no key 'nokey' in the store"}]
    assert (info["invalid_action"], info["tool_errors"]) == (True, 1)
    *_, info = env.step(format_tool_call("submit", {"value": "12"}))  # a string is not the schema's integer
    assert info["env_messages"][0]["content"] == \
        "Error: bad arguments for submit: argument 'value' must be integer, got \"12\""
    answer = env.state.answer
    _, reward, terminated, truncated, info = env.step(format_tool_call("submit", {"value": answer + 1}) +
                                                      format_tool_call("submit", {"value": answer}))
    assert (reward, terminated, truncated) == (0.0, True, False)  # the first submission counts
    assert info["env_messages"][1]["content"] == "Error: submit raised RuntimeError: a value was submitted already"
    assert info["episode_stats"] == {"return": 0.0, "turns": 4, "invalid_actions": 4, "tool_calls": 4,
                                     "tool_errors": 3}
    stats, info, steps = play(env, text, 1)
    assert len(steps) == env.max_turns == 7 and steps[-1][3] is True and stats["return"] == 0.0


def test_key_value_splits_are_deterministic_and_chains_are_unique():
    a, b = textenv.make_task("textenv/KeyValue-v0"), textenv.make_task("textenv/KeyValue-v0")
    assert a.splits == b.splits and a.splits != textenv.make_task("textenv/KeyValue-v0", seed=1).splits
    task = textenv.make_task("textenv/KeyValue-v0", min_hops=3, max_hops=3, n_chains=4, n_train=20, n_eval=5)
    for row in task.split("train"):
        assert len(row["store"]) == 12 and sum(isinstance(v, int) for v in row["store"].values()) == 4
    assert task.max_turns == 6
    with pytest.raises(TaskError, match="need 1 <= min_hops <= max_hops"):
        textenv.make_task("textenv/KeyValue-v0", min_hops=3, max_hops=2)


def test_key_value_keys_have_the_syllables_asked_for():
    two, one = (textenv.make_task("textenv/KeyValue-v0", n_train=30, n_eval=5, syllables=n) for n in (2, 1))
    keys = {n: [k for row in task.split("train") for k in row["store"]] for n, task in ((2, two), (1, one))}
    assert {len(k) for k in keys[2]} == {4} and {len(k) for k in keys[1]} == {2}  # consonant + vowel each
    assert all(k[0] in "BDFGKLMNPRSTVZ" and k[1] in "AEIOU" for k in keys[1])
    assert two.splits == textenv.make_task("textenv/KeyValue-v0", n_train=30, n_eval=5).splits  # 2 is the default
    for bad in (0, 1.5, True):
        with pytest.raises(TaskError, match=r"syllables \(per key\) must be an integer >= 1"):
            textenv.make_task("textenv/KeyValue-v0", syllables=bad)
    with pytest.raises(TaskError, match=r"70 keys of 1 syllable\(s\) cannot name 20 chains of up to 4 keys"):
        textenv.make_task("textenv/KeyValue-v0", syllables=1, n_chains=20)


def test_key_value_numbers_have_the_digits_asked_for():
    def values(task):
        return [v for row in task.split("train") for v in row["store"].values() if isinstance(v, int)]

    four = values(textenv.make_task("textenv/KeyValue-v0", n_train=30, n_eval=5))
    one = values(textenv.make_task("textenv/KeyValue-v0", n_train=30, n_eval=5, value_digits=1, n_chains=9))
    assert all(1000 <= v <= 9999 for v in four) and sorted(set(one)) == list(range(1, 10))
    for bad in (0, 2.0, True):
        with pytest.raises(TaskError, match=r"value_digits must be an integer >= 1"):
            textenv.make_task("textenv/KeyValue-v0", value_digits=bad)
    with pytest.raises(TaskError, match=r"9 one-digit values cannot end 10 chains"):
        textenv.make_task("textenv/KeyValue-v0", value_digits=1, n_chains=10, syllables=1, max_hops=2)


# ---- Nim ------------------------------------------------------------------------------------------------

def random_move(state, rng):
    heaps = [i for i, h in enumerate(state.heaps) if h]
    i = int(rng.choice(heaps))
    return f"take {int(rng.integers(1, state.heaps[i] + 1))} from heap {i + 1}"


def test_nim_oracle_wins_from_every_start_and_random_play_rarely_does():
    env = textenv.make("textenv/Nim-v0")
    assert len(env.task.split("train")) + len(env.task.split("eval")) == 301 == 7 ** 3 - 42
    for split in ("train", "eval"):
        assert mean_return(env, oracle(env), split) == 1.0
    wins = sum(play(env, random_move, i, s)[0]["return"] for s in ("train", "eval")
               for i in range(len(env.task.split(s))))
    assert wins / 301 < 0.1  # random legal moves against the optimal opponent rarely win (the docstring: 8 of 301)
    assert mean_return(env, text) == 0.0


def test_nim_opponent_is_optimal():
    assert optimal_move([3, 4, 5]) == (0, 2)  # 1 ^ 4 ^ 5 = 0
    for heaps in ([1, 2, 3], [4, 4], [0, 5, 5]):  # a zero nim-sum: no winning move, take one from the largest
        i, k = optimal_move(heaps)
        assert k == 1 and heaps[i] == max(heaps)
    env = textenv.make("textenv/Nim-v0")
    env.reset(options={"index": 0})
    heaps = list(env.state.heaps)
    i, k = optimal_move(heaps)
    *_, info = env.step(f"take {k} from heap {i + 1}")
    assert np.bitwise_xor.reduce(env.state.heaps) != 0 or not any(env.state.heaps)  # it answered a zero nim-sum
    assert info["env_messages"][0]["content"].startswith("I take 1 from heap ")


@pytest.mark.parametrize("move, why", [
    ("pass", 'no move "take N from heap H" found'),
    ("take 0 from heap 1", "you cannot take 0 from heap 1"),
    ("take 1 from heap 4", "you cannot take 1 from heap 4"),
    ("take 9 from heap 2", "you cannot take 9 from heap 2"),
])
def test_nim_an_invalid_move_ends_the_episode_with_the_lowest_reward(move, why):
    env = textenv.make("textenv/Nim-v0")
    env.reset(options={"index": 0})
    for _ in range(2):  # two optimal moves first: a won position earns nothing once the move is invalid
        env.step(env.oracle())
    obs, reward, terminated, truncated, info = env.step(move)
    assert (reward, terminated, truncated, info["invalid_action"]) == (0.0, True, False, True)
    assert info["env_messages"] == [{"role": "user", "content": f"Illegal move: {why}. You lose."}]
    assert info["episode_stats"]["return"] == 0.0 and info["episode_stats"]["invalid_actions"] == 1


def test_nim_losing_and_truncation():
    task = textenv.make_task("textenv/Nim-v0")
    episode = Episode(task, {"heaps": [1, 2]}, np.random.default_rng(0))
    facts = episode.step("take 1 from heap 1")  # leaves [0, 2]: the opponent takes both
    assert facts["env_messages"] == [{"role": "user", "content": "I take 2 from heap 2, the last stone. I win."}]
    assert (episode.terminated, facts["final_reward"], facts["invalid_action"]) == (True, 0.0, False)
    stats, _, steps = play(textenv.make("textenv/Nim-v0", max_turns=1), random_move, 0)
    assert [s[2:4] for s in steps] == [(False, True)]
    assert stats == {"return": 0.0, "turns": 1, "invalid_actions": 0, "tool_calls": 0, "tool_errors": 0}


def test_nim_splits_are_disjoint_and_deterministic():
    task = textenv.make_task("textenv/Nim-v0")
    train = {tuple(r["heaps"]) for r in task.split("train")}
    evals = {tuple(r["heaps"]) for r in task.split("eval")}
    assert not train & evals and len(evals) == 60
    assert task.splits == textenv.make_task("textenv/Nim-v0").splits
    assert textenv.make_task("textenv/Nim-v0", n_heaps=2, max_heap=3).max_turns == 3


# ---- demonstrations -------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_id", ["textenv/GuessNumber-v0", "textenv/KeyValue-v0", "textenv/Nim-v0"])
def test_demonstrations_are_optimal_conversations(env_id):
    task = textenv.make_task(env_id)
    demo = task.demonstration("eval", 2)
    assert demo[0]["role"] == "user" and demo[-1]["role"] in ("assistant", "tool")
    assert demo == task.demonstration("eval", 2)  # deterministic
    assistant = [m for m in demo if m["role"] == "assistant"]
    assert (len(assistant) > 1) and all(m["content"] or m.get("tool_calls") for m in assistant)
    if env_id.endswith("KeyValue-v0"):
        assert assistant[-1]["tool_calls"][0]["function"]["name"] == "submit"
