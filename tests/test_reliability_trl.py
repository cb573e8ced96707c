"""TRL's formats, unchanged: the catalogue of what TRL users bring and what they must get.

Tables first, one row per case: what a reward receives (text or TRL's messages, by the rule in
``rewards.calling``), how loaders place columns and extract implicit prompts, and the refusals (error
type and a fragment of the message, which names the source, row and column). Then TRL's own
documented reward functions run unchanged through envs, a final assistant message is continued token
for token, ``completion_ids`` come from a real rollout, and DPO trains on implicit-prompt data as given.
"""

import functools
import json
import re

import datasets
import numpy as np
import pytest
import torch
from conftest import random_policy

import algos
import textenv
from algos import Policy
from algos.tiny_chat import build_tiny_chat_model
from rewards import RewardError
from textenv import Example, Task, TaskError, TextGenEnv, TokenEnv, extract_prompt, load_hf, load_jsonl


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


# ----------------------------------------------------------------------------- what a reward receives
SUM = [user("What is 2+3?")]
CONTINUED = [user("What is 2+3?"), assistant("The answer is")]   # the model continues this message


def trl_style(completions, **kwargs):
    return completions


def trl_style_with_prompts(prompts, completions, **kwargs):
    return prompts


def ours(prompts, completions, references=None, **columns):
    return completions


def positional(p, c, r=None, **columns):
    return c


def trl_only_completions(completions):
    return completions


# (reward, prompt, completion, what the reward sees); the reward returns what it got, the spy records it.
RECEIVES_ROWS = [
    pytest.param(trl_style, SUM, "5", [assistant("5")], id="trl-conversational-completion-is-messages"),
    pytest.param(trl_only_completions, SUM, "5", [assistant("5")], id="trl-no-kwargs-still-messages"),
    pytest.param(trl_style_with_prompts, SUM, "5", SUM, id="trl-conversational-prompt-is-messages"),
    pytest.param(trl_style, "2+3=", "5", "5", id="trl-text-prompt-text-completion"),
    pytest.param(ours, SUM, "5", "5", id="project-signature-names-references-gets-text"),
    pytest.param(positional, SUM, "5", "5", id="positional-gets-text"),
    pytest.param(trl_style, CONTINUED, " 5.", [assistant("The answer is 5.")],
                 id="trl-continued-message-leads-the-completion"),
    pytest.param(trl_style_with_prompts, CONTINUED, " 5.", SUM, id="trl-continued-message-leaves-the-prompt"),
    pytest.param(ours, CONTINUED, " 5.", " 5.", id="project-signature-continued-gets-the-new-text"),
]


@pytest.mark.parametrize(("fn", "prompt", "completion", "seen"), RECEIVES_ROWS)
def test_what_a_reward_receives(fn, prompt, completion, seen):
    got = []

    @functools.wraps(fn)   # the same signature, so the same calling rule
    def spy(*args, **kwargs):
        got.append(fn(*args, **kwargs))
        return [0.0]

    env = TextGenEnv(Task("Sums-v0", {"train": [Example(prompt, meta={"solution": "5"})]}, reward=spy))
    env.reset(options={"index": 0})
    env.step(completion)
    assert got == [[seen]]


def test_trl_rewards_get_completion_ids_and_project_rewards_do_not():
    seen = {}

    def trl_ids(completions, completion_ids, **kwargs):
        seen["trl"] = completion_ids
        return [0.0] * len(completions)

    def ours_kw(prompts, completions, references=None, **columns):
        seen["ours"] = sorted(columns)
        return [0.0] * len(completions)

    examples = [Example(SUM, meta={"solution": "5"})] * 2
    for reward in (trl_ids, ours_kw):
        TextGenEnv(Task("Ids-v0", {"train": examples}, reward=reward)).score(examples, ["a", "b"],
                                                                             completion_ids=[[7, 2], [9]])
    assert seen == {"trl": [[7, 2], [9]], "ours": ["solution"]}


# ----------------------------------------------------------------------------- loaders (corrected behaviour)
# TRL's extract_prompt docstring example, and its text counterpart (TRL's dataset-formats page).
SKY = {"chosen": [user("What color is the sky?"), assistant("It is blue.")],
       "rejected": [user("What color is the sky?"), assistant("It is green.")]}
SKY_TEXT = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
MULTI = {"chosen": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4")],
         "rejected": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("5")]}
ULTRA = {"prompt": "What color is the sky?", **SKY, "score": 8.5}   # UltraFeedback: text prompt beside conversations

# (rows, loader mapping, expected first Example)
LOADER_ROWS = [
    pytest.param([SKY], {"chosen": "chosen", "rejected": "rejected"},
                 Example([user("What color is the sky?")], chosen=[assistant("It is blue.")],
                         rejected=[assistant("It is green.")]), id="implicit-conversation-no-prompt-column"),
    pytest.param([SKY_TEXT], {"chosen": "chosen", "rejected": "rejected"},
                 Example("The sky is", chosen=" blue.", rejected=" green."), id="implicit-text-space-to-answers"),
    pytest.param([{"chosen": "Q: 2+2? A: four", "rejected": "Q: 2+2? A: five"}],
                 {"prompt": None, "chosen": "chosen", "rejected": "rejected"},
                 Example("Q: 2+2? A: f", chosen="our", rejected="ive"), id="implicit-text-cuts-where-trl-cuts"),
    pytest.param([MULTI], {"prompt": None, "chosen": "chosen", "rejected": "rejected"},
                 Example(MULTI["chosen"][:3], chosen=[assistant("4")], rejected=[assistant("5")]),
                 id="implicit-multi-turn"),
    pytest.param([SKY], {"chosen": "chosen", "rejected": "rejected", "reference": "chosen"},
                 Example([user("What color is the sky?")], reference=[assistant("It is blue.")],
                         chosen=[assistant("It is blue.")], rejected=[assistant("It is green.")]),
                 id="implicit-reference-is-the-chosen-answer"),
    pytest.param([ULTRA], {"chosen": "chosen", "rejected": "rejected"},
                 Example([user("What color is the sky?")], chosen=[assistant("It is blue.")],
                         rejected=[assistant("It is green.")],
                         meta={"prompt": "What color is the sky?", "score": 8.5}),
                 id="maybe-extract-text-prompt-beside-conversations"),
    pytest.param([{"question": "2+2=", "answer": "4", "level": "easy", "id": 3}],
                 {"prompt": "question", "reference": "answer"},
                 Example("2+2=", reference="4", meta={"level": "easy", "id": 3}), id="every-other-column-to-meta"),
    pytest.param([{"question": "2+2=", "answer": "4", "level": "easy"}],
                 {"prompt": "question", "reference": "answer", "meta": {"difficulty": "level"}},
                 Example("2+2=", reference="4", meta={"difficulty": "easy"}), id="meta-renames"),
    pytest.param([{"prompt": "2+2=", "solution": "4"}], {"reference": "solution", "meta": ["solution"]},
                 Example("2+2=", reference="4", meta={"solution": "4"}), id="meta-also-passes-a-field-column"),
    pytest.param([{"prompt": [user("2+2?")], "completion": [assistant("4")], "solution": "4", "tags": ["x"]}],
                 {"reference": "completion"},
                 Example([user("2+2?")], reference=[assistant("4")], meta={"solution": "4", "tags": ["x"]}),
                 id="trl-conversational-prompt-completion"),
]


@pytest.mark.parametrize(("rows", "mapping", "expected"), LOADER_ROWS)
@pytest.mark.parametrize("loader", ["hf", "jsonl"])
def test_loaders_place_columns_as_trl_does(tmp_path, loader, rows, mapping, expected):
    if loader == "hf":
        examples = load_hf(datasets.Dataset.from_list(rows), **mapping)
    else:
        examples = load_jsonl(write_jsonl(tmp_path / "data.jsonl", rows), **mapping)
    assert examples[0] == expected


def test_jsonl_column_absent_from_some_rows_is_none_there(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "id": 1}, {"prompt": "b"}])
    assert [ex.meta for ex in load_jsonl(path)] == [{"id": 1}, {"id": None}]   # as datasets reads the file


# ----------------------------------------------------------------------------- refusals
def _hf(rows, **mapping):
    return lambda d: load_hf(datasets.Dataset.from_list(rows), **mapping)


def _jsonl(rows, **mapping):
    return lambda d: load_jsonl(write_jsonl(d / "pairs.jsonl", rows), **mapping)


def _step(reward, prompt=SUM, completion="5"):
    def trigger(d):
        env = TextGenEnv(Task("Sums-v0", {"train": [Example(prompt, meta={"solution": "5"})]}, reward=reward))
        env.reset(options={"index": 0})
        return env.step(completion)
    return trigger


def needs_ids(completions, completion_ids, **kwargs):
    return [0.0] * len(completions)


def needs_state(completions, trainer_state, **kwargs):
    return [0.0] * len(completions)


def accuracy_trl(completions, solution, **kwargs):   # TRL's standard-format style, given messages: TRL fails too
    return [float(c.strip() == s) for c, s in zip(completions, solution, strict=True)]


PAIR = {"chosen": "chosen", "rejected": "rejected"}
FAULT_ROWS = [
    pytest.param(_hf([SKY_TEXT, {"chosen": "Yes.", "rejected": "No."}], **PAIR), TaskError,
                 r"dataset \(split 'train'\): row 1 \(columns 'chosen', 'rejected'\): chosen and rejected share no "
                 r"prompt \(they differ from the first character\)", id="implicit-text-no-shared-prompt"),
    pytest.param(_jsonl([{"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("b")]}], **PAIR),
                 TaskError, r"pairs.jsonl': row 0 .*share no prompt \(they differ from the first message\)",
                 id="implicit-conversation-no-shared-prompt"),
    pytest.param(_hf([SKY, {"chosen": SKY["chosen"], "rejected": SKY["chosen"]}], **PAIR), TaskError,
                 r"row 1 \(columns 'chosen', 'rejected'\): chosen and rejected are identical", id="implicit-identical"),
    pytest.param(_jsonl([{"chosen": "The sky is blue", "rejected": "The sky is blue today"}], prompt=None, **PAIR),
                 TaskError, r"row 0 .*: chosen is the start of rejected; once the shared prompt is taken nothing is "
                 r"left of the chosen answer", id="implicit-one-answer-the-start-of-the-other"),
    pytest.param(_hf([{"c": "The sky is blue.", "r": "x"}], prompt=None, chosen="c"), TaskError,
                 r"prompt=None takes the prompt from the shared start of chosen and rejected; name both columns",
                 id="implicit-needs-both-columns"),
    pytest.param(_jsonl([{"chosen": "The sky is blue.", "rejected": [user("The sky"), assistant("is green")]}],
                        **PAIR), TaskError, r"row 0 .*: chosen is text but rejected is a conversation",
                 id="implicit-text-beside-conversation"),
    pytest.param(_hf([{"chosen": [user("Hi"), assistant("a"), user("more?"), assistant("b")],
                       "rejected": [user("Hi"), assistant("c")]}], **PAIR), TaskError,
                 r"row 0, column 'chosen' \(after the shared prompt of 1 messages\) holds a 'user' message; an "
                 r"answer holds assistant messages only", id="implicit-answer-with-a-user-turn"),
    pytest.param(_jsonl([{"chosen": "The sky is blue.", "rejected": None}], **PAIR), TaskError,
                 r"row 0: column 'rejected' is null; the prompt is taken from chosen and rejected",
                 id="implicit-null-answer"),
    pytest.param(_hf([SKY_TEXT], prompt="chosen", **PAIR), TaskError,
                 r"prompt='chosen' is also the chosen column; .*pass prompt=None", id="prompt-mapped-to-chosen-text"),
    pytest.param(_hf([SKY], prompt="rejected", **PAIR), TaskError,
                 r"prompt='rejected' is also the rejected column", id="prompt-mapped-to-rejected-conversation"),
    pytest.param(_hf([{"prompt": [user("q")], "chosen": SKY["chosen"], "rejected": SKY["rejected"]}], **PAIR),
                 TaskError, r"row 0, column 'chosen' holds a 'user' message; .*pass prompt=None to extract it",
                 id="explicit-prompt-but-chosen-holds-the-conversation"),
    pytest.param(_jsonl([{"prompt": "q", "completions": "x"}]), TaskError,
                 r"pairs.jsonl': column 'completions' would reach the reward as 'completions', the name of one of "
                 r"the reward's own arguments; rename it with meta=\{'<new name>': 'completions'\}",
                 id="column-named-like-a-reward-argument"),
    pytest.param(_hf([{"prompt": "q", "completion_ids": [1, 2]}]), TaskError,
                 r"column 'completion_ids' would reach the reward as 'completion_ids'", id="column-completion-ids"),
    pytest.param(_hf([{"prompt": "q", "level": "easy", "difficulty": "hard"}], meta={"level": "difficulty"}),
                 TaskError, r"meta key 'level' \(column 'difficulty'\) is also the name of another column",
                 id="meta-key-shadows-a-column"),
    pytest.param(_step(accuracy_trl), RewardError,
                 r"reward 'accuracy_trl' \(in Sums-v0\) raised AttributeError: 'list' object has no attribute "
                 r"'strip'", id="trl-text-style-reward-on-messages-fails-as-in-trl"),
    pytest.param(_step(needs_ids), RewardError,
                 r"reward 'needs_ids' \(in Sums-v0\): it takes 'completion_ids' \(the sampled token ids\), which "
                 r"only come with completions a policy sampled", id="completion-ids-without-a-policy"),
    pytest.param(_step(needs_state), RewardError,
                 r"it takes 'trainer_state', which TRL's GRPOTrainer passes from inside its trainer; no trainer "
                 r"runs here", id="trl-trainer-state"),
    pytest.param(lambda d: TextGenEnv(Task("Ids-v0", {"train": [Example("q")]}, reward=needs_ids)).score(
        [Example("q")] * 2, ["a", "b"], completion_ids=[[1]]), RewardError,
                 r"reward 'needs_ids' \(in Ids-v0\): got 1 completion_ids for 2 completions",
                 id="completion-ids-wrong-length"),
    pytest.param(lambda d: extract_prompt("same", "same", "my pair"), TaskError,
                 r"my pair: chosen and rejected are identical", id="extract-prompt-names-where"),
]


@pytest.mark.parametrize(("trigger", "error", "message"), FAULT_ROWS)
def test_trl_fault_catalogue(tmp_path, trigger, error, message):
    with pytest.raises(error, match=message):
        trigger(tmp_path)


# ----------------------------------------------------------------------------- TRL's documented rewards, unchanged
# Copied verbatim from TRL's GRPOTrainer docs, "Using a custom reward function", Example 2 ("Reward completions
# with a specific format", designed for the conversational format) and Example 3 ("Reward completions based on
# a reference", standard format, a dataset column `ground_truth`):
# https://huggingface.co/docs/trl/main/en/grpo_trainer#using-a-custom-reward-function

def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \boxed{}
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]  # noqa: B905


GOOD = "<think>The sum of 1 and 2 is 3, which we multiply by 4 to get 12.</think><answer>(1 + 2) * 4 = 12</answer>"
BAD = "The sum of 3 and 1 is 4, which we multiply by 2 to get 8. So (3 + 1) * 2 = 8."


def test_trls_documented_conversational_reward_runs_unchanged_through_envs():
    rows = [{"prompt": [user("What is the result of (1 + 2) * 4?")]},
            {"prompt": [user("What is the result of (3 + 1) * 2?")]}]
    examples = load_hf(datasets.Dataset.from_list(rows))
    env = TextGenEnv(Task("Format-v0", {"train": examples}, reward=format_reward_func))
    env.reset(options={"index": 0})
    assert env.step(GOOD)[1] == 1.0
    assert env.score(examples, [GOOD, BAD])[0].tolist() == [1.0, 0.0]
    venv = textenv.TextVectorEnv(env, num_prompts=2, group_size=1)
    venv.reset(seed=0, options={"indices": [0, 1]})
    assert venv.step([BAD, GOOD])[1].tolist() == [0.0, 1.0]


def test_trls_documented_standard_reward_reads_a_dataset_column_without_meta():
    rows = [{"prompt": "Problem: Solve the equation $2x + 3 = 7$. Solution:", "ground_truth": "2"},
            {"prompt": "Problem: Solve the equation $3x - 5 = 10$.", "ground_truth": "5"}]
    examples = load_hf(datasets.Dataset.from_list(rows))   # no meta=: every column reaches the reward
    env = TextGenEnv(Task("Boxed-v0", {"train": examples}, reward=reward_func))
    assert env.score(examples, [r" The solution is \boxed{2}.", r" The solution is \boxed{6}."])[0].tolist() == [1, 0]


# ----------------------------------------------------------------------------- a final assistant message is continued
CHATML_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"


def test_policy_continues_a_final_assistant_message_token_for_token(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    ids, mask = policy.encode_prompts([CONTINUED, SUM])
    texts = [policy.tokenizer.decode(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)]
    assert texts == [CHATML_HEAD + "<|im_start|>assistant\nThe answer is",     # left open: no <|im_end|>
                     CHATML_HEAD + "<|im_start|>assistant\n"]                   # a new turn: the generation prompt
    expected = policy.tokenizer.apply_chat_template(CONTINUED, continue_final_message=True,
                                                    add_generation_prompt=False, tokenize=False)
    assert texts[0] == expected
    pair = policy.encode([CONTINUED], [" 5."])
    whole = torch.cat([pair.prompt_ids[0][pair.prompt_mask[0].bool()], pair.completion_ids[0]]).tolist()
    assert policy.tokenizer.decode(whole) == CHATML_HEAD + "<|im_start|>assistant\nThe answer is 5.<|im_end|>"


def test_token_env_and_observations_continue_it_too(chat_dir):
    from transformers import AutoTokenizer

    task = Task("Cont-v0", {"train": [Example(CONTINUED)]}, reward=lambda completions, **kw: [0.0] * len(completions))
    env = TokenEnv(task, AutoTokenizer.from_pretrained(chat_dir), max_new_tokens=2)
    obs, _ = env.reset(options={"index": 0})
    ids = obs["input_ids"][obs["attention_mask"] == 1].tolist()
    assert env.tokenizer.decode(ids) == CHATML_HEAD + "<|im_start|>assistant\nThe answer is"
    plain = TokenEnv(task, max_new_tokens=2, render_mode="ansi")   # no chat template: no "assistant:" cue added
    plain.reset(options={"index": 0})
    assert plain.render() == "user: What is 2+3?\nassistant: The answer is"
    text_env = TextGenEnv(task)
    assert text_env.reset(options={"index": 0})[0] == "user: What is 2+3?\nassistant: The answer is"
    assert text_env.step(" 5.")[0] == "user: What is 2+3?\nassistant: The answer is 5."


# ----------------------------------------------------------------------------- completion_ids from a real rollout
def test_grpo_rollout_hands_trl_rewards_the_sampled_ids(chat_dir):
    seen = {}

    def spy(prompts, completions, completion_ids, opening, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, opening=opening)
        return [float(len(ids)) for ids in completion_ids]

    examples = [Example(SUM, meta={"opening": ""}), Example(CONTINUED, meta={"opening": "The answer is"})]
    env = TextGenEnv(Task("Rollout-v0", {"train": examples}, reward=spy))
    policy = Policy.from_pretrained(chat_dir)
    agent = algos.make("grpo", policy, batch_size=2, group_size=2, max_new_tokens=4, seed=0)
    with torch.no_grad():
        agent.make_batch(env, np.random.default_rng(0))
    texts = [policy.tokenizer.decode(ids, skip_special_tokens=True) for ids in seen["completion_ids"]]
    contents = [c[0]["content"] for c in seen["completions"]]
    assert contents == [o + t for o, t in zip(seen["opening"], texts, strict=True)]
    assert sorted(seen["opening"]) == ["", "", "The answer is", "The answer is"]
    assert all(p == SUM for p in seen["prompts"])   # the continued message left the prompt, as in TRL
    assert all(1 <= len(ids) <= 4 for ids in seen["completion_ids"])


# ----------------------------------------------------------------------------- DPO on implicit-prompt data, as given
def _dpo_trains(policy, examples):
    env = TextGenEnv(Task("Pairs-v0", {"train": examples}, reward=lambda completions, **kw: [0.0] * len(completions)))
    agent = algos.make("dpo", policy, batch_size=2, seed=0)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    history = agent.learn(env, 2, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))


def test_dpo_trains_on_an_implicit_prompt_text_dataset():
    rows = [{"chosen": f"Q: {a}+{a}= A: {2 * a}", "rejected": f"Q: {a}+{a}= A: {2 * a + 1}x"} for a in range(1, 5)]
    examples = load_hf(datasets.Dataset.from_list(rows), chosen="chosen", rejected="rejected")
    assert examples[0] == Example("Q: 1+1= A:", chosen=" 2", rejected=" 3x")
    _dpo_trains(random_policy(), examples)


def test_dpo_trains_on_an_implicit_prompt_conversational_dataset(chat_dir):
    rows = [{"chosen": [user(f"What is {a}+{a}?"), assistant(str(2 * a))],
             "rejected": [user(f"What is {a}+{a}?"), assistant(str(2 * a + 1))]} for a in range(1, 5)]
    examples = load_hf(datasets.Dataset.from_list(rows), chosen="chosen", rejected="rejected")
    assert examples[0] == Example([user("What is 1+1?")], chosen=[assistant("2")], rejected=[assistant("3")])
    _dpo_trains(Policy.from_pretrained(chat_dir), examples)
