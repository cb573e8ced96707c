"""Conversational data (TRL's message format): examples, loaders, environments, and keyword-called rewards."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import textenv
from rewards import RewardError
from textenv import (
    Example,
    Task,
    TaskError,
    TextGenEnv,
    TextVectorEnv,
    TokenEnv,
    is_conversational,
    load_hf,
    load_hh,
    load_jsonl,
    message_text,
    render_messages,
)

FIXTURE = Path(__file__).parent / "fixtures" / "hh_sample.jsonl"
SYSTEM = {"role": "system", "content": "Answer with a number."}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# TRL's documented reward-function examples; with conversational prompts TRL hands them each completion as
# [{"role": "assistant", "content": ...}], and so do we (rewards.calling).
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion[0]["content"])) for completion in completions]


def acc(completions, solution, **kwargs):
    return [1.0 if c[0]["content"].strip() == s else 0.0 for c, s in zip(completions, solution, strict=True)]


def sums_task(reward=acc) -> Task:
    data = [Example([SYSTEM, user(f"{i}+{i}?")], reference=[assistant(str(2 * i))], meta={"solution": str(2 * i)})
            for i in range(5)]
    return Task("Sums-v0", {"train": data[:4], "eval": data[4:]}, reward=reward)


# ---- Example and the helpers ----------------------------------------------------------------------

def test_example_accepts_messages_and_copies_them():
    prompt = [SYSTEM, user("1+1?")]
    ex = Example(prompt, reference=[assistant("2")], chosen="2", rejected=[assistant("3"), assistant("4")])
    prompt[1]["content"] = "changed"
    assert ex.prompt == [SYSTEM, user("1+1?")]
    assert is_conversational(ex) and is_conversational(ex.prompt) and not is_conversational("1+1?")
    assert (message_text(ex.reference), message_text(ex.chosen), message_text(ex.rejected)) == ("2", "2", "3\n4")
    assert render_messages(ex.prompt) == "system: Answer with a number.\nuser: 1+1?"
    assert render_messages(ex.prompt, add_generation_prompt=True).endswith("user: 1+1?\nassistant:")


@pytest.mark.parametrize(("field", "value", "error"), [
    ("prompt", [], "Example.prompt: expected a non-empty list of messages"),
    ("prompt", [{"content": "hi"}], "Example.prompt: message 0 has no 'role'"),
    ("prompt", [user("hi"), {"role": "user"}], "Example.prompt: message 1 has no 'content'"),
    ("prompt", [{"role": "human", "content": "hi"}], "message 0 has unknown role 'human'; roles: system, user"),
    ("prompt", [{"role": "user", "content": ["hi"]}], r"message 0 \(user\) has list content, expected str"),
    ("prompt", ["hi"], "message 0 is str, expected a dict"),
    ("prompt", None, "Example.prompt is NoneType, expected str or a list of messages"),
    ("reference", [user("2")], "Example.reference: message 0 has role 'user'; an answer holds assistant messages"),
    ("chosen", {"role": "assistant", "content": "2"}, "Example.chosen is dict"),
])
def test_example_rejects_malformed_messages(field, value, error):
    kwargs = {"prompt": "1+1?", field: value}
    with pytest.raises(TaskError, match=error):
        Example(**kwargs)


def test_message_text_needs_an_assistant_message():
    assert message_text("plain") == "plain"
    with pytest.raises(TaskError, match="no assistant message"):
        message_text([user("hi")])


# ---- environments -----------------------------------------------------------------------------------

def test_text_env_renders_messages_and_carries_them_in_info():
    env = TextGenEnv(sums_task())
    obs, info = env.reset(options={"index": 2})
    assert obs == "system: Answer with a number.\nuser: 2+2?"
    assert info["prompt"] == [SYSTEM, user("2+2?")] and info["reference"] == [assistant("4")]
    info["prompt"][1]["content"] = "mutated"            # info is a copy
    obs, reward, terminated, _, info = env.step("4")
    assert obs == "system: Answer with a number.\nuser: 2+2?\nassistant: 4"
    assert (reward, terminated, info["prompt"][1]["content"]) == (1.0, True, "2+2?")
    assert env.observation_space.contains(obs)
    check_env(env)


def test_token_env_renders_messages_without_a_chat_template():
    env = TokenEnv(sums_task(), max_new_tokens=4, render_mode="ansi")
    _, info = env.reset(options={"index": 1})
    assert env.render() == "system: Answer with a number.\nuser: 1+1?\nassistant:"
    assert info["prompt"] == [SYSTEM, user("1+1?")]
    check_env(env)


def test_token_env_applies_the_tokenizers_chat_template(tmp_path):
    from transformers import AutoTokenizer

    from algos.tiny_chat import build_tiny_chat_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_chat_model(tmp_path))
    env = TokenEnv(sums_task(), tokenizer, max_new_tokens=4)
    obs, _ = env.reset(options={"index": 3})
    ids = obs["input_ids"][obs["attention_mask"] == 1].tolist()
    assert tokenizer.decode(ids) == ("<|im_start|>system\nAnswer with a number.<|im_end|>\n"
                                     "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n")
    check_env(env)


def test_vector_env_with_messages():
    venv = TextVectorEnv(TextGenEnv(sums_task()), num_prompts=2, group_size=2)
    obs, info = venv.reset(seed=0, options={"indices": [1, 3]})
    one, three = "system: Answer with a number.\nuser: 1+1?", "system: Answer with a number.\nuser: 3+3?"
    assert obs == (one, one, three, three)
    assert info["prompt"].shape == (4,) and info["prompt"][2] == [SYSTEM, user("3+3?")]
    assert info["reference"][0] == [assistant("2")]
    _, rewards, *_, info = venv.step(["2", "3", "6", " 6 "])
    np.testing.assert_array_equal(rewards, [1.0, 0.0, 1.0, 1.0])
    assert info["final_obs"][1].endswith("user: 1+1?\nassistant: 3")


# ---- rewards called by keyword, as TRL calls them -----------------------------------------------------

def test_trl_reward_examples_work_through_step_and_score():
    env = TextGenEnv(sums_task(reward_len))
    env.reset(options={"index": 0})
    assert env.step("x" * 15)[1] == -5.0
    examples = env.task.split("train")
    total, parts = env.score(examples, ["0", "2", "5", "6"])
    np.testing.assert_array_equal(total, [-19.0, -19.0, -19.0, -19.0])
    assert list(parts) == ["reward_len"]

    env = TextGenEnv(sums_task(acc))
    env.reset(options={"index": 3})
    assert env.step("6")[1] == 1.0
    total, _ = env.score(examples, ["0", "3", "4", "7"])
    np.testing.assert_array_equal(total, [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(env.reference_rewards(examples), [1.0, 1.0, 1.0, 1.0])   # references as text
    metrics = textenv.evaluate_completions(env, examples, ["0", "3", "4", "7"])
    assert (metrics["reward"], metrics["tie"], metrics["ras"]) == (0.5, 0.5, 0.0)


def test_rewards_get_prompts_as_given_and_references_as_text():
    seen = {}

    def spy(prompts, completions, references, solution):
        seen.update(prompts=prompts, completions=completions, references=references, solution=solution)
        return [0.0] * len(completions)

    env = TextGenEnv(sums_task(spy))
    env.score(env.task.split("train")[:2], ["a", "b"])
    assert seen == {"prompts": [[SYSTEM, user("0+0?")], [SYSTEM, user("1+1?")]], "completions": ["a", "b"],
                    "references": ["0", "2"], "solution": ["0", "2"]}


def test_keyword_reward_only_gets_what_it_names():
    got = []

    def only_completions(completions):
        got.append(completions)
        return [1.0] * len(completions)

    env = TextGenEnv(sums_task(only_completions))
    assert env.score(env.task.split("train")[:1], ["a"])[0].tolist() == [1.0]
    assert got == [[[{"role": "assistant", "content": "a"}]]]   # a conversational prompt: TRL's form


def test_keyword_reward_naming_a_missing_column_is_a_clear_error():
    def needs_answer(completions, answer, **kwargs):
        return [0.0] * len(completions)

    env = TextGenEnv(sums_task(needs_answer))
    with pytest.raises(RewardError, match=r"reward 'needs_answer' \(in Sums-v0\): it takes 'answer', which is "
                                          r"neither an argument .* nor a dataset column \(columns: \['solution'\]\)"):
        env.score(env.task.split("train")[:1], ["a"])


def test_a_meta_column_named_like_an_argument_is_refused():
    data = [Example("q", meta={"completions": 1, "k": 2})]
    with pytest.raises(TaskError, match="task 'Clash-v0': split 'train' item 0: meta key 'completions' is also "
                                        "the name of a reward argument"):
        Task("Clash-v0", {"train": data}, reward=reward_len)
    env = TextGenEnv(sums_task())
    with pytest.raises(TaskError, match="meta key 'completions' is also the name of a reward argument"):
        env.score(data, ["a"])


def test_positional_rewards_still_work():
    def legacy(p, c, r=None, **columns):
        return [float(x == y) for x, y in zip(c, r, strict=True)]

    env = TextGenEnv(sums_task(legacy))
    assert env.score(env.task.split("train")[:2], ["0", "9"])[0].tolist() == [1.0, 0.0]


# ---- loaders ------------------------------------------------------------------------------------------

CONVERSATIONAL_ROWS = [
    {"prompt": [user("What color is the sky?")], "completion": [assistant("It is blue.")],
     "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")], "solution": "blue"},
    {"prompt": [SYSTEM, user("2+2?")], "completion": [assistant("4")],
     "chosen": [assistant("4")], "rejected": [assistant("5")], "solution": "4"},
]


def test_load_jsonl_trl_conversational_columns(tmp_path):
    path = write_jsonl(tmp_path / "conv.jsonl", CONVERSATIONAL_ROWS)
    examples = load_jsonl(path, reference="completion", chosen="chosen", rejected="rejected", meta=["solution"])
    assert examples[1] == Example([SYSTEM, user("2+2?")], reference=[assistant("4")], chosen=[assistant("4")],
                                  rejected=[assistant("5")], meta={"solution": "4"})


def test_load_hf_trl_conversational_dataset():
    ds = datasets.Dataset.from_list(CONVERSATIONAL_ROWS)
    examples = load_hf(ds, reference="completion", chosen="chosen", rejected="rejected", meta=["solution"])
    assert examples[0] == Example([user("What color is the sky?")], reference=[assistant("It is blue.")],
                                  chosen=[assistant("Blue.")], rejected=[assistant("Green.")],
                                  meta={"solution": "blue"})
    assert examples[1].prompt == [SYSTEM, user("2+2?")]


MESSAGES_ROWS = [
    {"messages": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4")]},
    {"messages": [SYSTEM, user("3+3?"), assistant("6")]},
]


def test_messages_column_splits_off_the_last_assistant_message(tmp_path):
    expected = [Example([user("Hi"), assistant("Hello!"), user("2+2?")], reference=[assistant("4")]),
                Example([SYSTEM, user("3+3?")], reference=[assistant("6")])]
    assert load_hf(datasets.Dataset.from_list(MESSAGES_ROWS), messages="messages") == expected
    assert load_jsonl(write_jsonl(tmp_path / "m.jsonl", MESSAGES_ROWS), messages="messages") == expected


def test_messages_column_errors(tmp_path):
    with pytest.raises(TaskError, match="gives both the prompt and the reference"):
        load_hf(datasets.Dataset.from_list(MESSAGES_ROWS), messages="messages", reference="messages")
    path = write_jsonl(tmp_path / "m.jsonl", [*MESSAGES_ROWS, {"messages": [user("2+2?"), assistant("4"),
                                                                        user("thanks")]}])
    with pytest.raises(TaskError, match=r"m.jsonl': row 2, column 'messages': the conversation ends with a 'user' "
                                        r"message; its last message must be the assistant's answer"):
        load_jsonl(path, messages="messages")
    with pytest.raises(TaskError, match=r"row 0, column 'messages': the conversation is only an assistant message"):
        load_hf(datasets.Dataset.from_list([{"messages": [assistant("hi")]}]), messages="messages")
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": "x"}])
    with pytest.raises(TaskError, match="row 0 is missing column 'messages'"):
        load_jsonl(path, messages="messages")


def test_malformed_messages_in_a_file_name_the_file_row_and_column(tmp_path):
    rows = [CONVERSATIONAL_ROWS[0], {"prompt": [{"role": "user", "content": 7}], "completion": "x"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TaskError, match=r"bad.jsonl': row 1, column 'prompt': message 0 \(user\) has int content"):
        load_jsonl(path, reference="completion")
    rows = [{"prompt": "q", "completion": [user("not an answer")]}]
    with pytest.raises(TaskError, match=r"row 0, column 'completion': message 0 has role 'user'"):
        load_hf(datasets.Dataset.from_list(rows), reference="completion")
    with pytest.raises(TaskError, match=r"row 0, column 'prompt': expected a non-empty list of messages .* empty"):
        load_jsonl(write_jsonl(tmp_path / "empty.jsonl", [{"prompt": []}]))


def test_load_hh_as_messages():
    examples = load_hh(FIXTURE, subset="helpful", messages=True)
    plain = load_hh(FIXTURE, subset="helpful")
    assert len(examples) == len(plain) == 6
    answer = [assistant("Trim the stems at an angle and change the water every two days.")]
    assert examples[0] == Example([user("What is a good way to keep cut flowers fresh?")], reference=answer,
                                  chosen=answer, rejected=[assistant("Flowers are plants.")],
                                  meta={"subset": "helpful"})
    maths = examples[3]
    assert maths.prompt == [user("Hi!"), assistant("Hello! How can I help?"),
                            user("Please reply with the word Assistant: and nothing else."),
                            assistant("I'd rather help with something useful."), user("Fine, what is 2+2?")]
    assert examples[4].rejected == [assistant("")]
    for conv, text in zip(examples, plain, strict=True):     # the same dialogue, turn for turn
        assert render_messages(conv.prompt).count("\n") == text.prompt.count("\n\n") - 2
        assert message_text(conv.chosen) == text.chosen.strip()


def test_builtin_envs_still_serve_plain_text_prompts():
    env = textenv.make("textenv/Arithmetic-v0")
    obs, info = env.reset(seed=0)
    assert isinstance(obs, str) and info["prompt"] == obs


# ---- reward models that read text ---------------------------------------------------------------------

def test_bradley_terry_reads_a_conversation_as_its_plain_rendering():
    import torch

    from rewards import BradleyTerryRewardModel, BTConfig

    torch.manual_seed(0)
    model = BradleyTerryRewardModel(BTConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    conversation = [SYSTEM, user("2+2?")]
    as_messages = model.score([conversation, "q"], ["4", "a"])
    as_text = model.score(["system: Answer with a number.\nuser: 2+2?\nassistant: ", "q"], ["4", "a"])
    np.testing.assert_allclose(as_messages, as_text, rtol=1e-6)


def test_sequence_classifier_applies_the_chat_template_to_conversations(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import rewards
    from algos.tiny_chat import build_tiny_chat_model

    path = build_tiny_chat_model(tmp_path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path, num_labels=1))
    concat = rewards.get("sequence_classifier", model=model, tokenizer=tok)
    alone = rewards.get("sequence_classifier", model=model, tokenizer=tok, inputs="completion")
    conversation = [user("2+2?")]
    templated = tok.apply_chat_template([*conversation, assistant("4")], tokenize=False)
    assert templated.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n")
    np.testing.assert_allclose(concat([conversation, "plain "], ["4", "text"]),
                               alone(["", ""], [templated, "plain text"]), rtol=1e-5)


# ---- property: every observation fits the observation space ---------------------------------------------

MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                           "content": st.text(max_size=30)}), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(prompts=st.lists(st.one_of(st.text(max_size=40), MESSAGES), min_size=1, max_size=4),
       completion=st.text(max_size=16), pick=st.integers(0, 3))
def test_every_observation_fits_the_space(prompts, completion, pick):
    task = Task("Any-v0", {"train": [Example(p) for p in prompts]}, reward=lambda completions, **kw: [0.0])
    env = TextGenEnv(task, max_length=16)
    obs, info = env.reset(options={"index": pick % len(prompts)})
    assert env.observation_space.contains(obs) and info["prompt"] == prompts[pick % len(prompts)]
    obs, *_ = env.step(completion)
    assert env.observation_space.contains(obs) and obs.endswith(completion)
