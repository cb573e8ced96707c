"""Tests for algos/losses.py. Expected numbers are worked by hand (arithmetic written out) or come from
plain-loop re-implementations in this file; none is copied from the code's own output."""

import math
import statistics

import pytest
import torch

from algos import losses as L

GARBAGE = (1e30, -1e30, float("inf"), float("-inf"), float("nan"))


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def close(x, expected):
    return torch.allclose(x.detach(), t(expected), rtol=1e-9, atol=1e-12)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def with_garbage(x, mask, value):
    """Same tensor, padded positions overwritten with `value`."""
    return torch.where(mask.bool(), x.detach(), torch.full_like(x, value)).requires_grad_(x.requires_grad)


# ------------------------------------------------------------------------------------------------ masked ops


def test_masked_sum_mean_hand_and_garbage():
    mask = t([[1, 1, 0], [1, 0, 0]])
    for g in GARBAGE:
        x = t([[1.0, 2.0, g], [3.0, g, g]])
        assert L.masked_sum(x, mask).item() == 6.0  # 1 + 2 + 3
        assert L.masked_mean(x, mask).item() == 2.0  # 6 / 3
        assert L.masked_mean(x, mask, dim=1).tolist() == [1.5, 3.0]  # (1+2)/2, 3/1
        assert L.masked_sum(x, mask, dim=0).tolist() == [4.0, 2.0, 0.0]


def test_masked_mean_empty_is_zero():
    x, mask = t([[5.0, 7.0]]), t([[0, 0]])
    assert L.masked_mean(x, mask).item() == 0.0
    assert L.masked_mean(x, mask, dim=1).tolist() == [0.0]


def test_masked_whiten_hand():
    mask = t([[1, 1, 1, 0]])
    x = t([[1.0, 2.0, 3.0, 1e30]])
    # mean 2, unbiased var ((-1)^2 + 0 + 1^2) / (3 - 1) = 1
    w = L.masked_whiten(x, mask)
    s = 1 / math.sqrt(1 + 1e-8)
    assert torch.allclose(w, t([[-s, 0.0, s, 0.0]]))
    w2 = L.masked_whiten(x, mask, shift_mean=False)
    assert torch.allclose(w2, t([[2 - s, 2.0, 2 + s, 0.0]]))


def test_sequence_logprob_hand_empty_and_grad():
    mask = t([[1, 1, 0], [0, 0, 0]])
    lp = t([[-1.0, -2.0, float("nan")], [float("-inf"), 3.0, 1e30]], grad=True)
    mean = L.sequence_logprob(lp, mask)
    assert mean.tolist() == [-1.5, 0.0]  # (-1 - 2) / 2; empty -> 0
    assert L.sequence_logprob(lp, mask, normalize=False).tolist() == [-3.0, 0.0]
    mean.sum().backward()
    assert lp.grad.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]


def test_sft_loss_hand_and_padding():
    mask = t([[1, 1, 1], [1, 0, 0]])
    lp = t([[-1.0, -2.0, -3.0], [-6.0, 0.0, 0.0]], grad=True)
    loss, stats = L.sft_loss(lp, mask)
    assert loss.item() == pytest.approx(3.0)  # (1 + 2 + 3 + 6) / 4 tokens
    assert stats == {"nll": pytest.approx(3.0), "tokens": 4.0}
    loss.backward()
    assert lp.grad.tolist() == [[-0.25, -0.25, -0.25], [-0.25, 0.0, 0.0]]
    lp2 = with_garbage(lp, mask, 1e30)
    assert L.sft_loss(lp2, mask)[0].item() == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------------ DPO

DPO_PC, DPO_PR, DPO_RC, DPO_RR = [-10.0, -12.0], [-14.0, -11.0], [-11.0, -12.5], [-13.0, -12.0]
# h = (pc - pr) - (rc - rr): row 0: 4 - 2 = 2; row 1: -1 - (-0.5) = -0.5


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_dpo_sigmoid_hand(ls):
    beta = 0.5
    loss, stats = L.dpo_loss(t(DPO_PC), t(DPO_PR), t(DPO_RC), t(DPO_RR), beta=beta, label_smoothing=ls)
    per = [-(1 - ls) * math.log(sigmoid(beta * h)) - ls * math.log(sigmoid(-beta * h)) for h in (2.0, -0.5)]
    assert loss.item() == pytest.approx(sum(per) / 2)
    # rewards: beta * (pc - rc) = [0.5, 0.25]; beta * (pr - rr) = [-0.5, 0.5]
    assert stats["rewards/chosen"] == pytest.approx(0.375)
    assert stats["rewards/rejected"] == pytest.approx(0.0)
    assert stats["rewards/accuracies"] == pytest.approx(0.5)  # row 0 right, row 1 wrong
    assert stats["rewards/margins"] == pytest.approx(0.375)  # (1.0 + -0.25) / 2
    assert stats["logps/chosen"] == pytest.approx(-11.0)
    assert stats["logps/rejected"] == pytest.approx(-12.5)


def test_dpo_label_smoothing_changes_loss():
    a = L.dpo_loss(t(DPO_PC), t(DPO_PR), t(DPO_RC), t(DPO_RR), beta=0.5)[0].item()
    b = L.dpo_loss(t(DPO_PC), t(DPO_PR), t(DPO_RC), t(DPO_RR), beta=0.5, label_smoothing=0.1)[0].item()
    assert a != pytest.approx(b)


def test_dpo_ipo_hand_and_grad():
    beta = 0.5  # 1 / (2 beta) = 1
    pc = t(DPO_PC, grad=True)
    loss, _ = L.dpo_loss(pc, t(DPO_PR), t(DPO_RC), t(DPO_RR), beta=beta, loss_type="ipo")
    assert loss.item() == pytest.approx(((2 - 1) ** 2 + (-0.5 - 1) ** 2) / 2)  # (1 + 2.25) / 2
    loss.backward()
    assert pc.grad.tolist() == pytest.approx([2 * (2 - 1) / 2, 2 * (-0.5 - 1) / 2])
    with pytest.raises(ValueError, match="loss_type"):
        L.dpo_loss(t(DPO_PC), t(DPO_PR), t(DPO_RC), t(DPO_RR), loss_type="hinge")


# ------------------------------------------------------------------------------------------------ GRPO


def test_group_advantages_hand():
    r = t([[1.0, 0.0, 0.0, 1.0], [2.0, 4.0, 6.0, 8.0]])
    a = L.group_advantages(r, scale="group")
    s0, s1 = statistics.stdev([1, 0, 0, 1]), statistics.stdev([2, 4, 6, 8])  # unbiased, as TRL
    # means 0.5 and 5: centred rows [0.5, -0.5, -0.5, 0.5] and [-3, -1, 1, 3]
    assert a[0].tolist() == pytest.approx([x / (s0 + 1e-4) for x in (0.5, -0.5, -0.5, 0.5)])
    assert a[1].tolist() == pytest.approx([x / (s1 + 1e-4) for x in (-3, -1, 1, 3)])
    sb = statistics.stdev([1, 0, 0, 1, 2, 4, 6, 8])
    batch = L.group_advantages(r, scale="batch")
    assert batch[1].tolist() == pytest.approx([x / (sb + 1e-4) for x in (-3, -1, 1, 3)])
    assert L.group_advantages(r, scale="none").tolist() == [[0.5, -0.5, -0.5, 0.5], [-3.0, -1.0, 1.0, 3.0]]


def test_group_advantages_equal_and_single():
    r = t([[0.3, 0.3, 0.3], [1.0, 2.0, 3.0]])
    for scale in ("group", "batch", "none"):
        a = L.group_advantages(r, scale=scale)
        assert a[0].tolist() == [0.0, 0.0, 0.0]
        assert torch.isfinite(a).all()
        one = L.group_advantages(t([[1.0], [5.0]]), scale=scale)
        assert one.tolist() == [[0.0], [0.0]]
    assert L.group_advantages(t([[2.0]]), scale="batch").tolist() == [[0.0]]


def ref_grpo(logps, old, adv, mask, ref, beta, eps_lo, eps_hi, loss_type, max_len):
    """Loop-based re-implementation of TRL's GRPO loss."""
    N, T = len(logps), len(logps[0])
    per_seq, total, ntok = [], 0.0, 0
    for n in range(N):
        s, c = 0.0, 0
        for k in range(T):
            if mask[n][k] == 0:
                continue
            ratio = math.exp(logps[n][k] - old[n][k])
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            v = -min(ratio * adv[n], clipped * adv[n])
            if ref is not None:
                d = ref[n][k] - logps[n][k]
                v += beta * (math.exp(d) - d - 1)
            s, c = s + v, c + 1
        per_seq.append(s / c if c else 0.0)
        total, ntok = total + s, ntok + c
    if loss_type == "grpo":
        return sum(per_seq) / N
    if loss_type == "dr_grpo":
        return total / (N * max_len)
    return total / ntok


GRPO_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
GRPO_LP = [[-1.0, -0.5, -2.0, 0.0], [-0.3, -1.2, 0.0, 0.0], [-0.7, 0.0, 0.0, 0.0]]
GRPO_OLD = [[-1.1, -0.9, -1.9, 0.0], [-0.3, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]
GRPO_REF = [[-1.2, -0.4, -2.5, 0.0], [-0.2, -1.1, 0.0, 0.0], [-0.6, 0.0, 0.0, 0.0]]
GRPO_ADV = [1.0, -0.5, 2.0]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,use_ref", [(0.0, False), (0.04, True)])
def test_grpo_loss_matches_loop(loss_type, beta, use_ref):
    mask = t(GRPO_MASK)
    kw = dict(beta=beta, clip_eps=0.2, clip_eps_high=0.28, loss_type=loss_type, max_completion_length=5)
    ref = t(GRPO_REF) if use_ref else None
    loss, stats = L.grpo_loss(t(GRPO_LP), t(GRPO_OLD), t(GRPO_ADV), mask, ref_logps=ref, **kw)
    exp = ref_grpo(GRPO_LP, GRPO_OLD, GRPO_ADV, GRPO_MASK, GRPO_REF if use_ref else None,
                   beta, 0.2, 0.28, loss_type, 5)
    assert loss.item() == pytest.approx(exp)
    # clipped tokens: row 0 tok 1 ratio e^0.4 = 1.49 > 1.28 with A > 0; row 2 tok 0 ratio e^0.3 = 1.35 > 1.28
    assert stats["clip_ratio"] == pytest.approx(2 / 6)
    assert stats["clip_ratio/high"] == pytest.approx(2 / 6)
    assert ("kl" in stats) == use_ref


def test_grpo_padding_invariance_and_grads():
    mask = t(GRPO_MASK)
    lp = t(GRPO_LP, grad=True)
    loss, _ = L.grpo_loss(lp, t(GRPO_OLD), t(GRPO_ADV), mask, ref_logps=t(GRPO_REF), beta=0.1)
    loss.backward()
    for g in GARBAGE:
        lp2 = with_garbage(lp, mask, g)
        loss2, _ = L.grpo_loss(lp2, with_garbage(t(GRPO_OLD), mask, -g), t(GRPO_ADV), mask,
                               ref_logps=with_garbage(t(GRPO_REF), mask, g), beta=0.1, loss_type="grpo")
        loss2.backward()
        assert loss2.item() == pytest.approx(loss.item())
        assert torch.equal(lp2.grad, lp.grad)


def test_grpo_dr_grpo_default_length_is_width_and_errors():
    mask = t(GRPO_MASK)
    a = L.grpo_loss(t(GRPO_LP), t(GRPO_OLD), t(GRPO_ADV), mask, loss_type="dr_grpo")[0].item()
    exp = ref_grpo(GRPO_LP, GRPO_OLD, GRPO_ADV, GRPO_MASK, None, 0, 0.2, 0.2, "dr_grpo", 4)  # T = 4
    assert a == pytest.approx(exp)
    with pytest.raises(ValueError, match="loss_type"):
        L.grpo_loss(t(GRPO_LP), t(GRPO_OLD), t(GRPO_ADV), mask, loss_type="bnpo")


def test_grpo_on_policy_gradient_is_advantage():
    # logps == old: ratio 1, d loss / d logp = -A / (tokens of the sequence) for "grpo"
    lp = t([[-1.0, -2.0], [-1.0, -2.0]], grad=True)
    mask = t([[1, 1], [1, 0]])
    loss, _ = L.grpo_loss(lp, lp.detach().clone(), t([1.0, -1.0]), mask)
    loss.backward()
    assert close(lp.grad, [[-1 / 2 / 2, -1 / 2 / 2], [1 / 1 / 2, 0.0]])


# ------------------------------------------------------------------------------------------------ PPO


def test_gae_hand_three_tokens_with_padding():
    gamma, lam = 0.9, 0.8
    rewards = t([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1e30, float("nan")]])
    values = t([[0.5, 0.6, 0.7, 0.0, 0.0], [0.5, 0.6, 0.7, -1e30, float("inf")]])
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    adv, ret = L.gae(rewards, values, mask, gamma=gamma, lam=lam)
    # t=2: delta = 1 + 0.9*0 - 0.7 = 0.3                  A2 = 0.3
    # t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03               A1 = 0.03 + 0.72*0.3 = 0.246
    # t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04               A0 = 0.04 + 0.72*0.246 = 0.21712
    exp_adv = [0.21712, 0.246, 0.3, 0.0, 0.0]
    exp_ret = [0.71712, 0.846, 1.0, 0.0, 0.0]  # A + V
    for row in range(2):
        assert adv[row].tolist() == pytest.approx(exp_adv)
        assert ret[row].tolist() == pytest.approx(exp_ret)


def test_ppo_policy_clipping_value_and_zero_grad():
    eps = 0.2
    old = t([[0.0, 0.0, 0.0, 0.0]])
    lp = t([[math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5)]], grad=True)
    adv = t([[2.0, -1.0, 1.0, 1.0]])
    mask = t([[1, 1, 1, 1]])
    loss, stats = L.ppo_policy_loss(lp, old, adv, mask, clip_eps=eps)
    # tok0: ratio 1.5 > 1.2, A=2  -> max(-3, -2.4) = -2.4 (clipped, no grad)
    # tok1: ratio 0.5 < 0.8, A=-1 -> max(0.5, 0.8) = 0.8  (clipped, no grad)
    # tok2: ratio 1.1 inside, A=1 -> -1.1                 (grad -A*ratio = -1.1)
    # tok3: ratio 0.5 < 0.8, A=1  -> max(-0.5, -0.8) = -0.5 (pessimistic: unclipped, grad -0.5)
    assert loss.item() == pytest.approx((-2.4 + 0.8 - 1.1 - 0.5) / 4)
    loss.backward()
    assert close(lp.grad, [[0.0, 0.0, -1.1 / 4, -0.5 / 4]])
    assert stats["clipfrac"] == pytest.approx(3 / 4)


def test_ppo_policy_padding_invariance():
    mask = t([[1, 1, 0]])
    lp = t([[-1.0, -0.5, 0.0]], grad=True)
    base, _ = L.ppo_policy_loss(lp, t([[-1.1, -0.4, 0.0]]), t([[1.0, -1.0, 0.0]]), mask)
    base.backward()
    for g in GARBAGE:
        lp2 = with_garbage(lp, mask, g)
        loss, _ = L.ppo_policy_loss(lp2, with_garbage(t([[-1.1, -0.4, 0.0]]), mask, -g),
                                    with_garbage(t([[1.0, -1.0, 0.0]]), mask, g), mask)
        loss.backward()
        assert loss.item() == pytest.approx(base.item())
        assert torch.equal(lp2.grad, lp.grad)


def test_ppo_value_loss_hand():
    old = t([[1.0, 1.0, 0.0]])
    v = t([[1.5, 1.1, 9.0]], grad=True)
    ret = t([[2.0, 0.0, 9.0]])
    mask = t([[1, 1, 0]])
    loss, stats = L.ppo_value_loss(v, old, ret, mask, clip_eps=0.2)
    # tok0: sq = 0.25, clipped V = 1.2, sq_c = 0.64 -> 0.64 (clipped branch, no grad)
    # tok1: sq = 1.21, clipped V = 1.1, sq_c = 1.21 -> 1.21 (grad 2*1.1)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    loss.backward()
    assert close(v.grad, [[0.0, 0.5 * 2 * 1.1 / 2, 0.0]])
    assert stats["value_clipfrac"] == pytest.approx(0.5)


def test_kl_penalty_kinds_hand():
    lp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])  # d = logp - ref = [0.5, -1]
    assert L.kl_penalty(lp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    # k3 = exp(ref - logp) - (ref - logp) - 1 with ref - logp = [-0.5, 1]
    assert L.kl_penalty(lp, ref, "k3").tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, math.exp(1) - 1 - 1])
    assert L.kl_penalty(lp, ref, "abs").tolist() == pytest.approx([0.5, 1.0])
    assert L.kl_penalty(lp, ref, "mse").tolist() == pytest.approx([0.125, 0.5])
    with pytest.raises(ValueError, match="kind"):
        L.kl_penalty(lp, ref, "k2")


# ------------------------------------------------------------------------------------------------ GRAO


def test_grao_advantages_population_std_hand():
    sr, rr = t([[1.0, 0.0], [0.0, 0.0]]), t([1.0, 1.0])
    a, ay = L.grao_advantages(sr, rr, eps=0.0)
    # group {1, 0, 1}: mu = 2/3, population var = ((1/3)^2 * 2 + (2/3)^2) / 3 = 2/9
    s = math.sqrt(2 / 9)
    assert a[0].tolist() == pytest.approx([(1 / 3) / s, (-2 / 3) / s])
    assert ay[0].item() == pytest.approx((1 / 3) / s)
    # group {0, 0, 1}: mu = 1/3, same population std
    assert a[1].tolist() == pytest.approx([(-1 / 3) / s] * 2)
    assert ay[1].item() == pytest.approx((2 / 3) / s)
    # samples only: row 0 {1, 0}: mu = 0.5, pstdev 0.5; R(y) = 1 -> 1
    a, ay = L.grao_advantages(sr, rr, group="samples", eps=1e-6)
    assert a[0].tolist() == pytest.approx([0.5 / (0.5 + 1e-6), -0.5 / (0.5 + 1e-6)])
    assert ay[0].item() == pytest.approx(0.5 / (0.5 + 1e-6))
    assert statistics.pstdev([1, 0]) == 0.5
    # row 1 samples all equal: everything zero (no 1/eps blow-up for y)
    assert a[1].tolist() == [0.0, 0.0] and ay[1].item() == 0.0


def ref_grao(ll, lly, sr, rr, beta, lam, group, eps, imit=True, expl=True, reg=True):
    """Loop-based GRAO objective straight from docs/GRAO.md; returns (loss, {term: value})."""
    B, G = len(ll), len(ll[0])
    parts = {"exploration": 0.0, "imitation": 0.0, "regularizer": 0.0}
    for b in range(B):
        grp = list(sr[b]) + ([rr[b]] if group == "samples+reference" else [])
        mu, sd = statistics.fmean(grp), statistics.pstdev(grp)
        equal = len(set(grp)) == 1
        for i in range(G):
            ai = 0.0 if equal else (sr[b][i] - mu) / (sd + eps)
            ay = 0.0 if equal else (rr[b] - mu) / (sd + eps)
            parts["exploration"] += ai * ll[b][i] / (B * G)
            parts["imitation"] += beta * ay * lly[b] / (B * G)
            parts["regularizer"] += lam * ai * (ll[b][i] - lly[b]) / (B * G)
    on = {"exploration": expl, "imitation": imit, "regularizer": reg}
    return -sum(v for k, v in parts.items() if on[k]), parts


LL = [[-1.0, -2.0, -0.5], [-1.5, -0.7, -0.9]]
LLY = [-1.2, -0.8]
SR = [[1.0, 0.0, 0.5], [0.2, 0.9, 0.4]]
RR = [0.8, 0.1]


@pytest.mark.parametrize("group", ["samples+reference", "samples"])
@pytest.mark.parametrize("switches", [(1, 1, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 0, 0)])
def test_grao_loss_matches_loop(group, switches):
    imit, expl, reg = map(bool, switches)
    loss, stats = L.grao_loss(t(LL), t(LLY), t(SR), t(RR), beta=0.5, lam=0.6, group=group,
                              imitation=imit, exploration=expl, regularizer=reg)
    exp_loss, parts = ref_grao(LL, LLY, SR, RR, 0.5, 0.6, group, 1e-6, imit, expl, reg)
    assert loss.item() == pytest.approx(exp_loss)
    on = {"imitation": imit, "exploration": expl, "regularizer": reg}
    vals = {k: (parts[k] if on[k] else 0.0) for k in parts}
    total = sum(abs(v) for v in vals.values())
    for k in parts:
        assert stats[f"grao/{k}"] == pytest.approx(vals[k])
        assert stats[f"grao/{k}_share"] == pytest.approx(abs(vals[k]) / total)
    assert stats["loss"] == pytest.approx(-sum(vals.values()))


def test_grao_samples_group_regularizer_cancels():
    lam, beta = 0.6, 0.5
    ll, lly = t(LL, grad=True), t(LLY, grad=True)
    loss, st = L.grao_loss(ll, lly, t(SR), t(RR), beta=beta, lam=lam, group="samples")
    loss.backward()
    # value: regulariser == lam * exploration, so loss == -(1 + lam) * exploration - imitation
    assert st["grao/regularizer"] == pytest.approx(lam * st["grao/exploration"])
    assert loss.item() == pytest.approx(-(1 + lam) * st["grao/exploration"] - st["grao/imitation"])
    # gradient w.r.t. l(y) is the imitation part's only
    lly_i = t(LLY, grad=True)
    imit_only, _ = L.grao_loss(t(LL), lly_i, t(SR), t(RR), beta=beta, lam=lam, group="samples",
                               exploration=False, regularizer=False)
    imit_only.backward()
    assert torch.allclose(lly.grad, lly_i.grad)
    # and by hand: d loss / d l(y_b) = -beta * A_y(b) / B, with A_y from samples-only population stats
    ay = [(RR[b] - statistics.fmean(SR[b])) / (statistics.pstdev(SR[b]) + 1e-6) for b in range(2)]
    assert lly.grad.tolist() == pytest.approx([-beta * a / 2 for a in ay])
    # d loss / d l(o_i) = -(1 + lam) * A_i / (B * G)
    a00 = (SR[0][0] - statistics.fmean(SR[0])) / (statistics.pstdev(SR[0]) + 1e-6)
    assert ll.grad[0, 0].item() == pytest.approx(-(1 + lam) * a00 / 6)


def test_grao_reference_in_group_does_not_cancel():
    lam, beta = 0.6, 0.5
    lly = t(LLY, grad=True)
    loss, st = L.grao_loss(t(LL), lly, t(SR), t(RR), beta=beta, lam=lam)
    loss.backward()
    lly_i = t(LLY, grad=True)
    imit_only, _ = L.grao_loss(t(LL), lly_i, t(SR), t(RR), beta=beta, lam=lam, exploration=False, regularizer=False)
    imit_only.backward()
    assert not torch.allclose(lly.grad, lly_i.grad)
    assert st["grao/regularizer"] != pytest.approx(lam * st["grao/exploration"])
    # by hand: d loss / d l(y_b) = -beta*A_y/B + lam * sum_i A_i / (B*G); sum_i A_i = -(R(y) - mu)/(sd+eps)
    exp = []
    for b in range(2):
        grp = SR[b] + [RR[b]]
        mu, sd = statistics.fmean(grp), statistics.pstdev(grp)
        ay = (RR[b] - mu) / (sd + 1e-6)
        sum_ai = sum((r - mu) / (sd + 1e-6) for r in SR[b])
        assert sum_ai == pytest.approx(-ay)
        exp.append(-beta * ay / 2 + lam * sum_ai / 6)
    assert lly.grad.tolist() == pytest.approx(exp)


def test_grao_gradients_reach_logliks_not_rewards():
    ll, lly = t(LL, grad=True), t(LLY, grad=True)
    sr, rr = t(SR, grad=True), t(RR, grad=True)
    loss, _ = L.grao_loss(ll, lly, sr, rr)
    loss.backward()
    assert ll.grad is not None and ll.grad.abs().sum() > 0
    assert lly.grad is not None and lly.grad.abs().sum() > 0
    assert sr.grad is None and rr.grad is None


@pytest.mark.parametrize("group", ["samples+reference", "samples"])
def test_grao_all_equal_rewards_and_single_sample(group):
    ll, lly = t([[-1.0, -2.0]], grad=True), t([-0.5], grad=True)
    loss, st = L.grao_loss(ll, lly, t([[0.7, 0.7]]), t([0.7]), group=group)
    loss.backward()
    assert loss.item() == 0.0
    assert ll.grad.tolist() == [[0.0, 0.0]] and lly.grad.tolist() == [0.0]
    assert st["grao/frac_equal_groups"] == 1.0
    assert all(math.isfinite(v) for v in st.values())
    # G = 1: finite; with y in the group {R(o), R(y)} = {0, 1}: A_o = -1, A_y = +1 (pstdev 0.5)
    ll1, lly1 = t([[-1.0]], grad=True), t([-2.0], grad=True)
    loss1, st1 = L.grao_loss(ll1, lly1, t([[0.0]]), t([1.0]), beta=0.5, lam=0.6, group=group, eps=0.0)
    loss1.backward()
    assert torch.isfinite(ll1.grad).all() and torch.isfinite(lly1.grad).all()
    if group == "samples":
        assert loss1.item() == 0.0  # a single sample is its own group: no signal
        assert st1["grao/frac_equal_groups"] == 1.0
    else:
        # J = A_o*l(o) + beta*A_y*l(y) + lam*A_o*(l(o) - l(y)) = 1 + 0.5*(-2) + 0.6*(-1)*(1) = -0.6
        assert loss1.item() == pytest.approx(0.6)


def test_grao_end_to_end_padding_invariance():
    mask = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    tok = t([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0], [-0.1, -0.2, -0.3], [0.0, 0.0, 0.0]], grad=True)
    ref_mask = t([[1, 0], [1, 1]])
    ref_tok = t([[-1.0, 0.0], [-2.0, -3.0]], grad=True)

    def run(tok_, ref_tok_):
        ll = L.sequence_logprob(tok_, mask).view(2, 2)
        lly = L.sequence_logprob(ref_tok_, ref_mask)
        return L.grao_loss(ll, lly, t([[1.0, 0.0], [0.3, 0.6]]), t([0.5, 0.9]))[0]

    base = run(tok, ref_tok)
    base.backward()
    for g in GARBAGE:
        tok2, ref2 = with_garbage(tok, mask, g), with_garbage(ref_tok, ref_mask, g)
        loss = run(tok2, ref2)
        loss.backward()
        assert loss.item() == pytest.approx(base.item())
        assert torch.equal(tok2.grad, tok.grad) and torch.equal(ref2.grad, ref_tok.grad)


def test_grao_errors():
    with pytest.raises(ValueError, match="group"):
        L.grao_advantages(t([[1.0]]), t([1.0]), group="batch")
    with pytest.raises(ValueError, match="answer_logliks"):
        L.grao_loss(t(LL), t([1.0]), t(SR), t(RR))


# ------------------------------------------------------------------------------------------------ step normalisers
# Under micro-batches (and several processes) a step's batch is cut into parts; each part's loss is normalised
# by the whole step's counts, and the parts' losses and gradients must sum to the unsplit ones. The parts below
# cut GRPO_* into rows {0} and {1, 2}, rows with different token counts, where a per-part mean would be wrong.

PARTS = ([0], [1, 2])


def split_sum(fn, tensors, grad_index=0):
    """Sum of fn(part) over PARTS, and the gradient of that sum w.r.t. tensors[grad_index]."""
    x = tensors[grad_index].detach().clone().requires_grad_(True)
    full = [x if i == grad_index else v for i, v in enumerate(tensors)]
    total = sum(fn(*[v[rows] for v in full]) for rows in PARTS)
    total.backward()
    return total.detach(), x.grad


def whole(fn, tensors, grad_index=0):
    x = tensors[grad_index].detach().clone().requires_grad_(True)
    loss = fn(*[x if i == grad_index else v for i, v in enumerate(tensors)])
    loss.backward()
    return loss.detach(), x.grad


def assert_split_equals_whole(split_fn, whole_fn, tensors, grad_index=0):
    loss_parts, grad_parts = split_sum(split_fn, tensors, grad_index)
    loss_whole, grad_whole = whole(whole_fn, tensors, grad_index)
    torch.testing.assert_close(loss_parts, loss_whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_parts, grad_whole, rtol=1e-12, atol=1e-12)


def test_sft_loss_with_step_tokens_splits_exactly():
    mask = t(GRPO_MASK)
    assert_split_equals_whole(lambda lp, m: L.sft_loss(lp, m, num_tokens=6)[0],
                              lambda lp, m: L.sft_loss(lp, m)[0], [t(GRPO_LP), mask])
    # and a per-part mean (the wrong way) does not: (-1-0.5-2)/3 + (-0.3-1.2-0.7)/3 != (-5.7)/6
    assert sum(L.sft_loss(t(GRPO_LP)[r], mask[r])[0].item() for r in PARTS) != pytest.approx(5.7 / 6)
    assert L.sft_loss(t(GRPO_LP), mask)[0].item() == pytest.approx(5.7 / 6)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_with_step_pairs_splits_exactly(loss_type):
    tensors = [t(DPO_PC + [-9.0]), t(DPO_PR + [-9.5]), t(DPO_RC + [-10.0]), t(DPO_RR + [-8.0])]
    kw = dict(beta=0.5, loss_type=loss_type, label_smoothing=0.1 if loss_type == "sigmoid" else 0.0)
    assert_split_equals_whole(lambda *x: L.dpo_loss(*x, **kw, num_pairs=3)[0],
                              lambda *x: L.dpo_loss(*x, **kw)[0], tensors)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_loss_with_step_totals_splits_exactly(loss_type):
    kw = dict(beta=0.04, clip_eps=0.2, clip_eps_high=0.28, loss_type=loss_type, max_completion_length=5)
    tensors = [t(GRPO_LP), t(GRPO_OLD), t(GRPO_ADV), t(GRPO_MASK), t(GRPO_REF)]

    def split(lp, old, adv, mask, ref):
        return L.grpo_loss(lp, old, adv, mask, ref_logps=ref, **kw, num_sequences=3, num_tokens=6)[0]

    def unsplit(lp, old, adv, mask, ref):
        return L.grpo_loss(lp, old, adv, mask, ref_logps=ref, **kw)[0]

    assert_split_equals_whole(split, unsplit, tensors)
    # The normalisers are the ones written in the docstring: sequences for grpo/dr_grpo, tokens for dapo.
    exp = ref_grpo(GRPO_LP, GRPO_OLD, GRPO_ADV, GRPO_MASK, GRPO_REF, 0.04, 0.2, 0.28, loss_type, 5)
    assert split_sum(split, tensors)[0].item() == pytest.approx(exp)


def test_ppo_losses_with_step_tokens_split_exactly():
    lp, old, mask = t(GRPO_LP), t(GRPO_OLD), t(GRPO_MASK)
    adv = t([[1.0, -0.5, 2.0, 0.0], [0.3, -1.0, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]])
    assert_split_equals_whole(lambda a, b, c, m: L.ppo_policy_loss(a, b, c, m, num_tokens=6)[0],
                              lambda a, b, c, m: L.ppo_policy_loss(a, b, c, m)[0], [lp, old, adv, mask])
    ret = t([[0.5, 0.1, -0.3, 0.0], [1.0, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert_split_equals_whole(lambda v, o, r, m: L.ppo_value_loss(v, o, r, m, num_tokens=6)[0],
                              lambda v, o, r, m: L.ppo_value_loss(v, o, r, m)[0], [lp, old, ret, mask])


@pytest.mark.parametrize("group", ["samples+reference", "samples"])
def test_grao_loss_with_step_groups_splits_exactly(group):
    ll = t(LL + [[-0.4, -1.1, -2.2]])
    tensors = [ll, t(LLY + [-0.6]), t(SR + [[0.3, 0.3, 0.9]]), t(RR + [0.5])]
    for grad_index in (0, 1):  # gradients reach both the samples' and the answers' likelihoods
        assert_split_equals_whole(lambda *x: L.grao_loss(*x, group=group, num_groups=3)[0],
                                  lambda *x: L.grao_loss(*x, group=group)[0], tensors, grad_index)
