"""textenv.trl_environment: our multi-turn envs as TRL's environment_factory. The adapter alone (reset from a row,
tool schemas, errors, the episode it plays against MultiTurnEnv's), then one step of TRL's own GRPOTrainer."""

import inspect
import re

import pytest
from transformers.utils import get_json_schema

import textenv
from textenv import TaskError, Toolbox, format_tool_call, parse_tool_calls
from textenv.trl_env import ToolCallError, episode_return, trl_dataset, trl_environment

KEY_VALUE = {"n_train": 4, "n_eval": 3}


def trl_tools(factory):
    """The tools TRL's GRPOTrainer takes from an environment class: its public functions but reset/get_reward."""
    return [name for name, _ in inspect.getmembers(factory, predicate=inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")]


def play_call(env, text):
    """Call the tool that ``text`` (one Hermes block, as an oracle writes it) names, as TRL would."""
    (call,) = parse_tool_calls(text)
    return getattr(env, call.name)(**call.arguments)


def direct(env_id, split, index, seed=0, **kwargs):
    env = textenv.make(env_id, split=split, **kwargs)
    env.reset(seed=seed, options={"index": index})
    return env


# ---- the adapter, without TRL's trainer ------------------------------------------------------------------

def test_reset_from_a_dataset_row_starts_that_rows_episode():
    factory = trl_environment("textenv/KeyValue-v0", **KEY_VALUE)
    data = trl_dataset(factory, split="eval", limit=2)
    assert data.column_names == ["prompt", "split", "index", "seed"] and len(data) == 2
    env = factory()
    assert env.reset(**data[1]) is None                   # TRL appends a returned str to the prompt: nothing here
    expected = direct("textenv/KeyValue-v0", "eval", 1, **KEY_VALUE)
    assert env.messages == expected.messages and data[1]["prompt"] == expected.messages
    assert env.state.chain == expected.state.chain and env.episode_stats["turns"] == 0 and not env.done


def test_the_tools_trl_finds_have_our_toolbox_schemas():
    factory = trl_environment("textenv/KeyValue-v0", **KEY_VALUE)
    env = factory()
    assert trl_tools(factory) == ["get", "submit"]
    ours = Toolbox(textenv.make_task("textenv/KeyValue-v0", **KEY_VALUE).tools).schemas
    assert [get_json_schema(getattr(env, name)) for name in ("get", "submit")] == ours   # bound, as TRL passes them
    moves = trl_environment("textenv/GuessNumber-v0", move_tool="guess")
    assert trl_tools(moves) == ["guess"]
    assert get_json_schema(moves().guess)["function"]["parameters"] == {
        "type": "object", "properties": {"message": {"type": "string", "description": "Your message: your answer, "
                                                                                      "guess or move."}},
        "required": ["message"]}


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


class Adder(textenv.MultiTurnTask):
    """A task with a stateless tool (no ``self``): its method must still take the instance and give add's schema."""

    name, tools, max_turns = "Adder-v0", [add], 2
    splits = {"train": [{"a": 2}]}

    def reset(self, row, rng):
        return [{"role": "user", "content": f"add {row['a']} and 3"}], {}

    def respond(self, state, message):
        return textenv.Reply(done=True)


def test_a_stateless_tool_keeps_its_schema_and_runs():
    env = trl_environment(Adder())()
    assert get_json_schema(env.add) == get_json_schema(add)
    env.reset(split="train", index=0, seed=0)
    assert env.add(a=2, b=3) == "5" and env.done and env.episode_stats["tool_calls"] == 1


def test_a_failed_call_raises_our_error_text_which_trl_shows_and_counts():
    factory = trl_environment("textenv/KeyValue-v0", **KEY_VALUE)
    env = factory()
    env.reset(**trl_dataset(factory, limit=1)[0])
    cases = [({"key": "nope"}, "get raised LookupError: no key 'nope' in the store"),
             ({"k": "x"}, "bad arguments for get: missing argument 'key'"),
             ({"key": 7}, "bad arguments for get: argument 'key' must be string, got 7")]
    for arguments, message in cases:
        with pytest.raises(ToolCallError) as err:
            env.get(**arguments)
        assert str(err.value) == message                # TRL shows the model {'error': str(err)}
    assert env.messages[-1] == {"role": "tool", "name": "get", "content": f"Error: {cases[-1][1]}"}  # as our env
    assert {k: env.episode_stats[k] for k in ("turns", "tool_calls", "tool_errors", "invalid_actions")} == {
        "turns": 3, "tool_calls": 3, "tool_errors": 3, "invalid_actions": 3}


@pytest.mark.parametrize("env_id, kwargs, move_tool", [("textenv/KeyValue-v0", KEY_VALUE, None),
                                                       ("textenv/GuessNumber-v0", {}, "guess"),
                                                       ("textenv/Nim-v0", {}, "move")])
def test_the_oracle_played_through_trl_tools_is_the_same_episode_as_in_our_env(env_id, kwargs, move_tool):
    factory = trl_environment(env_id, move_tool=move_tool, **kwargs)
    env, row = factory(), trl_dataset(factory, split="eval", limit=3)[2]
    env.reset(**row)
    reference = direct(env_id, "eval", 2, **kwargs)
    results, replies = [], []
    while not env.done:
        move = env.task.oracle(env.state)
        results.append(play_call(env, move) if move_tool is None else getattr(env, move_tool)(message=move))
        _, _, _, _, info = reference.step(move)
        replies.append("\n".join(m["content"] for m in info["env_messages"]) or "The episode has ended.")
    assert env.messages == reference.messages and env.episode_return == 1.0
    assert env.episode_stats == info["episode_stats"]
    assert results == replies                               # a tool result is what our env said after the move
    assert episode_return([[{"role": "assistant", "content": "thanks"}]], [env]) == [1.0]  # over: not played
    with pytest.raises(ToolCallError, match=r"The episode has ended \(the task is done\)"):
        play_call(env, format_tool_call("get", {"key": "x"})) if move_tool is None else \
            getattr(env, move_tool)(message="1")


def test_episode_return_plays_a_final_text_answer_then_ends_the_episode_once():
    factory = trl_environment("textenv/GuessNumber-v0", move_tool="guess", n_train=5, n_eval=2)
    envs = [factory(), factory()]
    for env in envs:
        env.reset(**trl_dataset(factory, limit=1)[0])
    target, high = envs[0].state.target, envs[0].state.high
    wrong = 1 if target != 1 else 2
    assert envs[0].guess(message=str(wrong)) in ("Higher.", "Lower.")
    completions = [[{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                        "name": "guess", "arguments": {"message": str(wrong)}}}]},
                    {"role": "tool", "name": "guess", "content": "Higher."},
                    {"role": "assistant", "content": f"It is {target}."}],      # a text answer TRL never ran
                   [{"role": "assistant", "content": f"It is {high + 1}."}]]   # out of range: invalid, not done
    assert episode_return(completions, envs) == [1.0, 0.0]
    assert envs[0].episode_stats["turns"] == 2 and envs[1].episode_stats["invalid_actions"] == 1
    assert envs[1].done and envs[1].messages[-1]["role"] == "user"      # truncated where TRL's rollout ended
    assert episode_return(completions, envs) == [1.0, 0.0] and envs[0].episode_stats["turns"] == 2  # once only


def test_what_cannot_map_is_refused_with_the_reason():
    with pytest.raises(TaskError, match=r"GuessNumber-v0 has no tools, its moves are plain text.*move_tool="):
        trl_environment("textenv/GuessNumber-v0")
    with pytest.raises(TaskError, match=r"Arithmetic-v0 is a single-turn task.*train_dataset"):
        trl_environment("textenv/Arithmetic-v0")
    with pytest.raises(TaskError, match=r"move_tool='get' is already a tool of KeyValue-v0"):
        trl_environment("textenv/KeyValue-v0", move_tool="get")
    for name in ("reset", "state", "_secret"):
        with pytest.raises(TaskError, match=rf"the move_tool '{name}' cannot be a TRL tool"):
            trl_environment("textenv/Nim-v0", move_tool=name)


def test_bad_rows_and_calls_out_of_order_name_what_is_wrong():
    factory = trl_environment("textenv/KeyValue-v0", **KEY_VALUE)
    env = factory()
    with pytest.raises(TaskError, match=r"reset\(\*\*row\) has not been called"):
        env.get(key="x")
    with pytest.raises(TaskError, match=r"no 'split' or 'index' column \(it has \['prompt'\]\).*trl_dataset"):
        env.reset(prompt=[{"role": "user", "content": "hi"}])
    with pytest.raises(TaskError, match=r"row index 9 is out of range for split 'eval' with 3 rows"):
        env.reset(split="eval", index=9)
    with pytest.raises(TaskError, match=r"split 'train' row 0: the row's prompt .* is not the episode's first"):
        env.reset(split="train", index=0, prompt=[{"role": "user", "content": "another task"}])
    with pytest.raises(TaskError, match=r"episode_return reads the episode returns from TRL's environments="):
        episode_return(["x"])
    with pytest.raises(TaskError, match=r"expected a class made by textenv.trl_environment"):
        trl_dataset(object)


# ---- one step of TRL's GRPOTrainer -------------------------------------------------------------------------

RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.S)


class ScriptedGenerate:
    """Stands in for ``model.generate`` (a random tiny model never writes a tool call): each rollout's next message
    is read off its transcript. Rollout 0 plays KeyValue's oracle; rollout 1 first asks for a key that does not
    exist, then submits 0. The model still scores every token, so TRL's loss and update are the real ones."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls, self.transcripts = tokenizer, 0, []

    def next_message(self, text: str, rollout: int) -> str:
        results = RESPONSE.findall(text)
        if not results:
            key = "nope" if rollout == 1 else re.search(r"Start at the key: (\w+)", text).group(1)
            return format_tool_call("get", {"key": key})
        if "error" in results[-1]:
            return format_tool_call("submit", {"value": 0})
        if results[-1].isdigit():
            return format_tool_call("submit", {"value": int(results[-1])})
        return "Done." if results[-1] == "submitted" else format_tool_call("get", {"key": results[-1]})

    def __call__(self, input_ids, attention_mask, **kwargs):
        import torch

        self.calls += 1
        rows = []
        for k, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            text = self.tokenizer.decode(ids[mask.bool()])
            self.transcripts.append(text)
            rollout = k if self.calls == 1 else int("nope" in text)
            reply = self.tokenizer(self.next_message(text, rollout) + "<|im_end|>", add_special_tokens=False)
            rows.append(torch.cat([ids, torch.tensor(reply["input_ids"])]))
        out = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        for i, row in enumerate(rows):
            out[i, :len(row)] = row
        return out


def zero_runs(mask) -> int:
    values = mask.tolist()
    return sum(1 for i, v in enumerate(values) if v == 0 and (i == 0 or values[i - 1] == 1))


def test_one_grpo_step_of_trl_on_our_env(tmp_path, monkeypatch):
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from algos.tiny_chat import build_tiny_chat_model

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    path = build_tiny_chat_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = qwen2_5_chat_template   # Qwen2.5's tool template: TRL knows how to parse its calls
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.max_position_embeddings = 4096       # the tools' schemas make a ~1000-token prompt (RoPE: no limit)
    model.generate = generate = ScriptedGenerate(tokenizer)
    factory = trl_environment("textenv/KeyValue-v0", n_train=2, n_eval=1, min_hops=1, max_hops=1)
    batches = []

    class Trainer(trl.GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            batches.append(super()._generate_and_score_completions(inputs))
            return batches[-1]

    config = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no",
                            max_steps=1, per_device_train_batch_size=2, num_generations=2, max_completion_length=384,
                            learning_rate=1e-3, logging_steps=1, bf16=False, gradient_checkpointing=False,
                            disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, reward_funcs=episode_return, args=config, processing_class=tokenizer,
                      train_dataset=trl_dataset(factory, limit=1), environment_factory=factory)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()

    assert trainer.state.global_step == 1 and generate.calls == 3      # first turn, after one call, after two
    oracle, wrong = trainer.environments
    assert oracle.messages == textenv.make_task("textenv/KeyValue-v0", n_train=2, n_eval=1, min_hops=1,
                                                max_hops=1).demonstration("train", 0)
    assert [e.episode_return for e in (oracle, wrong)] == [1.0, 0.0]
    assert [(e.episode_stats["tool_calls"], e.episode_stats["tool_errors"]) for e in (oracle, wrong)] == [(2, 0),
                                                                                                        (2, 1)]
    assert any("{'error': \"get raised LookupError: no key 'nope' in the store\"}" in t for t in generate.transcripts)
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] == 2.0 and logged["tools/failure_frequency"] == 0.25   # TRL's own counts
    assert logged["rewards/episode_return/mean"] == 0.5 and logged["reward_std"] == pytest.approx(2 ** -0.5)
    assert logged["episode/turns"] == 2.0 and logged["episode/tool_errors"] == 0.5
    tool_mask = batches[0]["tool_mask"]
    assert [zero_runs(row) for row in tool_mask] == [2, 2]            # both tool results are out of the loss
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
