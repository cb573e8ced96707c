"""PPO on multi-turn trajectories: turn rewards on each turn's last sampled token, GAE over the model's tokens only."""

from __future__ import annotations

import math
import statistics

import torch

from algos import losses as L


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
