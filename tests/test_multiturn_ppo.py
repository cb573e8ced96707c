"""PPO on multi-turn trajectories: turn rewards on each turn's last sampled token, GAE over the model's tokens
only, whitening and losses over the loss mask, exactly zero gradient on the env's tokens, one process."""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np
import pytest
import torch

import algos
import textenv
from algos import losses as L
from algos.multiturn import collect_episodes
from algos.policy import Policy
from algos.tiny_chat import build_tiny_chat_model
from textenv.multiturn import MultiTurnEnv
from textenv.tasks import GuessNumber

GUESS = "textenv/GuessNumber-v0"
SMALL = dict(batch_size=2, group_size=2, max_new_tokens=6)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ pure functions
def test_each_turns_reward_lands_on_its_last_sampled_token():
    # row 0: two turns (sampled, sampled, env, env | sampled, sampled, env), then padding
    # row 1: one turn, ended early; garbage in the turns it never played must not matter
    # row 2: turn 1 has no sampled token, so its reward goes to the last sampled token before it
    turn_index = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1], [0, 0, 0, 0, -1, -1, -1, -1], [0, 0, 1, 1, 2, 2, -1, -1]])
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 1, 0, 0, 0]])
    turn_rewards = t([[0.5, 2.0, 99.0], [3.0, float("nan"), 7.0], [1.0, 2.0, 4.0]])
    turn_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    placed = L.per_turn_to_last_token(turn_rewards, turn_mask, turn_index, mask)
    want = [[0, 0.5, 0, 0, 0, 2.0, 0, 0], [0, 0, 3.0, 0, 0, 0, 0, 0], [3.0, 0, 0, 0, 4.0, 0, 0, 0]]
    assert torch.equal(placed, t(want))


def test_turn_token_rewards_kl_on_model_tokens_only_and_whitening_over_the_loss_mask():
    turn_index = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1], [0, 0, 0, 0, -1, -1, -1, -1]])
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    turn_rewards, turn_mask = t([[0.5, 2.0], [3.0, 0.0]]), torch.tensor([[1, 1], [1, 0]])
    g = 9.0  # what a log-prob at an env token would be if it were not masked: it must not count
    logps = t([[-1.0, -2.0, g, g, -0.5, -1.0, g, g], [-0.3, -1.0, -2.0, g, g, g, g, g]])
    ref = t([[-1.5, -1.0, 0, 0, -0.5, -2.0, 0, 0], [-0.1, -1.0, -1.0, 0, 0, 0, 0, 0]])
    rewards, kl = L.ppo_turn_token_rewards(turn_rewards, turn_mask, turn_index, logps, ref, mask, kl_coef=0.1)
    # k1 KL = logp - ref on model tokens: [0.5, -1, 0, 1], [-0.2, 0, -1]; reward -0.1 KL + each turn's reward
    torch.testing.assert_close(kl, t([[0.5, -1.0, 0, 0, 0, 1.0, 0, 0], [-0.2, 0, -1.0, 0, 0, 0, 0, 0]]))
    expected = [[-0.05, 0.1 + 0.5, 0, 0, 0, -0.1 + 2.0, 0, 0], [0.02, 0, 0.1 + 3.0, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(rewards, t(expected))
    whitened, _ = L.ppo_turn_token_rewards(turn_rewards, turn_mask, turn_index, logps, ref, mask, kl_coef=0.1,
                                           whiten=True)
    model = [-0.05, 0.6, 0.0, 1.9, 0.02, 0.0, 3.1]  # the 7 model tokens; the 9 env/padding tokens are not data
    mean, var = statistics.fmean(model), statistics.variance(model)
    want = [[0.0] * 8 for _ in range(2)]
    for (row, col), x in zip([(0, 0), (0, 1), (0, 4), (0, 5), (1, 0), (1, 1), (1, 2)], model, strict=True):
        want[row][col] = (x - mean) / math.sqrt(var + 1e-8) + mean
    torch.testing.assert_close(whitened, t(want))


def test_one_turn_gets_single_turn_ppos_token_rewards():
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    logps, ref = -torch.rand(3, 5, generator=gen), -torch.rand(3, 5, generator=gen)
    scores = torch.tensor([1.5, -0.5, 2.0])
    turn_index = torch.where(mask.bool(), 0, -1)
    for whiten in (False, True):
        single, single_kl = L.ppo_token_rewards(scores, logps, ref, mask, kl_coef=0.2, kl_kind="k3", whiten=whiten)
        turns, turns_kl = L.ppo_turn_token_rewards(scores[:, None], torch.ones(3, 1), turn_index, logps, ref, mask,
                                                   kl_coef=0.2, kl_kind="k3", whiten=whiten)
        assert torch.equal(turns, single) and torch.equal(turns_kl, single_kl)


def test_packed_gae_by_hand_skips_env_tokens_and_padding():
    inf, nan = float("inf"), float("nan")  # garbage at env tokens and padding must change nothing
    # row 0: two turns [s s | env env | s | env]; row 1: one turn [s s | env], then padding
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0]])
    rewards = t([[0.0, 1.0, inf, nan, 2.0, nan], [0.0, 3.0, nan, inf, inf, nan]])
    values = t([[1.0, 2.0, nan, 9.0, 3.0, inf], [2.0, 1.0, 9.0, nan, nan, inf]])
    advantages, returns = L.packed_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    # row 0 packed: r = [0, 1, 2], V = [1, 2, 3]; the value after the last model token is 0
    #   d2 = 2 - 3 = -1                  A2 = -1
    #   d1 = 1 + 0.5*3 - 2 = 0.5         A1 = 0.5 + 0.25*(-1) = 0.25   (turn 0 bootstraps from turn 1's first value)
    #   d0 = 0 + 0.5*2 - 1 = 0           A0 = 0 + 0.25*0.25 = 0.0625
    # row 1 packed: r = [0, 3], V = [2, 1]
    #   d1 = 3 - 1 = 2                   A1 = 2
    #   d0 = 0 + 0.5*1 - 2 = -1.5        A0 = -1.5 + 0.25*2 = -1
    assert torch.equal(advantages, t([[0.0625, 0.25, 0, 0, -1.0, 0], [-1.0, 2.0, 0, 0, 0, 0]]))
    assert torch.equal(returns, t([[1.0625, 2.25, 0, 0, 2.0, 0], [1.0, 3.0, 0, 0, 0, 0]]))
    # plain gae steps through the env tokens: turn 0's last token would bootstrap from an env token's value
    plain, _ = L.gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert plain[0, 1] != advantages[0, 1] and torch.equal(plain[1], advantages[1])


def carried_gae(rewards, values, mask, gamma, lam):
    """An independent formula (verl's multi-turn GAE): one backward pass over all tokens that carries the
    next value and the running advantage over the tokens outside the mask."""
    N, T = mask.shape
    advantages = torch.zeros(N, T, dtype=torch.float64)
    for n in range(N):
        next_value = running = 0.0
        for i in reversed(range(T)):
            if mask[n, i]:
                running = rewards[n, i] + gamma * next_value - values[n, i] + gamma * lam * running
                next_value = values[n, i].item()
                advantages[n, i] = running
    return advantages


def test_packed_gae_equals_a_loop_that_carries_over_env_tokens_and_gae_on_single_turn_rows():
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(5, 13, generator=gen) < 0.6).long()
    mask[0] = 0  # a row without model tokens
    mask[1, -3:] = 0  # trailing env tokens and padding
    rewards = torch.randn(5, 13, generator=gen, dtype=torch.float64)
    values = torch.randn(5, 13, generator=gen, dtype=torch.float64)
    advantages, returns = L.packed_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = carried_gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, torch.where(mask.bool(), expected + values, 0.0))
    prefix = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])  # single-turn: no env tokens
    for got, want in zip(L.packed_gae(rewards[:3, :5], values[:3, :5], prefix, 0.9, 0.8),
                         L.gae(rewards[:3, :5], values[:3, :5], prefix, 0.9, 0.8), strict=True):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------------ the agent
class PaidGuessNumber(GuessNumber):
    """GuessNumber-v0 that also pays 0.5 on every turn: a reward whatever the untrained tiny model writes (it
    almost never finds the number), so the step has known rewards and a gradient."""

    def respond(self, state, message):
        reply = super().respond(state, message)
        return dataclasses.replace(reply, reward=reply.reward + 0.5)


@pytest.fixture(scope="module")
def chat_dir():
    return build_tiny_chat_model()


def expected_episodes(policy, env, seed=0):
    """The episodes make_batch must play: its generator's first draw seeds them, one env per episode."""
    envs = [MultiTurnEnv(env.task, split=env.split, max_turns=env.max_turns) for _ in range(4)]
    seed = int(np.random.default_rng(seed).integers(2**31))
    return collect_episodes(policy, envs, num_prompts=2, group_size=2, seed=seed, split=env.split, max_new_tokens=6,
                            temperature=0.7)


def test_make_batch_puts_turn_rewards_on_model_tokens_and_whitens_over_the_loss_mask(chat_dir):
    agent = algos.make("ppo", Policy.from_pretrained(chat_dir), **SMALL, kl_coef=0.0, gamma=0.9, lam=0.5)
    torch.nn.init.normal_(agent.value_head.weight, std=0.5)  # values that differ from token to token
    env = MultiTurnEnv(PaidGuessNumber(), max_turns=3)
    episodes = expected_episodes(agent.policy, env)
    with torch.no_grad():
        batch = agent.make_batch(env, np.random.default_rng(0))
    samples, mask = batch.samples, batch.samples.completion_mask
    assert torch.equal(samples.completion_ids, episodes.batch.completion_ids) and batch.groups == 2
    assert torch.equal(mask, episodes.batch.completion_mask)
    assert int(mask.sum()) < int(samples.completion_attention.sum())  # there are env tokens
    assert {k: batch.stats[k] for k in episodes.stats} == episodes.stats
    assert batch.stats["score/mean"] == pytest.approx(float(np.mean([e.episode_return for e in episodes.trajectories])))
    # the token rewards from the trajectories' facts: turn k's reward on the last token the model sampled in it
    rewards = torch.zeros(mask.shape, dtype=torch.float64)
    for row, e in enumerate(episodes.trajectories):
        assert all(r >= 0.5 for r in e.rewards)
        for k, reward in enumerate(e.rewards):
            last = max(i for i, (turn, m) in enumerate(zip(e.turns, e.mask, strict=True)) if m and turn == k)
            rewards[row, last] = reward
    values = batch.old_values.double()
    want = carried_gae(rewards, values, mask, 0.9, 0.5)
    torch.testing.assert_close(batch.returns, torch.where(mask.bool(), want + values, 0.0).float())  # float32
    model = want[mask.bool()].tolist()
    mean, std = statistics.fmean(model), math.sqrt(statistics.variance(model) + 1e-8)
    torch.testing.assert_close(batch.advantages, torch.where(mask.bool(), (want - mean) / std, 0.0).float())


def test_the_ppo_gradient_on_env_tokens_is_exactly_zero(chat_dir):
    agent = algos.make("ppo", Policy.from_pretrained(chat_dir), **SMALL, lam=0.9, gamma=0.99)
    torch.nn.init.normal_(agent.value_head.weight, std=0.5)  # non-zero values: the value loss is live too
    with torch.no_grad():
        batch = agent.make_batch(MultiTurnEnv(PaidGuessNumber(), max_turns=3), np.random.default_rng(1))
    captured = []

    def keep(module, args, out):  # the last layer's output feeds both the LM head and the value head
        out = out[0] if isinstance(out, tuple) else out
        if out.requires_grad:
            out.retain_grad()
            captured.append(out)

    handle = agent.policy.model.model.layers[-1].register_forward_hook(keep)
    try:
        stats = agent.optimizer_step(batch)
    finally:
        handle.remove()
    assert np.isfinite(stats["loss"]) and stats["value_loss"] > 0 and stats["grad_norm"] > 0
    (hidden,) = captured
    samples = batch.samples
    P, T = samples.prompt_ids.shape[1], samples.completion_ids.shape[1]
    grad = hidden.grad[:, P - 1:P - 1 + T]  # position P-1+j predicts completion token j and holds its value
    mask = samples.completion_mask
    assert torch.all(grad[mask == 0] == 0)  # env tokens and padding: exactly zero, from both heads
    assert grad[mask == 1].abs().sum(-1).gt(0).all()  # every sampled token gets a gradient
    assert int((samples.completion_attention - mask).sum()) > 0  # and there were env tokens to check


def test_one_ppo_update_on_guess_number_reports_episode_stats_and_trains(chat_dir):
    env = textenv.make(GUESS, max_turns=2)
    policy = Policy.from_pretrained(chat_dir)
    episodes = expected_episodes(policy, env)
    record = algos.make("ppo", policy, **SMALL).update(env, np.random.default_rng(0))
    for key in ("episodes/success_rate", "episodes/turns", "reward/mean", "tokens/env", "turns/invalid_rate"):
        assert record[key] == episodes.stats[key], key
    assert 1 <= record["episodes/turns"] <= 2 and record["tokens/env"] > 0
    for key in ("loss", "policy_loss", "value_loss", "kl", "grad_norm"):
        assert np.isfinite(record[key]), key
    # GuessNumber's reward on the untrained model is almost always 0 (no gradient); with a reward on every
    # turn, one update moves the policy and the value head (no weight decay: only gradients move them)
    agent = algos.make("ppo", Policy.from_pretrained(chat_dir), **SMALL, weight_decay=0.0)
    before = [p.detach().clone() for p in agent.policy.model.parameters()]
    record = agent.update(MultiTurnEnv(PaidGuessNumber(), max_turns=2), np.random.default_rng(0))
    assert record["score/mean"] >= 1.0 and record["grad_norm"] > 0
    assert agent.value_head.weight.abs().sum() > 0  # it started at exactly zero
    assert any(not torch.equal(a, p) for a, p in zip(before, agent.policy.model.parameters(), strict=True))


