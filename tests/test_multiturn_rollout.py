"""algos.multiturn: token-faithful multi-turn trajectories on the tiny chat model, with GuessNumber and KeyValue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import algos
import textenv
from algos import losses
from algos.multiturn import Renderer, collect_episodes, drift, turn_seed
from algos.policy import Policy
from algos.tiny_chat import build_tiny_chat_model

GUESS, KV = "textenv/GuessNumber-v0", "textenv/KeyValue-v0"

# Qwen3's habit, simplified: earlier assistant turns lose their <think> block, and the last assistant turn
# gets an empty one when it has none. A re-render of a conversation therefore differs from what was sampled.
REWRITING_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and not loop.last and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- elif message['role'] == 'assistant' and loop.last and '<think>' not in content %}"
    "{%- set content = '<think>\\n\\n</think>\\n\\n' + content %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def chat_dir():
    return build_tiny_chat_model()


@pytest.fixture(scope="module")
def policy(chat_dir):
    return Policy.from_pretrained(chat_dir)


class ScriptedPolicy(Policy):
    """The tiny chat model, but ``generate`` answers ``script(call, row)`` (its tokens, then EOS): a known
    sampled sequence, so the test can say exactly which ids a trajectory must hold."""

    def __init__(self, model, tokenizer, script):
        super().__init__(model, tokenizer)
        self.script, self.calls = script, 0

    def generate(self, prompts, *, max_new_tokens=32, **_):
        ids, mask = self.encode_prompts(prompts, room=max_new_tokens)
        rows = [self.tokenizer(self.script(self.calls, r), add_special_tokens=False)["input_ids"]
                + [self.tokenizer.eos_token_id] for r in range(len(prompts))]
        self.calls += 1
        comp, _ = self._pad(rows, left=False)
        return self._samples(list(prompts), 1, [(ids, mask, comp)])


def scripted(chat_dir, script, template=None):
    base = Policy.from_pretrained(chat_dir)
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    if template is not None:
        tokenizer.chat_template = template
    return ScriptedPolicy(base.model, tokenizer, script)


def guess_target(index=0):
    return textenv.make_task(GUESS).split("train")[index]["target"]


def test_shapes_masks_and_the_sampled_ids_kept_verbatim(policy):
    B, G = 2, 3
    ep = collect_episodes(policy, GUESS, num_prompts=B, group_size=G, seed=0, max_new_tokens=6, max_turns=3)
    batch, tok = ep.batch, policy.tokenizer
    M, T = batch.completion_ids.shape
    assert M == B * G == len(ep.trajectories) and ep.returns.shape == (B, G)
    assert batch.completion_mask.shape == batch.completion_attention.shape == ep.turn_index.shape == (M, T)
    for i, t in enumerate(ep.trajectories):
        n = len(t.ids)
        assert batch.completion_ids[i, :n].tolist() == t.ids
        assert batch.completion_attention[i].tolist() == [1] * n + [0] * (T - n)  # attend to every real token
        assert batch.completion_mask[i].tolist() == t.mask + [0] * (T - n)
        assert ep.turn_index[i].tolist() == t.turns + [-1] * (T - n)
        # ids = per turn: sampled verbatim (mask 1), then the env's tokens (mask 0); 1 exactly on sampled ids
        at = 0
        for k, sampled in enumerate(t.sampled):
            assert t.ids[at:at + len(sampled)] == sampled and set(t.mask[at:at + len(sampled)]) == {1}
            assert set(t.turns[at:at + len(sampled)]) == {k}
            at += len(sampled)
            env_len = t.turns.count(k) - len(sampled)
            assert env_len > 0 and set(t.mask[at:at + env_len]) == {0}
            env_text = tok.decode(t.ids[at:at + env_len])
            closing = "<|im_end|>\n" if t.cut[k] else "\n"  # a turn cut at max_new_tokens is closed by the env
            reply = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                            for m in _env_messages(t.messages, k))
            assert env_text == closing + reply + ("" if k == t.num_turns - 1 else "<|im_start|>assistant\n")
            at += env_len
        assert at == n and sum(t.mask) == sum(map(len, t.sampled))
        assert t.prompt_ids == tok.apply_chat_template(t.messages[:1], add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
        assert batch.prompt_ids[i, -len(t.prompt_ids):].tolist() == t.prompt_ids
    # turn 0's sampled ids are exactly what one generate call on the prompts with turn 0's seed returns
    first = policy.generate([t.prompt_ids for t in ep.trajectories], max_new_tokens=6, temperature=1.0,
                            seed=turn_seed(0, 0))
    for i, t in enumerate(ep.trajectories):
        assert first.completion_ids[i][first.completion_mask[i].bool()].tolist() == t.sampled[0]
    assert batch.num_tokens == ep.stats["tokens/generated"] == sum(len(s) for t in ep.trajectories for s in t.sampled)


def _env_messages(messages, k):
    """The messages the env appended after the ``k``-th assistant message of ``messages``."""
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    end = assistants[k + 1] if k + 1 < len(assistants) else len(messages)
    return messages[assistants[k] + 1:end]


def test_a_group_starts_alike_and_the_same_seed_gives_the_same_episodes(policy):
    kw = dict(num_prompts=3, group_size=2, max_new_tokens=5, max_turns=2)
    a = collect_episodes(policy, GUESS, seed=3, **kw)
    for b in range(3):
        group = a.trajectories[2 * b:2 * b + 2]
        assert group[0].prompt_ids == group[1].prompt_ids and group[0].messages[0] == group[1].messages[0]
        assert group[0].group == group[1].group == b
    assert len({tuple(t.prompt_ids) for t in a.trajectories}) > 1  # groups play different rows
    again, other = collect_episodes(policy, GUESS, seed=3, **kw), collect_episodes(policy, GUESS, seed=4, **kw)
    assert [t.ids for t in again.trajectories] == [t.ids for t in a.trajectories]
    assert torch.equal(again.batch.completion_ids, a.batch.completion_ids)
    assert [t.ids for t in other.trajectories] != [t.ids for t in a.trajectories]


def test_episodes_of_a_group_end_at_different_turns(chat_dir):
    target = guess_target(0)
    wrong = "1" if target != 1 else "2"
    # episode k guesses right on turn k (live episodes at call c are k >= c, in order); episode 3 never does
    policy = scripted(chat_dir, lambda call, row: str(target) if row == 0 else wrong)
    ep = collect_episodes(policy, GUESS, group_size=4, seed=0, indices=[0], max_turns=3, max_new_tokens=8)
    turns = [t.num_turns for t in ep.trajectories]
    assert turns == [1, 2, 3, 3]
    assert [t.rewards for t in ep.trajectories] == [[1.0], [0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert [(t.terminated, t.truncated) for t in ep.trajectories] == [(True, False)] * 3 + [(False, True)]
    assert ep.returns.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert ep.turn_mask.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert ep.stats["episodes/success_rate"] == 0.75 and ep.stats["episodes/turns"] == 9 / 4
    solved = ep.trajectories[0]  # a right guess ends with no env message: only the turn's closing "\n"
    assert policy.tokenizer.decode(solved.ids) == f"{target}<|im_end|>\n"
    assert solved.mask == [1] * len(solved.sampled[0]) + [0]
    assert ep.drift is None


def test_no_drift_with_chatml_and_the_drift_a_rewriting_template_would_have_caused(chat_dir):
    target = guess_target(0)
    texts = ["<think>try 1</think>1", "<think>higher</think>2", f"<think>got it</think>{target}"]
    assert target > 2
    for template in (None, REWRITING_TEMPLATE):
        policy = scripted(chat_dir, lambda call, row: texts[call], template)
        ep = collect_episodes(policy, GUESS, group_size=1, seed=0, indices=[0], max_new_tokens=16,
                              check_drift=True)
        (t,), (d,), tok = ep.trajectories, ep.drift, policy.tokenizer
        assert t.num_turns == 3 and t.rewards == [0.0, 0.0, 1.0]
        for k, text in enumerate(texts):  # exactly the sampled ids, <think> blocks kept, whatever the template
            assert t.sampled[k] == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert [i for i, m, turn in zip(t.ids, t.mask, t.turns, strict=True) if m and turn == k] == t.sampled[k]
        assert tok.decode(t.ids).count("<think>") == 3
        if template is None:  # ChatML renders prefixes stably: the trajectory is what a fresh render gives
            assert d.num_different == 0 and d.first_difference is None and d.length == d.fresh_length
        else:  # a re-render drops the earlier <think> blocks: that is where it would have drifted
            fresh = tok.apply_chat_template(t.messages, tokenize=True, return_dict=False)
            assert tok.decode(fresh).count("<think>") == 1
            assert d.first_difference == len(t.prompt_ids) and d.num_different > 0
            assert d.fresh_length == len(fresh) < d.length == len(t.all_ids)
            assert drift(t, tok) == d


def test_the_env_segment_is_the_templates_rendering_after_a_stand_in_turn(chat_dir):
    tok = AutoTokenizer.from_pretrained(chat_dir)
    tok.chat_template = REWRITING_TEMPLATE  # the last assistant turn's rendering changes once messages follow it
    renderer = Renderer(tok)
    assert renderer.close == "<|im_end|>\n"
    reply = [{"role": "user", "content": "Higher."}]
    assert renderer.segment(reply, True) == "<|im_start|>user\nHigher.<|im_end|>\n<|im_start|>assistant\n"
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(renderer.env_ids([5, eos], [eos], reply, False)) == "\n<|im_start|>user\nHigher.<|im_end|>\n"
    assert tok.decode(renderer.env_ids([5], [eos], [], False)) == "<|im_end|>\n"  # cut turn: the env closes it


def test_key_value_tools_and_rollout_metrics(chat_dir, policy):
    ep = collect_episodes(policy, KV, num_prompts=1, group_size=2, seed=0, max_new_tokens=6, max_turns=2)
    assert [t.num_turns for t in ep.trajectories] == [2, 2] and ep.stats["turns/invalid_rate"] == 1.0
    assert ep.stats["episodes/success_rate"] == 0.0 and "tools/success_rate" not in ep.stats
    # the oracle's tool calls (one per turn), and a second episode that calls an unknown key first
    env = textenv.make(KV)
    rows = textenv.make_task(KV).split("train")
    index = next(i for i, r in enumerate(rows) if not isinstance(r["store"][r["store"][r["start"]]], str))
    env.reset(seed=0, options={"split": "train", "index": index})  # a chain of 2 keys: 3 turns fit the context
    assert len(env.state.chain) == 2
    chain = env.state.chain
    oracle = [f'<tool_call>\n{{"name": "get", "arguments": {{"key": "{k}"}}}}\n</tool_call>' for k in chain]
    oracle.append(f'<tool_call>\n{{"name": "submit", "arguments": {{"value": {env.state.answer}}}}}\n</tool_call>')
    bad = '<tool_call>\n{"name": "get", "arguments": {"key": "nokey"}}\n</tool_call>'

    def script(call, row):
        return oracle[call] if row == 0 else (bad if call == 0 else "no tools")
    kv = scripted(chat_dir, script)
    room = max(len(kv.tokenizer(text)["input_ids"]) for text in [*oracle, bad]) + 1  # the context is 512
    ep = collect_episodes(kv, KV, group_size=2, seed=0, indices=[index], max_new_tokens=room, max_turns=len(oracle))
    good, poor = ep.trajectories
    assert good.success and good.rewards[-1] == 1.0 and good.num_turns == len(oracle) and not any(good.invalid)
    assert not poor.success and poor.num_turns == len(oracle) and all(poor.invalid)
    turns = 2 * len(oracle)
    assert ep.stats["turns/invalid_rate"] == len(oracle) / turns
    assert ep.stats["tools/calls_per_turn"] == (len(oracle) + 1) / turns
    assert ep.stats["tools/success_rate"] == len(oracle) / (len(oracle) + 1)
    # the env's tool results are env tokens, in the trajectory and out of the loss
    text = kv.tokenizer.decode([i for i, m in zip(good.ids, good.mask, strict=True) if not m])
    assert f"<|im_start|>tool\n{chain[1]}<|im_end|>" in text and "<|im_start|>tool\nsubmitted<|im_end|>" in text


def test_env_tokens_are_attended_to_but_get_exactly_zero_gradient(policy):
    ep = collect_episodes(policy, GUESS, num_prompts=2, group_size=2, seed=1, max_new_tokens=5, max_turns=3)
    batch, mask = ep.batch, ep.batch.completion_mask
    captured = {}

    def keep(module, args, out):
        out.retain_grad()
        captured["logits"] = out

    handle = policy.model.lm_head.register_forward_hook(keep)
    try:
        logps = policy.logprobs(batch)
    finally:
        handle.remove()
    assert torch.all(logps[mask == 0] == 0) and torch.all(logps[mask == 1] < 0)
    advantages = losses.group_advantages(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).flatten()
    loss, _ = losses.grpo_loss(logps, logps.detach(), advantages, mask, loss_type="dapo")
    assert torch.isfinite(loss)
    loss.backward()
    T = mask.shape[1]
    grad = captured["logits"].grad[:, :T]  # position j predicts completion token j
    assert torch.all(grad[mask == 0] == 0)  # env, tool and padding tokens: exactly zero
    assert grad[mask == 1].abs().sum(-1).gt(0).all()  # every sampled token gets a gradient
    # the env tokens are attended to and positioned: each row's log-probs are those of its unpadded sequence
    with torch.no_grad():
        for i, t in enumerate(ep.trajectories):
            ids = torch.tensor([t.all_ids])
            full = torch.log_softmax(policy.model(input_ids=ids).logits[0].float(), -1)
            P, n = len(t.prompt_ids), len(t.ids)
            alone = full[P - 1:P - 1 + n].gather(-1, ids[0, P:, None]).squeeze(-1) * torch.tensor(t.mask)
            torch.testing.assert_close(logps[i, :n].detach(), alone, atol=1e-5, rtol=1e-5)


def test_credit_assignment_by_hand():
    # three episodes of one group ending at turns 1, 3 and 2; garbage past each one's end must not matter
    rewards = torch.tensor([[2.0, 99.0, 99.0], [0.0, 1.0, 3.0], [1.0, -1.0, float("nan")]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]])
    assert losses.episode_returns(rewards, mask).tolist() == [2.0, 4.0, 0.0]
    returns = losses.discounted_returns(rewards, mask, gamma=0.5)
    # G_t = r_t + 0.5 G_{t+1}: [2]; [0 + 0.5*(1 + 0.5*3), 1 + 0.5*3, 3]; [1 + 0.5*(-1), -1]
    torch.testing.assert_close(returns, torch.tensor([[2.0, 0, 0], [1.25, 2.5, 3.0], [0.5, -1.0, 0]]))
    torch.testing.assert_close(losses.discounted_returns(rewards, mask, gamma=1.0),
                               torch.tensor([[2.0, 0, 0], [4.0, 4.0, 3.0], [0.0, -1.0, 0]]))
    turn_index = torch.tensor([[0, 0, -1, -1], [0, 1, 2, 2], [0, 1, 1, -1]])
    torch.testing.assert_close(losses.per_turn_to_tokens(returns, turn_index),
                               torch.tensor([[2.0, 2.0, 0, 0], [1.25, 2.5, 3.0, 3.0], [0.5, -1.0, -1.0, 0]]))


def test_episodes_rewards_match_the_credit_functions(chat_dir):
    target = guess_target(0)
    assert target != 1
    policy = scripted(chat_dir, lambda call, row: str(target) if (call, row) in {(0, 0), (1, 0)} else "1")
    ep = collect_episodes(policy, GUESS, group_size=3, seed=0, indices=[0], max_turns=3, max_new_tokens=8)
    assert [t.num_turns for t in ep.trajectories] == [1, 2, 3]
    returns = losses.discounted_returns(ep.turn_rewards, ep.turn_mask, gamma=0.9)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 0, 0], [0.9, 1.0, 0], [0.0, 0.0, 0.0]]))
    tokens = losses.per_turn_to_tokens(returns, ep.turn_index)
    second = ep.trajectories[1]
    n0 = second.turns.count(0)
    assert tokens[1, :n0].tolist() == pytest.approx([0.9] * n0)
    assert tokens[1, n0:len(second.ids)].tolist() == pytest.approx([1.0] * second.turns.count(1))


def test_one_grpo_step_on_a_multi_turn_env(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    agent = algos.make("grpo", policy, batch_size=2, group_size=2, max_new_tokens=4, beta=0.04, lr=1e-3)
    env = textenv.make(GUESS, max_turns=2)
    batch = agent.make_batch(env, np.random.default_rng(0))
    samples = batch.samples
    assert samples.completion_attention is not None and len(samples) == 4 and batch.groups == 2
    assert samples.num_tokens == int(samples.completion_mask.sum()) <= 4 * 2 * 4  # sampled tokens only
    assert samples.num_tokens < int(samples.completion_attention.sum())  # env tokens are not trained on
    captured = []

    def keep(module, args, out):
        if out.requires_grad:
            out.retain_grad()
            captured.append(out)

    before = [p.detach().clone() for p in policy.model.parameters()]
    handle = policy.model.lm_head.register_forward_hook(keep)
    try:
        stats = agent.optimizer_step(batch)
    finally:
        handle.remove()
    assert np.isfinite(stats["loss"]) and np.isfinite(stats["grad_norm"])
    (logits,) = captured
    mask = samples.completion_mask
    grad = logits.grad[:, :mask.shape[1]]
    assert torch.all(grad[mask == 0] == 0)
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.model.parameters(), strict=True))
    record = algos.make("grpo", Policy.from_pretrained(chat_dir), batch_size=2, group_size=2, max_new_tokens=4) \
        .update(env, np.random.default_rng(0))
    assert np.isfinite(record["loss"]) and "episodes/success_rate" in record


def test_lock_step_runs_a_turn_for_another_process_and_keeps_only_this_ones_episodes(chat_dir):
    """Under a sharded model every process must run every turn's generate. This process's episodes end after
    one turn (max_turns=1) while, says ``lock_step``, another process plays two more: two more generate calls
    of a stand-in run here, and the episodes are exactly those played without lock-step."""
    policy = Policy.from_pretrained(chat_dir)
    asked, calls = [], []
    generate = policy.generate

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return generate(*args, **kwargs)

    def lock_step(live_here: bool) -> bool:
        asked.append(live_here)
        return live_here or len(asked) <= 3  # the other process is live for three turns

    settings = {"num_prompts": 2, "group_size": 2, "seed": 3, "max_new_tokens": 4, "max_turns": 1}
    alone = collect_episodes(policy, GUESS, **settings)
    policy.generate = counted
    in_step = collect_episodes(policy, GUESS, **settings, lock_step=lock_step)
    assert asked == [True, False, False, False] and calls == [4, 1, 1]
    assert [t.all_ids for t in in_step.trajectories] == [t.all_ids for t in alone.trajectories]
    assert [t.mask for t in in_step.trajectories] == [t.mask for t in alone.trajectories]
    assert all(t.num_turns == 1 for t in in_step.trajectories)
