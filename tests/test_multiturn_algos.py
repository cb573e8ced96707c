"""SFT, GRAO and DPO on multi-turn envs (oracle demonstrations as y, SPIN pairs), and per-turn credit for GRPO."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import algos
import textenv
from algos import losses, tiny
from algos.agent import ConfigError
from algos.multiturn import collect_demonstrations, collect_episodes, copies
from algos.policy import Policy
from algos.tiny_chat import build_tiny_chat_model

GUESS, KV = "textenv/GuessNumber-v0", "textenv/KeyValue-v0"


@pytest.fixture(scope="module")
def chat_dir():
    return build_tiny_chat_model()


def byte_policy(env_id: str) -> Policy:
    """A random tiny Llama with the byte tokenizer and chat template of a multi-turn task's tiny base model."""
    task = textenv.make_task(env_id)
    torch.manual_seed(0)
    return Policy(tiny.build_model(tiny.default_recipe(env_id)), tiny.tokenizer_for(task))


def test_turn_advantages_by_hand():
    # group 0: A plays 3 turns (reward 1 at the end), B plays 2 (reward 1 at the end); gamma = 0.5
    #   A: G = [0.25, 0.5, 1]   B: G = [0.5, 1]
    #   turn 0: {0.25, 0.5} mean 0.375, std sqrt(2 * 0.125^2 / 1) = 0.17678 -> -0.7071, +0.7071
    #   turn 1: {0.5, 1.0}  mean 0.75,  std 0.35355                       -> -0.7071, +0.7071
    #   turn 2: A alone -> 0
    # group 1: two episodes that went alike (and garbage past their end) -> exact zeros
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 7.0], [1.0, 0.0, 0.0], [1.0, 0.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
    adv = losses.turn_advantages(rewards, mask, group_size=2, gamma=0.5, eps=0.0)
    r = 2 ** -0.5
    torch.testing.assert_close(adv, torch.tensor([[-r, -r, 0.0], [r, r, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    centered = losses.turn_advantages(rewards, mask, group_size=2, gamma=0.5, scale="none")
    torch.testing.assert_close(centered, torch.tensor([[-0.125, -0.25, 0], [0.125, 0.25, 0], [0, 0, 0], [0, 0, 0.0]]))
    # "batch": every played turn's G_k of the batch: [0.25, .5, 1, .5, 1, 1, 0, 1, 0] (group 1: G = [1, 0])
    played = torch.tensor([0.25, 0.5, 1, 0.5, 1, 1, 0, 1, 0])
    batch = losses.turn_advantages(rewards, mask, group_size=2, gamma=0.5, scale="batch", eps=0.0)
    torch.testing.assert_close(batch, centered / played.std())
    with pytest.raises(ValueError, match="group_size=3"):
        losses.turn_advantages(rewards, mask, group_size=3)


def test_per_turn_credit_at_gamma_one_with_a_final_reward_is_the_outcome_advantage():
    # groups whose episodes all play 3 turns with one reward at the end: every turn gets the episode's advantage
    final = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.2, 0.2, 0.2, 0.2]])
    rewards = torch.zeros(8, 3)
    rewards[:, 2] = final.flatten()
    adv = losses.turn_advantages(rewards, torch.ones(8, 3, dtype=torch.long), group_size=4, gamma=1.0)
    outcome = losses.group_advantages(final).flatten()
    torch.testing.assert_close(adv, outcome[:, None].expand(8, 3))
    assert torch.all(adv[4:] == 0)


def test_demonstrations_are_the_oracle_playing_the_episodes_of_each_group(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    rows = [3, 11]
    episodes = collect_episodes(policy, GUESS, num_prompts=2, group_size=2, seed=5, indices=rows, max_new_tokens=4,
                                max_turns=3)
    demos = collect_demonstrations(policy, GUESS, num_prompts=2, seed=5, indices=rows)
    eos = policy.tokenizer.eos_token_id
    for b, demo in enumerate(demos.trajectories):
        assert demo.messages[0] == episodes.trajectories[2 * b].messages[0] and demo.prompt_ids == \
            episodes.trajectories[2 * b].prompt_ids
        env = textenv.make(GUESS)  # the oracle's moves replayed on the task: bisection until the number is found
        env.reset(options={"index": rows[b]})
        moves, done = [], False
        while not done:
            moves.append(env.oracle())
            _, _, done, _, _ = env.step(moves[-1])
        assert demo.texts == moves and demo.episode_return == 1.0 and demo.success
        for sampled, text in zip(demo.sampled, demo.texts, strict=True):
            assert sampled == policy.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        assert sum(demo.mask) == sum(len(s) for s in demo.sampled)
    assert demos.returns.shape == (2, 1) and torch.all(demos.returns == 1.0)


@pytest.mark.parametrize("env_id", [GUESS, KV])
def test_demonstrations_through_the_tiny_multiturn_template_do_not_drift(env_id):
    policy = byte_policy(env_id)
    envs = [textenv.make(env_id, n_train=3, n_eval=1) for _ in range(3)]  # a small task: quick to build
    demos = collect_demonstrations(policy, envs, num_prompts=3, seed=0, check_drift=True)
    assert all(d.first_difference is None and d.num_different == 0 for d in demos.drift)
    assert all(t.success for t in demos.trajectories)
    text = policy.tokenizer.decode(demos.trajectories[0].all_ids)
    assert text.startswith("<bos>") and "<eos>\n" in text
    if env_id == KV:
        assert text.startswith("<bos>tools: get, submit\nuser: ") and "\ntool: " in text


def test_a_small_multiturn_corpus_plays_each_row_several_times_with_other_noise():
    """A task of 86 train rows is played as 24 x 86 = 2,064 conversations (MULTITURN_DOCUMENTS = 2,000), each
    row's copies with other noisy moves; a task of 2,000 rows or more plays each once (the shipped corpora)."""
    from algos.tiny import GUESS_NUMBER_SMALL, MULTITURN_DOCUMENTS, multiturn_documents

    task = textenv.make(GUESS, **GUESS_NUMBER_SMALL).unwrapped.task
    docs = multiturn_documents(task, seed=0)
    rows = len(task.split("train"))
    assert rows == 86 and len(docs) == 24 * rows and len(docs) >= MULTITURN_DOCUMENTS
    copies = [docs[i] for i in range(0, len(docs), rows)]  # every copy of the first row
    assert len(set(copies)) > 1  # the noise differs between copies
    assert all(c.startswith(copies[0].split("\n")[0]) for c in copies)  # ... and the row (its prompt) does not
    assert len(multiturn_documents(textenv.make(GUESS).unwrapped.task, seed=0)) == 2000


def capture_logit_grads(policy: Policy):
    """Keep the lm_head output of every forward pass with its gradient (a list, one per pass)."""
    outputs = []

    def keep(module, args, out):
        out.retain_grad()
        outputs.append(out)

    return outputs, policy.model.lm_head.register_forward_hook(keep)


def assert_env_tokens_get_zero_gradient(outputs, batches):
    for out, batch in zip(outputs, batches, strict=True):
        T, mask = batch.completion_ids.shape[1], batch.completion_mask
        grad = out.grad[:, :T]  # position j predicts completion token j
        assert torch.all(grad[mask == 0] == 0)  # env, tool and padding tokens: exactly zero
        assert grad[mask == 1].abs().sum(-1).gt(0).any()
        assert (batch.completion_attention.sum() > mask.sum())  # there were env tokens to leave out


@pytest.mark.parametrize("algo", ["sft", "grao", "dpo"])
def test_one_step_on_a_multi_turn_env_trains_only_on_the_models_tokens(chat_dir, algo):
    policy = Policy.from_pretrained(chat_dir)
    settings = {"group_size": 2} if algo == "grao" else {}
    agent = algos.make(algo, policy, seed=0, batch_size=2, max_new_tokens=4, lr=1e-3, **settings)
    env = textenv.make(GUESS)  # 10 turns: enough for the oracle, so GRAO's y succeeds and A_i != 0
    batch = agent.make_batch(env, np.random.default_rng(0))
    outputs, handle = capture_logit_grads(policy)
    try:
        loss, _ = agent.loss(batch, algos.agent.StepTotals.of(batch))
    finally:
        handle.remove()
    loss.backward()
    if algo == "sft":
        batches = [batch.answers]
    elif algo == "grao":
        batches = [batch.samples, batch.answers]
        assert batch.rewards.shape == (2, 2) and batch.answer_rewards.tolist() == [1.0, 1.0]
    else:
        batches = [batch.pairs[torch.tensor([0, 2, 1, 3])]]  # DPO scores chosen rows, then rejected, in one pass
        assert len(batch.pairs) == 4 and batch.ref_logps.shape == (2, 2)
    assert_env_tokens_get_zero_gradient(outputs, batches)
    before = [p.detach().clone() for p in policy.model.parameters()]
    history = agent.learn(env, max_steps=1, progress=False)
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.model.parameters(), strict=True))
    assert "loss" in history[-1]


def test_grao_imitates_the_oracle_and_scores_it_with_its_return(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    agent = algos.make("grao", policy, seed=0, batch_size=2, group_size=2, max_new_tokens=4)
    batch = agent.make_batch(textenv.make(GUESS), np.random.default_rng(3))
    # default max_turns (10) lets bisection finish: y always succeeds; the random model's episodes rarely do
    assert batch.answer_rewards.tolist() == [1.0, 1.0]
    assert batch.stats["reward/reference_mean"] == 1.0
    assert batch.rewards.shape == (2, 2)


def test_grpo_per_turn_credit(chat_dir):
    policy = Policy.from_pretrained(chat_dir)
    with pytest.raises(ConfigError, match="credit"):
        algos.make("grpo", policy, credit="per_step")
    agent = algos.make("grpo", policy, seed=0, batch_size=2, group_size=2, max_new_tokens=4, credit="per_turn",
                       turn_gamma=0.5, beta=0.0)
    env = textenv.make(GUESS, max_turns=3)
    batch = agent.make_batch(env, np.random.default_rng(0))
    # the same episodes again (the step's seed is the first draw of its generator), credited by hand's functions
    episodes = collect_episodes(policy, copies(env, 4), num_prompts=2, group_size=2, split="train",
                                seed=int(np.random.default_rng(0).integers(2**31)), max_new_tokens=4)
    expected = losses.per_turn_to_tokens(losses.turn_advantages(episodes.turn_rewards, episodes.turn_mask, 2, 0.5),
                                         episodes.turn_index)
    assert batch.advantages.shape == batch.samples.completion_ids.shape  # one advantage per token
    torch.testing.assert_close(batch.advantages, expected)
    loss, _ = agent.loss(batch, algos.agent.StepTotals.of(batch))
    assert torch.isfinite(loss)


def test_rank_1_of_2_plays_and_demonstrates_the_second_half_of_the_step_one_process_plays(chat_dir):
    """Agent.play / Agent.demonstrate on rank 1 of 2 (shares only, no collective): the last half of the step's
    groups, reset and sampled as the one-process run with generation_chunk = the share plays them."""
    from algos.engine import Engine

    env = textenv.make(GUESS, max_turns=3)
    settings = {"batch_size": 4, "group_size": 2, "max_new_tokens": 4, "generation_chunk": 2}
    one = algos.make("grpo", Policy.from_pretrained(chat_dir), **settings)
    rank1 = algos.make("grpo", Policy.from_pretrained(chat_dir), **settings, engine=Engine(rank=1, world_size=2))
    whole, half = one.play(env, 7, group_size=2), rank1.play(env, 7, group_size=2)
    assert len(whole.trajectories) == 8 and len(half.trajectories) == 4
    assert [t.all_ids for t in half.trajectories] == [t.all_ids for t in whole.trajectories[4:]]
    assert [t.mask for t in half.trajectories] == [t.mask for t in whole.trajectories[4:]]
    assert [t.group for t in half.trajectories] == [0, 0, 1, 1]  # groups numbered within this rank's batch
    assert [t.all_ids for t in whole.trajectories[:4]] != [t.all_ids for t in whole.trajectories[4:]]
    torch.testing.assert_close(half.returns, whole.returns[2:])
    shown, shown_half = one.demonstrate(env, 7), rank1.demonstrate(env, 7)
    assert [t.messages for t in shown_half.trajectories] == [t.messages for t in shown.trajectories[2:]]
    assert shown.trajectories[2].messages[0] == whole.trajectories[4].messages[0]  # the same episode as sampled
    # the whole step in one call plays other samples (one generate per turn), the same rows and states
    unchunked = algos.make("grpo", Policy.from_pretrained(chat_dir), **{**settings, "generation_chunk": None})
    other = unchunked.play(env, 7, group_size=2)
    assert [t.messages[0] for t in other.trajectories] == [t.messages[0] for t in whole.trajectories]
    with pytest.raises(ValueError, match=r"3 prompt groups of a step cannot be split evenly over 2 processes"):
        algos.make("grpo", Policy.from_pretrained(chat_dir), **{**settings, "batch_size": 3},
                   engine=Engine(rank=1, world_size=2)).play(env, 7, group_size=2)


def test_the_training_command_trains_on_a_multi_turn_env_from_its_tiny_base(tmp_path, capsys):
    """``python -m algos.train`` with a multi-turn env id: the task's shipped tiny base, episodes, a saved agent."""
    from algos.train import main

    out = tmp_path / "run"
    main(["sft", "--env", GUESS, "--steps", "2", "--quiet", "--out", str(out), "--eval-every", "2",
          "--eval-prompts", "4", "--set", "batch_size=2", "--set", "max_new_tokens=4"])
    assert "sft: step 2 on 1 process(es)" in capsys.readouterr().out
    assert algos.Agent.load(out / "final").step == 2
    last = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and last["demonstrations/turns"] > 1 and 0.0 <= last["eval/success_rate"] <= 1.0
