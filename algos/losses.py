"""Loss functions for SFT, DPO, PPO, GRPO and GRAO as short pure functions.

Conventions shared by every function here:
- Per-token tensors are ``[N, T]`` with a ``mask`` of the same shape (1 = completion token, 0 = padding).
  Padded positions may hold garbage (huge values, inf, NaN): every function first replaces them with 0
  through ``torch.where``, so they change neither the values nor the gradients (``x * mask`` would turn
  ``inf * 0`` into NaN, and a ``where`` applied only at the end still lets NaN leak into the backward pass).
- Losses return ``(loss, stats)``: a scalar tensor to backpropagate and a ``dict[str, float]`` to log.
- Advantages and rewards are treated as constants (detached): no gradient ever reaches a reward.
- Every loss takes an optional normaliser for the whole optimiser step (``num_tokens``, ``num_sequences``,
  ``num_pairs``, ``num_groups``). Without it the loss averages over the batch it is handed; with it, the
  losses of k parts of a batch, each given the whole batch's count, sum to the loss of the whole batch
  and so do their gradients. That is what micro-batches and several processes need (TRL's ``dapo``
  divides by the token count of the whole accumulated step for the same reason).
- Each set of choices (loss types, scales, groups) is a ``Literal`` here that the configs reuse.
- Nothing here communicates. A statistic that spans a whole batch (``masked_whiten``, the "batch" std of
  ``group_advantages``, ``adaptive_kl_coef``) is taken over the tensors it is given; on several processes
  the caller gathers the whole batch first, computes, and keeps its own rows (``Engine.over_batch``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

DPOLossType = Literal["sigmoid", "ipo"]
GRPOLossType = Literal["grpo", "dr_grpo", "dapo"]
RewardScale = Literal["group", "batch", "none"]
GRAOGroup = Literal["samples+reference", "samples"]
KLKind = Literal["k1", "k3", "abs", "mse"]


def _check_choice(name: str, value: str, choices: object) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _clean(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the padded positions so that garbage there cannot reach values or gradients."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    x = _clean(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over the unmasked entries; an all-padding slice gives 0 rather than NaN."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise to zero mean / unit variance over the unmasked entries (TRL: unbiased variance, 1e-8).

    ``shift_mean=False`` keeps the original mean (only rescales). Padded positions come out as 0.
    """
    count = mask.to(x.dtype).sum()
    mean = masked_sum(x, mask) / count.clamp(min=1.0)
    centered = _clean(x - mean, mask)
    var = (centered**2).sum() / (count - 1).clamp(min=1.0)
    out = centered * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return _clean(out, mask)


def sequence_logprob(token_logps: Tensor, mask: Tensor, normalize: bool = True) -> Tensor:
    """Per-sequence log-likelihood ``[N]``: length-normalised mean (GRAO's ℓ) or, unnormalised, the sum.

    An empty completion (all padding) gives 0, not NaN.
    """
    return masked_mean(token_logps, mask, dim=-1) if normalize else masked_sum(token_logps, mask, dim=-1)


# --------------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------------


def sft_loss(token_logps: Tensor, mask: Tensor, num_tokens: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mean NLL over all completion tokens of the step (TRL convention: long answers weigh more)."""
    total = mask.to(token_logps.dtype).sum().clamp(min=1.0) if num_tokens is None else max(num_tokens, 1)
    loss = -masked_sum(token_logps, mask) / total
    return loss, {"nll": -masked_mean(token_logps, mask).item(), "tokens": float(mask.sum().item())}


# --------------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
    num_pairs: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """DPO on per-sequence log-probs ``[N]``, with TRL's formulas and stat names.

    h = (π_c − π_r) − (ref_c − ref_r).
    sigmoid: −(1−ε)·logσ(βh) − ε·logσ(−βh)   (conservative DPO when ε > 0)
    ipo:     (h − 1/(2β))²                     (label_smoothing is ignored)
    The log-probs are taken as given. TRL sums token log-probs for "sigmoid" but *averages* them for
    "ipo"; to match it, pass ``sequence_logprob(..., normalize=False)`` for sigmoid and
    ``sequence_logprob(..., normalize=True)`` for ipo. The loss is the mean over the step's ``num_pairs``.
    """
    _check_choice("loss_type", loss_type, DPOLossType)
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    loss = losses.mean() if num_pairs is None else losses.sum() / num_pairs
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    stats = {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(),
        "logps/rejected": policy_rejected.detach().mean().item(),
    }
    return loss, stats


# --------------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, scale: RewardScale = "group", eps: float = 1e-4) -> Tensor:
    """GRPO advantages ``[B, G]``: reward minus group mean, divided by a std (as TRL's GRPOTrainer).

    The std is torch's default *unbiased* one, as in TRL: per group ("group"), over all of ``rewards``
    ("batch"), or no division ("none"). A group whose rewards
    are all equal gets exact zeros, and a std that cannot be estimated (G = 1, or a batch of one reward)
    counts as 0, so no NaN appears.
    """
    _check_choice("scale", scale, RewardScale)
    rewards = rewards.detach()
    B, G = rewards.shape
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    centered = torch.where(all_equal, torch.zeros_like(centered), centered)
    if scale == "none":
        return centered
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(rewards[:, :1])
    else:
        std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    return centered / (std + eps)


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    loss_type: GRPOLossType = "grpo",
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate per token, plus β·k3 KL to a reference policy, reduced as TRL names it.

    per token: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·(exp(ref−logp) − (ref−logp) − 1)
    grpo:    mean over each sequence's tokens, then mean over the step's sequences
    dr_grpo: sum over all tokens / (sequences · max_completion_length)   (default: T, the padded width)
    dapo:    sum over all tokens / number of completion tokens in the step
    ``advantages`` is ``[N]`` (one per sequence, broadcast over its tokens) or ``[N, T]`` (one per token:
    per-turn credit of a multi-turn trajectory) and is detached. The step's
    counts default to this batch's (N sequences, its mask's tokens).
    """
    _check_choice("loss_type", loss_type, GRPOLossType)
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    logps, old_logps = _clean(logps, mask), _clean(old_logps, mask).detach()
    adv = advantages.detach().to(logps.dtype)
    adv = adv if adv.dim() == 2 else adv.reshape(-1, 1)

    ratio = torch.exp(logps - old_logps)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    per_token_kl = None
    if ref_logps is not None:
        diff = _clean(ref_logps, mask).detach() - logps
        per_token_kl = torch.exp(diff) - diff - 1
        if beta != 0.0:
            per_token = per_token + beta * per_token_kl

    sequences = mask.shape[0] if num_sequences is None else num_sequences

    def reduce(x: Tensor) -> Tensor:
        if loss_type == "grpo":
            per_sequence = masked_mean(x, mask, dim=-1)
            return per_sequence.mean() if num_sequences is None else per_sequence.sum() / num_sequences
        if loss_type == "dr_grpo":
            length = max_completion_length if max_completion_length is not None else mask.shape[-1]
            return masked_sum(x, mask) / (sequences * length)
        return masked_sum(x, mask) / (mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1))

    loss = reduce(per_token)
    with torch.no_grad():
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = {
            "loss": loss.item(),
            "policy_loss": reduce(-torch.min(ratio * adv, clipped * adv)).item(),
            "clip_ratio": masked_mean((low | high).to(logps.dtype), mask).item(),
            "clip_ratio/low": masked_mean(low.to(logps.dtype), mask).item(),
            "clip_ratio/high": masked_mean(high.to(logps.dtype), mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
        }
        if per_token_kl is not None:
            stats["kl"] = masked_mean(per_token_kl, mask).item()
    return loss, stats


# --------------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded token sequences ``[B, T]``.

    The value after the last real token is 0 (the episode ends there); padded positions get 0 advantage
    and 0 return. Both outputs are detached: they are regression / policy-gradient targets.
    """
    rewards, values = _clean(rewards, mask).detach(), _clean(values, mask).detach()
    T = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = _clean(advantages, mask)
    return advantages, _clean(advantages + values, mask)


def episode_returns(turn_rewards: Tensor, turn_mask: Tensor) -> Tensor:
    """The outcome reward of each multi-turn episode ``[N]``: the sum of its turns' rewards (``[N, K]``,
    ``turn_mask`` 1 on the turns it played; episodes of a batch may end at different turns)."""
    return masked_sum(turn_rewards.detach(), turn_mask, dim=-1)


def discounted_returns(turn_rewards: Tensor, turn_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Per-turn returns ``G_t = r_t + γ·G_{t+1}`` of multi-turn episodes ``[N, K]``, 0 past each one's last
    turn (the episode ends there, so its last turn's return is its own reward). Detached."""
    rewards = _clean(turn_rewards, turn_mask).detach()
    returns, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return _clean(returns, turn_mask)


def turn_advantages(turn_rewards: Tensor, turn_mask: Tensor, group_size: int, gamma: float = 1.0,
                    scale: RewardScale = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages of each turn of multi-turn episodes ``[N, K]`` (N = groups · ``group_size``,
    group-major): turn k's discounted return-to-go ``G_k`` (``discounted_returns``) minus the mean of
    ``G_k`` over the group's episodes that played turn k, divided by their unbiased std ("group"), by the
    std of every played turn's ``G_k`` in the batch ("batch"), or not divided ("none").

    Comparing turn k with the other episodes at turn k (not with whole-episode returns) keeps a group whose
    episodes all went alike at exact zeros, as ``group_advantages`` does, whatever ``gamma``; a turn that
    only one episode of its group reached has nothing to be compared with and gets 0. With ``gamma=1`` and
    one reward at the end, every turn of an episode that all of its group's episodes outlast gets its
    outcome advantage. 0 past each episode's last turn.
    """
    _check_choice("scale", scale, RewardScale)
    returns = discounted_returns(turn_rewards, turn_mask, gamma)
    N, K = returns.shape
    if N % group_size:
        raise ValueError(f"turn_advantages: {N} episodes are not whole groups of group_size={group_size}")
    g_returns, g_mask = returns.view(-1, group_size, K), turn_mask.view(-1, group_size, K).to(returns.dtype)
    count = g_mask.sum(1, keepdim=True)
    mean = (g_returns * g_mask).sum(1, keepdim=True) / count.clamp(min=1)
    centered = (g_returns - mean) * g_mask
    big, small = torch.finfo(returns.dtype).max, torch.finfo(returns.dtype).min
    all_equal = (torch.where(g_mask > 0, g_returns, small).amax(1, keepdim=True)
                 == torch.where(g_mask > 0, g_returns, big).amin(1, keepdim=True))
    centered = torch.where(all_equal, torch.zeros_like(centered), centered)
    if scale == "none":
        return centered.view(N, K)
    if scale == "group":
        std = ((centered**2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    else:
        played = turn_mask.bool()
        std = returns[played].std() if played.sum() > 1 else torch.zeros((), dtype=returns.dtype)
    zero = torch.zeros((), dtype=returns.dtype)
    return torch.where(centered == 0, zero, centered / (std + eps)).view(N, K)  # a lone or tied turn: 0, not 0/0


def per_turn_to_tokens(turn_values: Tensor, turn_index: Tensor) -> Tensor:
    """``turn_values[n, turn_index[n, t]]`` ``[N, T]``: a per-turn quantity (a return, an advantage) on each
    token of the turn; 0 where ``turn_index`` is negative (padding). Env tokens carry their turn's value too:
    the loss mask, not this map, keeps them out of a loss."""
    index = turn_index.clamp(min=0).long()
    values = torch.gather(turn_values.detach(), 1, index)
    return torch.where(turn_index >= 0, values, torch.zeros((), dtype=values.dtype, device=values.device))


def per_turn_to_last_token(turn_values: Tensor, turn_mask: Tensor, turn_index: Tensor, mask: Tensor) -> Tensor:
    """``[N, T]``: each played turn's value (``turn_values[n, k]``, ``turn_mask`` 1) on the last token of
    turn ``k`` that the model sampled (``mask`` 1), 0 everywhere else.

    The model's last token of a turn is its last action before the environment answers, so a turn's
    reward belongs there; the env tokens after it are not actions and get none. A turn with no sampled
    token (never made by ``algos.multiturn``) gives its value to the last sampled token before it, so
    nothing is lost while some token precedes it.
    """
    sampled = mask.bool() & (turn_index >= 0)
    turns = torch.arange(turn_values.shape[-1], device=turn_index.device)
    at_or_before = sampled[:, None, :] & (turn_index[:, None, :] <= turns[None, :, None])  # [N, K, T]
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = torch.where(at_or_before, positions, -1).amax(-1)  # [N, K] last sampled token by turn k's end
    values = torch.where(turn_mask.bool() & (last >= 0), turn_values.detach(),
                         torch.zeros((), dtype=turn_values.dtype, device=turn_values.device))
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).scatter_add_(1, last.clamp(min=0), values)


def packed_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """``gae`` over only the tokens of ``mask`` (the model's), each row's packed left in order: the
    advantages and returns ``[N, T]``, 0 at every other token (environment tokens and padding).

    In a multi-turn trajectory the environment's tokens sit between the model's turns. They are not
    actions: they get no advantage, and they must not be steps of the recursion either, or a turn's last
    token would bootstrap from the value of the env's first token and the discount would count env
    tokens. Packed, the last token of turn k bootstraps from the value at the first token of turn k+1,
    the state after the env's reply, and ``gamma``/``lam`` apply once per model token, as in single-turn
    PPO (verl's multi-turn GAE carries the recursion over observation tokens to the same effect). The
    value after the model's last token is 0: the episode ends there, truncated or not. With ``mask`` a
    prefix of each row (single-turn), this is ``gae`` exactly.
    """
    order = torch.argsort((~mask.bool()).to(torch.int8), dim=-1, stable=True)  # each row's model tokens first
    packed_mask = torch.gather(mask, 1, order)
    packed = gae(torch.gather(_clean(rewards, mask), 1, order), torch.gather(_clean(values, mask), 1, order),
                 packed_mask, gamma=gamma, lam=lam)
    advantages, returns = (torch.zeros_like(x).scatter_(1, order, x) for x in packed)  # back where each came from
    return advantages, returns


def _token_mean(x: Tensor, mask: Tensor, num_tokens: float | None) -> Tensor:
    """Masked mean over all tokens, or the masked sum over the whole step's ``num_tokens``."""
    return masked_mean(x, mask) if num_tokens is None else masked_sum(x, mask) / max(num_tokens, 1)


def ppo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2,
    num_tokens: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, per-token advantages ``[B, T]``, mean over the step's tokens (TRL/CleanRL)."""
    logps, old_logps = _clean(logps, mask), _clean(old_logps, mask).detach()
    adv = _clean(advantages, mask).detach()
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    loss = _token_mean(losses, mask, num_tokens)
    with torch.no_grad():
        stats = {
            "policy_loss": masked_mean(losses, mask).item(),
            "clipfrac": masked_mean(((ratio - 1).abs() > clip_eps).to(logps.dtype), mask).item(),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item(),  # k3, as CleanRL
            "ratio": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float = 0.2,
    num_tokens: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss 0.5·max((V−R)², (V_clip−R)²), mean over the step's tokens (TRL/CleanRL)."""
    values = _clean(values, mask)
    old_values, returns = _clean(old_values, mask).detach(), _clean(returns, mask).detach()
    v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    sq, sq_clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * _token_mean(torch.max(sq, sq_clipped), mask, num_tokens)
    with torch.no_grad():
        stats = {
            "value_loss": 0.5 * masked_mean(torch.max(sq, sq_clipped), mask).item(),
            "value_clipfrac": masked_mean((sq_clipped > sq).to(values.dtype), mask).item(),
        }
    return loss, stats


def kl_penalty(logps: Tensor, ref_logps: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token KL(π‖π_ref) estimate from sampled tokens; mask it yourself.

    k1 = logp − ref (unbiased, can be negative); k3 = exp(ref−logp) − (ref−logp) − 1 (unbiased, ≥ 0);
    abs = |logp − ref|; mse = ½(logp − ref)².
    """
    _check_choice("kind", kind, KLKind)
    d = logps - ref_logps
    if kind == "k1":
        return d
    if kind == "k3":
        return torch.exp(-d) + d - 1
    if kind == "abs":
        return d.abs()
    return 0.5 * d**2


def ppo_token_rewards(
    scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, kl_coef: float, kl_kind: KLKind = "k1",
    whiten: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards ``[B, T]`` and the per-token KL: −kl_coef·KL_t, plus the sequence score on the
    last real token (Ziegler et al.; TRL). ``whiten`` (TRL's ``whiten_rewards``) rescales the token
    rewards to unit variance over the batch *without* shifting their mean, so the reward level survives.
    """
    kl = _clean(kl_penalty(logps, ref_logps, kind=kl_kind), mask).detach()
    rewards = -kl_coef * kl
    last = (mask.sum(-1) - 1).clamp(min=0).long()
    rewards[torch.arange(len(last), device=last.device), last] += scores.detach().to(rewards.dtype)
    rewards = _clean(rewards, mask)
    return (masked_whiten(rewards, mask, shift_mean=False) if whiten else rewards), kl


def ppo_turn_token_rewards(
    turn_rewards: Tensor, turn_mask: Tensor, turn_index: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor,
    kl_coef: float, kl_kind: KLKind = "k1", whiten: bool = False,
) -> tuple[Tensor, Tensor]:
    """``ppo_token_rewards`` of multi-turn trajectories: −kl_coef·KL_t on the model's tokens (``mask``, the
    loss mask), plus each turn's reward (``turn_rewards`` ``[N, K]``, the final reward included in the
    last turn's) on that turn's last sampled token (``per_turn_to_last_token``). Environment tokens get
    nothing, and ``whiten`` spans the model's tokens only. A one-turn episode gets ``ppo_token_rewards``'s.
    """
    kl = _clean(kl_penalty(logps, ref_logps, kind=kl_kind), mask).detach()
    rewards = _clean(-kl_coef * kl + per_turn_to_last_token(turn_rewards, turn_mask, turn_index, mask), mask)
    return (masked_whiten(rewards, mask, shift_mean=False) if whiten else rewards), kl


def adaptive_kl_coef(kl_coef: float, mean_kl: float, target_kl: float, num_samples: int, horizon: int) -> float:
    """Ziegler et al.'s proportional controller: move the KL coefficient towards the target KL.

    ``mean_kl`` is the mean per-sequence KL of the ``num_samples`` samples of the step's whole batch.
    """
    error = min(max(mean_kl / target_kl - 1, -0.2), 0.2)
    return kl_coef * (1 + error * num_samples / horizon)


# --------------------------------------------------------------------------------------------------
# GRAO (docs/GRAO.md)
# --------------------------------------------------------------------------------------------------


def grao_advantages(
    sample_rewards: Tensor, answer_rewards: Tensor, group: GRAOGroup = "samples+reference", eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """GRAO advantages (Â_i ``[B, G]``, Â_y ``[B]``): (R − μ) / (σ + ε), μ and σ the *population* stats.

    ``answer_rewards`` are R(y), the rewards of the reference answers. By default μ, σ are taken over the
    G samples plus y (G + 1 rewards); with ``group="samples"`` over the G samples only, and y is still
    scored against them. A group whose rewards are all equal (the G + 1, resp. the G samples) gets
    all-zero advantages, Â_y included: with "samples" and σ = 0, Â_y = (R(y) − μ)/ε would otherwise be
    about 10⁶ times the reward gap.
    """
    _check_choice("group", group, GRAOGroup)
    sample_rewards, answer_rewards = sample_rewards.detach(), answer_rewards.detach().to(sample_rewards.dtype)
    if answer_rewards.shape != sample_rewards.shape[:1]:
        raise ValueError(f"answer_rewards must have shape {list(sample_rewards.shape[:1])}, "
                         f"got {list(answer_rewards.shape)}")
    with_answer = torch.cat([sample_rewards, answer_rewards[:, None]], dim=1)
    stat_group = sample_rewards if group == "samples" else with_answer
    mu = stat_group.mean(dim=1)
    sigma = stat_group.std(dim=1, unbiased=False)
    equal = (stat_group == stat_group[:, :1]).all(dim=1)
    a_samples = (sample_rewards - mu[:, None]) / (sigma[:, None] + eps)
    a_answer = (answer_rewards - mu) / (sigma + eps)
    a_samples = torch.where(equal[:, None], torch.zeros_like(a_samples), a_samples)
    a_answer = torch.where(equal, torch.zeros_like(a_answer), a_answer)
    return a_samples, a_answer


def grao_loss(
    sample_logliks: Tensor,
    answer_logliks: Tensor,
    sample_rewards: Tensor,
    answer_rewards: Tensor,
    beta: float = 0.5,
    lam: float = 0.6,
    group: GRAOGroup = "samples+reference",
    eps: float = 1e-6,
    imitation: bool = True,
    exploration: bool = True,
    regularizer: bool = True,
    num_groups: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRAO loss = −(1/(B·G)) Σ_b Σ_i (Â_i ℓ(o_i) + β Â_y ℓ(y) + λ Â_i (ℓ(o_i) − ℓ(y))).

    ``sample_logliks`` ``[B, G]`` and ``answer_logliks`` ``[B]`` are length-normalised log-likelihoods ℓ
    (``sequence_logprob``) of the G samples and of the reference answer y. The three terms are
    exploration (Â_i ℓ(o_i)), imitation (β Â_y ℓ(y)) and the alignment regulariser; each switch drops
    one term (the paper's ablations). No ratio, no clipping, no KL. B is the step's ``num_groups``
    (default: this batch's).

    With ``group="samples"``, Σ_i Â_i = 0, so the regulariser's ℓ(y) part cancels and it only rescales
    exploration by (1 + λ); keeping y in the group (the default) is what makes it reference-aware.
    Stats give each term as it enters this batch's objective (loss = −sum) and its share |term| / Σ|terms|.
    """
    B, G = sample_logliks.shape
    for name, t, shape in (
        ("answer_logliks", answer_logliks, (B,)),
        ("sample_rewards", sample_rewards, (B, G)),
        ("answer_rewards", answer_rewards, (B,)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    a_samples, a_answer = grao_advantages(sample_rewards, answer_rewards, group=group, eps=eps)
    a_samples, a_answer = a_samples.to(sample_logliks.dtype), a_answer.to(sample_logliks.dtype)

    # Each term averaged as in the loss, 1/(B·G) Σ_b Σ_i; the imitation term does not depend on i.
    terms = {
        "exploration": (a_samples * sample_logliks).mean(),
        "imitation": beta * (a_answer * answer_logliks).mean(),
        "regularizer": lam * (a_samples * (sample_logliks - answer_logliks[:, None])).mean(),
    }
    enabled = {"exploration": exploration, "imitation": imitation, "regularizer": regularizer}
    objective = sum((terms[k] for k in terms if enabled[k]), start=sample_logliks.new_zeros(()))
    loss = -objective if num_groups is None else -objective * (B / num_groups)

    with torch.no_grad():
        values = {k: terms[k].item() if enabled[k] else 0.0 for k in terms}
        total = sum(abs(v) for v in values.values())
        stats = {"loss": -objective.item()}
        for k, v in values.items():
            stats[f"grao/{k}"] = v
            stats[f"grao/{k}_share"] = abs(v) / total if total > 0 else 0.0
        samples_equal = (sample_rewards == sample_rewards[:, :1]).all(dim=1)
        group_equal = samples_equal
        if group != "samples":
            group_equal = group_equal & (answer_rewards == sample_rewards[:, 0])
        stats.update(
            {
                "grao/adv_samples_mean": a_samples.mean().item(),
                "grao/adv_answer_mean": a_answer.mean().item(),
                "grao/adv_samples_abs_mean": a_samples.abs().mean().item(),
                "grao/frac_equal_groups": group_equal.float().mean().item(),
                "grao/frac_equal_samples": samples_equal.float().mean().item(),
                "grao/reward_mean": sample_rewards.float().mean().item(),
                "grao/answer_reward_mean": answer_rewards.float().mean().item(),
            }
        )
    return loss, stats
