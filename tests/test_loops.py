"""Loop-level checks of the online algorithms: what make_batch builds and what loss() differentiates."""

import math
import statistics

import numpy as np
import pytest
import torch
from conftest import random_policy

import algos
import textenv
from algos import losses as L


@pytest.fixture(scope="module")
def env():
    return textenv.make("textenv/Arithmetic-v0")


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ PPO rewards
def test_ppo_token_rewards_kl_sign_and_score_on_the_last_real_token():
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    logps = t([[-1.0, -2.0, -0.5, 0.0], [-0.3, 0.0, 0.0, 0.0]])
    ref = t([[-1.5, -1.0, -0.5, 0.0], [-0.1, 0.0, 0.0, 0.0]])
    rewards, kl = L.ppo_token_rewards(t([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    # k1 KL = logp - ref: [0.5, -1, 0], [-0.2]; reward = -0.1 * KL, plus the score on the last real token
    assert torch.allclose(kl, t([[0.5, -1.0, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, t([[-0.05, 0.1, 2.0, 0.0], [0.02 - 1.0, 0.0, 0.0, 0.0]]))


def test_ppo_whiten_rewards_keeps_the_reward_level():
    """TRL's whiten_rewards rescales token rewards without removing their mean: scores [0,1,1] and [1,2,2]
    must give different rewards (a mean-removing standardisation would make them identical)."""
    mask = torch.ones(3, 2, dtype=torch.float64)
    zeros = torch.zeros(3, 2, dtype=torch.float64)
    low, _ = L.ppo_token_rewards(t([0.0, 1.0, 1.0]), zeros, zeros, mask, kl_coef=0.0, whiten=True)
    high, _ = L.ppo_token_rewards(t([1.0, 2.0, 2.0]), zeros, zeros, mask, kl_coef=0.0, whiten=True)
    assert not torch.allclose(low, high)
    for scores, got in (([0, 1, 1], low), ([1, 2, 2], high)):
        tokens = [0, scores[0], 0, scores[1], 0, scores[2]]
        mean, var = statistics.fmean(tokens), statistics.variance(tokens)  # unbiased, as TRL
        expected = [(x - mean) / math.sqrt(var + 1e-8) + mean for x in tokens]
        assert got.flatten().tolist() == pytest.approx(expected)
    assert high.mean() > low.mean()  # the level survives


def test_adaptive_kl_controller_by_hand():
    # error = clip(0.3 / 0.1 - 1, -0.2, 0.2) = 0.2; coef *= 1 + 0.2 * 64 / 1000
    assert L.adaptive_kl_coef(0.05, 0.3, 0.1, 64, 1000) == pytest.approx(0.05 * (1 + 0.2 * 64 / 1000))
    # error = 0.09 / 0.1 - 1 = -0.1
    assert L.adaptive_kl_coef(0.05, 0.09, 0.1, 10, 100) == pytest.approx(0.05 * (1 - 0.1 * 10 / 100))


def test_ppo_loop_assembles_rewards_from_its_rollout(env, monkeypatch):
    """make_batch scores with the policy and its reference, puts the sequence reward on the last token and
    updates the adaptive coefficient after the rewards are made."""
    agent = algos.make("ppo", random_policy(), batch_size=2, group_size=2, max_new_tokens=4, kl_coef=0.2,
                       target_kl=0.01, kl_horizon=100)
    seen = {}
    real = L.ppo_token_rewards

    def spy(scores, logps, ref_logps, mask, kl_coef, kl_kind="k1", whiten=False):
        seen.update(scores=scores.clone(), kl_coef=kl_coef)
        return real(scores, logps, ref_logps, mask, kl_coef, kl_kind, whiten)

    monkeypatch.setattr(L, "ppo_token_rewards", spy)
    record = agent.learn(env, 1, progress=False)[0]
    assert seen["kl_coef"] == 0.2  # this rollout used the coefficient it started with
    assert seen["scores"].mean().item() == pytest.approx(record["score/mean"])
    # the first rollout is on-policy and the reference is the starting policy: KL 0, error clipped at -0.2
    assert record["kl"] == pytest.approx(0.0, abs=1e-6)
    assert agent.kl_coef == pytest.approx(0.2 * (1 - 0.2 * 4 / 100))


# ------------------------------------------------------------------------------------------------ GRPO
def test_grpo_scale_rewards_inside_the_loop(env, monkeypatch):
    rewards = np.array([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])  # group 1 mixed, group 2 all equal

    def score(examples, completions, completion_ids=None):
        return rewards[:len(completions)], {}

    monkeypatch.setattr(env.unwrapped, "score", score)
    for scale in ("group", "batch", "none"):
        agent = algos.make("grpo", random_policy(), batch_size=2, group_size=3, max_new_tokens=3,
                           scale_rewards=scale)
        with torch.no_grad():
            batch = agent.make_batch(env, np.random.default_rng(0))
        centered = [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]
        std = {"group": [math.sqrt(1 / 3)] * 3 + [0.0] * 3, "batch": [float(np.std(rewards, ddof=1))] * 6,
               "none": [None] * 6}[scale]
        expected = [c if s is None else c / (s + 1e-4) for c, s in zip(centered, std, strict=True)]
        assert batch.advantages.tolist() == pytest.approx(expected), scale


def test_grpo_clipped_tokens_get_no_gradient_in_the_loop(env):
    """Second pass over a rollout (num_iterations > 1): the ratio has moved away from 1, and tokens whose
    ratio left the clip range on the side of their advantage contribute no gradient."""
    agent = algos.make("grpo", random_policy(), batch_size=2, group_size=4, max_new_tokens=4, beta=0.0,
                       num_iterations=2, clip_eps=0.05, lr=0.05)
    with torch.no_grad():
        batch = agent.make_batch(env, np.random.default_rng(1))
    batch.fields["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.0, -1.0])
    agent.optimizer_step(batch)  # the first pass moves the policy
    mask = batch.samples.completion_mask.bool()
    logps = agent.policy.logprobs(batch.samples, agent.config.temperature).detach().requires_grad_(True)
    loss, stats = L.grpo_loss(logps, batch.old_logps, batch.advantages, batch.samples.completion_mask,
                              clip_eps=0.05)
    loss.backward()
    ratio = torch.exp(logps.detach() - batch.old_logps)
    adv = batch.advantages[:, None]
    clipped = ((ratio > 1.05) & (adv > 0)) | ((ratio < 0.95) & (adv < 0))
    assert (clipped & mask).any() and (~clipped & mask).any()
    assert torch.all(logps.grad[clipped & mask] == 0)
    assert torch.all(logps.grad[~clipped & mask] != 0)
    assert stats["clip_ratio"] == pytest.approx((clipped & mask).sum().item() / mask.sum().item())


# ------------------------------------------------------------------------------------------------ GRAO
@pytest.mark.parametrize(("value", "ok"), [("sampling", True), (1.0, True), (0.5, True), ("hot", False),
                                           (0.0, False), (True, False)])
def test_grao_score_temperature_values(value, ok):
    if ok:
        assert algos.GRAOConfig(score_temperature=value).score_temperature == value
    else:
        with pytest.raises(algos.ConfigError, match="score_temperature"):
            algos.GRAOConfig.from_dict({"score_temperature": value})


@pytest.mark.parametrize("score_temperature", ["sampling", 1.0])
def test_grao_scores_at_the_configured_temperature(env, score_temperature):
    agent = algos.make("grao", random_policy(), batch_size=2, group_size=3, max_new_tokens=3, temperature=0.7,
                       score_temperature=score_temperature)
    with torch.no_grad():
        batch = agent.make_batch(env, np.random.default_rng(0))
        loss, _ = agent.loss(batch, algos.StepTotals.of(batch))
        temperature = 0.7 if score_temperature == "sampling" else 1.0
        ll = L.sequence_logprob(agent.policy.logprobs(batch.samples, temperature), batch.samples.completion_mask)
        lly = L.sequence_logprob(agent.policy.logprobs(batch.answers, temperature), batch.answers.completion_mask)
        expected, _ = L.grao_loss(ll.view(2, 3), lly, batch.rewards, batch.answer_rewards)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
