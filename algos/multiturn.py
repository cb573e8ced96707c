"""Multi-turn rollout: G episodes per prompt played in batch, kept as token-faithful trajectories.

``collect_episodes(policy, "textenv/GuessNumber-v0", num_prompts=B, group_size=G, seed=s, ...)`` resets
B groups of G envs (the envs of a group with one seed, so they start the same episode), then, turn by
turn, samples the next assistant message of every live episode with ONE batched ``policy.generate``
call and steps each env with its text, until every episode has ended (terminated or truncated).

``collect_demonstrations(policy, env, num_prompts=B, seed=s)`` has the task's oracle play the same B
episodes (rows and states) once each, tokenised as if the model had sampled the oracle's messages: the
reference trajectories y of SFT and GRAO and the preferred ones of DPO.

A trajectory is what the model saw and wrote, token by token, and nothing is ever re-tokenised:

    prompt_ids   the first messages through the chat template (``tools=`` the env's schemas) with the
                 generation prompt
    ids          per turn: the sampled ids verbatim (the EOS the model emitted included), then the
                 environment's tokens: the rest of the template's close of an assistant turn (for
                 ChatML the ``\\n`` after ``<|im_end|>``; all of ``<|im_end|>\\n`` when the turn hit
                 ``max_new_tokens`` without an EOS), the env's messages of that step, and the next
                 generation prompt (none after the last turn)
    mask         1 on sampled ids, 0 on environment/template tokens
    turns        the turn (0-based) each token of ``ids`` belongs to; a turn's env tokens carry its index

The environment's tokens are the template's rendering of only the env's messages. They are rendered
after a fixed stand-in conversation (``[user STUB_USER, assistant STUB_ASSISTANT]``) and cut off after
the stand-in assistant's close, so that the rendering cannot depend on the real earlier turns: a
template that rewrites them (Qwen3's drops ``<think>`` from earlier assistant turns, and ``full
render[len(previous render):]`` then fails) still gives the right segment. The limits: the segment is
tokenised on its own, which equals a whole-conversation tokenisation when the segment starts at a
special-token or pre-token boundary (true of ChatML-style templates); a template whose rendering of a
message depends on more than the message before it (its position in the whole conversation, say)
would get the stand-in's version. ``drift`` measures both against a fresh rendering of the final
conversation. Without a chat template the conversation is rendered plainly (``textenv``'s
``render_conversation``) by the same rule.

``Episodes.batch`` is an ``EncodedBatch``: ``completion_ids`` is the whole post-prompt trajectory,
``completion_mask`` the loss mask and ``completion_attention`` 1 on every real token, so
``Policy.logprobs`` attends to the env tokens (and positions them) but gives them log-prob 0 and every
masked loss weight 0. An episode whose next turn would not fit the model's context stops before it,
truncated (``context_full``), with the rewards it got so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from algos.policy import ContextLengthError, EncodedBatch, Policy
from algos.rollout import chunk_seed
from textenv.multiturn import MultiTurnEnv, make_group, render_conversation

Message = dict[str, Any]
STUB_USER = "grao-stub-user"
STUB_ASSISTANT = "grao-stub-assistant"


class TemplateError(ValueError):
    """The chat template does not render an env segment the way ``algos.multiturn`` needs."""


@dataclass
class Trajectory:
    """One episode as token ids (see the module doc) and its facts."""

    group: int  # the prompt group it belongs to
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 = sampled by the model
    turns: list[int] = field(default_factory=list)  # turn of each token of ids
    sampled: list[list[int]] = field(default_factory=list)  # each turn's sampled ids, verbatim
    texts: list[str] = field(default_factory=list)  # each turn's decoded text (the env's action)
    rewards: list[float] = field(default_factory=list)  # each step's reward (turn_reward + final_reward)
    invalid: list[bool] = field(default_factory=list)  # each turn's info["invalid_action"]
    cut: list[bool] = field(default_factory=list)  # the turn hit max_new_tokens without an EOS
    messages: list[Message] = field(default_factory=list)  # the conversation so far (the env's)
    stats: dict[str, Any] = field(default_factory=dict)  # the env's episode_stats
    terminated: bool = False
    truncated: bool = False
    context_full: bool = False  # truncated because the next turn would not fit the model's context

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def num_turns(self) -> int:
        return len(self.sampled)

    @property
    def episode_return(self) -> float:
        return float(sum(self.rewards))

    @property
    def success(self) -> bool:
        """Terminated (the task ended, not the turn limit) with a positive return."""
        return self.terminated and self.episode_return > 0

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.ids


class Renderer:
    """The chat template (or the plain rendering) of one tokenizer and tool set, as ``Trajectory`` needs it."""

    def __init__(self, tokenizer: Any, tools: Sequence[dict[str, Any]] | None = None):
        self.tokenizer, self.tools = tokenizer, list(tools or [])
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        stub = [{"role": "user", "content": STUB_USER}, {"role": "assistant", "content": STUB_ASSISTANT}]
        base = self.text(stub)
        if base.count(STUB_ASSISTANT) != 1:
            raise TemplateError(f"the chat template renders the assistant message {STUB_ASSISTANT!r} "
                                f"{base.count(STUB_ASSISTANT)} times, expected once: {base!r}")
        self.stub = stub
        self.close = base[base.index(STUB_ASSISTANT) + len(STUB_ASSISTANT):]  # e.g. "<|im_end|>\n"

    def text(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return render_conversation(messages, self.tools, self.tokenizer if self.templated else None,
                                   add_generation_prompt)

    def encode(self, text: str, first: bool = False) -> list[int]:
        """Token ids of a rendered piece; ``first`` puts BOS first for a plain rendering (a template has its own)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if first and not self.templated and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return self.encode(self.text(messages, add_generation_prompt=True), first=True)

    def segment(self, env_messages: Sequence[Message], generation_prompt: bool) -> str:
        """The text the template appends after an assistant turn's close for ``env_messages`` (and the next
        generation prompt), rendered after the stand-in conversation (see the module doc)."""
        full = self.text([*self.stub, *env_messages], add_generation_prompt=generation_prompt)
        at = full.find(STUB_ASSISTANT)
        after = full[at + len(STUB_ASSISTANT):] if at >= 0 else ""
        if at < 0 or not after.startswith(self.close):
            raise TemplateError(f"the chat template does not close the assistant turn with {self.close!r} when "
                                f"messages follow it ({full!r}); algos.multiturn cannot cut out the env's tokens")
        return after[len(self.close):]

    def env_ids(self, sampled: Sequence[int], eos_ids: Sequence[int], env_messages: Sequence[Message],
                generation_prompt: bool) -> list[int]:
        """The environment's tokens after a turn that sampled ``sampled``: what is left of the turn's close
        (its start is the EOS the model emitted, when it is the template's), then ``segment``."""
        close = self.close
        if sampled and sampled[-1] in eos_ids:
            emitted = self.tokenizer.convert_ids_to_tokens(sampled[-1])
            if close.startswith(emitted):
                close = close[len(emitted):]
        return self.encode(close + self.segment(env_messages, generation_prompt))


@dataclass(frozen=True)
class Drift:
    """How a trajectory's ids differ from a fresh ``apply_chat_template`` of its final conversation."""

    first_difference: int | None  # the first position where they differ (None: identical)
    num_different: int  # positions that differ, counting every position one has and the other lacks
    length: int  # the trajectory's tokens (prompt included)
    fresh_length: int  # the fresh rendering's tokens


def drift(trajectory: Trajectory, tokenizer: Any, messages: Sequence[Message] | None = None,
          tools: Sequence[dict[str, Any]] | None = None) -> Drift:
    """Compare ``trajectory.all_ids`` with the final conversation (``messages``, default the trajectory's)
    rendered afresh and tokenised whole: what re-tokenising would have trained on instead."""
    renderer = Renderer(tokenizer, tools)
    fresh = renderer.encode(renderer.text(trajectory.messages if messages is None else messages), first=True)
    ours = trajectory.all_ids
    common = min(len(ours), len(fresh))
    differ = [i for i in range(common) if ours[i] != fresh[i]]
    num = len(differ) + abs(len(ours) - len(fresh))
    first = differ[0] if differ else (common if len(ours) != len(fresh) else None)
    return Drift(first, num, len(ours), len(fresh))


@dataclass
class Episodes:
    """B groups of G episodes (episode ``b*G + i`` is the ``i``-th of group ``b``) and their batch."""

    trajectories: list[Trajectory]
    group_size: int
    batch: EncodedBatch  # completion = the whole post-prompt trajectory; completion_mask = loss mask
    turn_index: torch.Tensor  # [M, T] turn of each completion token, -1 at padding
    turn_rewards: torch.Tensor  # [M, K] each turn's reward, 0 past an episode's last turn
    turn_mask: torch.Tensor  # [M, K] 1 on the turns an episode played
    stats: dict[str, float]
    drift: list[Drift] | None = None  # with check_drift=True

    @property
    def returns(self) -> torch.Tensor:
        """``[B, G]`` episode returns (the outcome reward of each episode)."""
        return self.turn_rewards.sum(-1).view(-1, self.group_size)


def episode_seed(seed: int, group: int) -> int:
    """The reset seed of every env of prompt group ``group``."""
    return int(np.random.default_rng([seed, group, 0]).integers(2**31))


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of the batched ``generate`` call of turn ``turn``."""
    return int(np.random.default_rng([seed, turn, 1]).integers(2**31))


def collect_episodes(policy: Policy, env: str | Sequence[MultiTurnEnv], *, group_size: int, seed: int,
                     num_prompts: int = 1, split: str = "train", indices: Sequence[int] | None = None,
                     max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                     repetition_penalty: float = 1.0, greedy: bool = False, max_turns: int | None = None,
                     check_drift: bool = False, first_group: int = 0, chunk: int | None = None,
                     lock_step: Callable[[bool], bool] | None = None) -> Episodes:
    """Play ``num_prompts`` groups of ``group_size`` episodes and return them as :class:`Episodes`.

    ``env`` is a multi-turn env id (``num_prompts`` groups are made with ``textenv.make_group``) or a
    flat list of ``num_prompts * group_size`` envs, group-major. Group ``b`` is reset with
    ``episode_seed(seed, first_group + b)`` (on row ``indices[b]`` of ``split`` when given); groups are
    played ``chunk`` at a time (all at once when None), and turn ``k`` of the chunk that starts at group
    ``g`` samples all its live episodes in one ``generate`` call seeded ``turn_seed(chunk_seed(seed,
    first_group + g), k)``, ``max_new_tokens`` per turn. So the same arguments give the same episodes,
    and a process that plays a share of a step's groups (``first_group`` its offset) plays them as one
    process playing the whole step would, when ``chunk`` divides the share. ``lock_step`` (an engine's
    ``any``, for a sharded model) is asked each turn whether any process still has a live episode: every
    process then runs every turn's ``generate``, as a sharded model's forward passes need.
    """
    envs = _envs(env, group_size, num_prompts, split, indices, max_turns)
    chunk = chunk or num_prompts
    trajectories, drifts = [], []
    for start in range(0, num_prompts, chunk):
        stop = min(start + chunk, num_prompts)
        sampling_seed = chunk_seed(seed, first_group + start)

        def sample(live: list[int], trajectories: list[Trajectory], turn: int, sampling_seed: int = sampling_seed
                   ) -> list[tuple[list[int], str, bool]]:
            out = policy.generate([t.all_ids for t in trajectories], temperature=temperature, top_p=top_p,
                                  top_k=top_k, repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                                  greedy=greedy, seed=turn_seed(sampling_seed, turn))
            return [(out.completion_ids[row][out.completion_mask[row].bool()].tolist(), out.texts[row],
                     bool(out.truncated[row])) for row in range(len(trajectories))]

        played = _play(policy, envs[start * group_size:stop * group_size], group_size, seed, split,
                       None if indices is None else indices[start:stop], sample, max_new_tokens, first_group + start,
                       lock_step)
        for t in played:
            t.group += start  # the group within this call's batch
        trajectories += played
        if check_drift:
            drifts += [drift(t, policy.tokenizer, tools=list(envs[0].tools or [])) for t in played]
    return as_episodes(policy, trajectories, group_size, drifts if check_drift else None)


def collect_demonstrations(policy: Policy, env: str | Sequence[MultiTurnEnv], *, seed: int, num_prompts: int = 1,
                           split: str = "train", indices: Sequence[int] | None = None,
                           max_turns: int | None = None, check_drift: bool = False, first_group: int = 0
                           ) -> Episodes:
    """The task's oracle playing the episodes that ``collect_episodes`` with the same ``seed``, ``split``,
    ``indices`` and ``first_group`` plays (one per group: the same rows and states): the demonstration
    trajectories that SFT and GRAO's imitation term take as the reference answer y, and DPO as the preferred
    trajectory.

    Each oracle message is tokenised as the model would have sampled it: its text's ids, then the tokenizer's
    EOS (the ids a model that wrote this message and stopped would have produced); the environment's tokens
    and the loss mask are then exactly those of a sampled trajectory. ``episode_return`` is the oracle's
    return (GRAO's R(y)).
    """
    envs = _envs(env, 1, num_prompts, split, indices, max_turns)
    renderer, eos = Renderer(policy.tokenizer, envs[0].tools), policy.tokenizer.eos_token_id
    if eos is None:
        raise TemplateError("collect_demonstrations: the tokenizer has no eos_token_id to end an oracle turn with")

    def oracle(live: list[int], trajectories: list[Trajectory], turn: int) -> list[tuple[list[int], str, bool]]:
        moves = [envs[k].oracle() for k in live]
        return [(renderer.encode(text) + [eos], text, False) for text in moves]

    played = _play(policy, envs, 1, seed, split, indices, oracle, 0, first_group)
    drifts = [drift(t, policy.tokenizer, tools=list(envs[0].tools or [])) for t in played] if check_drift else None
    demonstrations = as_episodes(policy, played, 1, drifts)
    limit = policy.context_length
    for b, t in enumerate(demonstrations.trajectories):
        if limit is not None and len(t.all_ids) > limit:
            row = f"row {indices[b]}" if indices is not None else f"the row of group {b}"
            raise ContextLengthError(f"{envs[b].env_id}: the oracle's demonstration of {row} of split {split!r} takes "
                                     f"{len(t.all_ids)} tokens, past the model's context of {limit} positions; use a "
                                     "model with a longer context or fewer max_turns", "completion", b,
                                     len(t.all_ids), limit)
    return demonstrations


def _envs(env: str | Sequence[MultiTurnEnv], group_size: int, num_prompts: int, split: str,
          indices: Sequence[int] | None, max_turns: int | None) -> list[MultiTurnEnv]:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"collect_episodes: group_size must be an integer >= 1, got {group_size!r}")
    if indices is not None and len(indices) != num_prompts:
        raise ValueError(f"collect_episodes: {len(indices)} indices for num_prompts={num_prompts}")
    if isinstance(env, str):
        options = {} if max_turns is None else {"max_turns": max_turns}
        envs = [e for _ in range(num_prompts) for e in make_group(env, group_size, split=split, **options)]
    else:
        envs = list(env)
        if len(envs) != num_prompts * group_size:
            raise ValueError(f"collect_episodes: got {len(envs)} envs for num_prompts={num_prompts} groups of "
                             f"group_size={group_size}; pass {num_prompts * group_size}, group-major")
    for e in envs:
        if not isinstance(e, MultiTurnEnv):
            raise TypeError(f"collect_episodes needs multi-turn envs (textenv.MultiTurnEnv), got {type(e).__name__}")
    return envs


# Gives the next message of the live episodes (their indices and trajectories) at a turn: ids, text, length-capped.
Actor = Callable[[list[int], list[Trajectory], int], list[tuple[list[int], str, bool]]]


def _play(policy: Policy, envs: list[MultiTurnEnv], group_size: int, seed: int, split: str,
          indices: Sequence[int] | None, act: Actor, max_new_tokens: int, first_group: int = 0,
          lock_step: Callable[[bool], bool] | None = None) -> list[Trajectory]:
    """Reset ``envs`` (group ``b`` with ``episode_seed(seed, first_group + b)``), then turn by turn ask ``act``
    for the next message of every live episode (its ids, text, and whether it hit the length cap) and step
    the envs. With ``lock_step``, a turn with no live episode here still runs while another process has one:
    ``act`` then continues the first episode's prompt, and what it writes is dropped."""
    renderer = Renderer(policy.tokenizer, envs[0].tools)
    eos_ids = policy.eos_token_ids
    trajectories = []
    for k, e in enumerate(envs):
        b = k // group_size  # the group within this call; first_group + b within the step
        options: dict[str, Any] = ({"split": split} if indices is None
                                   else {"split": split, "index": int(indices[b])})
        _, info = e.reset(seed=episode_seed(seed, first_group + b), options=options)
        trajectories.append(Trajectory(b, renderer.prompt_ids(info["messages"]), messages=info["messages"],
                                       stats=info["episode_stats"]))
    limit = policy.context_length
    turn = 0
    while True:
        for t in trajectories:  # an episode whose next turn cannot fit stops before it
            if not t.done and limit is not None and len(t.all_ids) + max_new_tokens > limit:
                t.truncated = t.context_full = True
        live = [k for k, t in enumerate(trajectories) if not t.done]
        if lock_step is not None and lock_step(bool(live)) and not live:  # every process asks once a turn
            act([0], [dataclasses.replace(trajectories[0], ids=[])], turn)  # keeps another process's company
            turn += 1
            continue
        if not live:
            break
        for k, (sampled, text, cut) in zip(live, act(live, [trajectories[k] for k in live], turn), strict=True):
            t = trajectories[k]
            _, reward, terminated, truncated, info = envs[k].step(text)
            env_ids = renderer.env_ids(sampled, eos_ids, info["env_messages"],
                                       generation_prompt=not (terminated or truncated))
            t.ids += sampled + env_ids
            t.mask += [1] * len(sampled) + [0] * len(env_ids)
            t.turns += [turn] * (len(sampled) + len(env_ids))
            t.sampled.append(sampled)
            t.texts.append(text)
            t.rewards.append(float(reward))
            t.invalid.append(bool(info["invalid_action"]))
            t.cut.append(cut)
            t.messages, t.stats = info["messages"], info["episode_stats"]
            t.terminated, t.truncated = bool(terminated), bool(truncated)
        turn += 1
    return trajectories


def multiturn_env(env: Any) -> MultiTurnEnv | None:
    """The ``MultiTurnEnv`` under ``env`` (``env`` itself, or what its wrappers or the engine's sharded view
    wrap), None for any other env: how an algorithm's ``make_batch`` tells a multi-turn env."""
    inner = getattr(env, "unwrapped", env)
    return inner if isinstance(inner, MultiTurnEnv) else None


def copies(env: MultiTurnEnv, n: int) -> list[MultiTurnEnv]:
    """``n`` fresh envs of ``env``'s task, split and turn limit: what a step plays its episodes in."""
    return [MultiTurnEnv(env.task, split=env.split, max_turns=env.max_turns) for _ in range(n)]


def as_episodes(policy: Policy, trajectories: list[Trajectory], group_size: int,
                drifts: list[Drift] | None = None) -> Episodes:
    """``trajectories`` (group-major, ``group_size`` per group) padded into one :class:`Episodes` batch."""
    device = policy.device
    prompt_ids, prompt_mask = policy._pad([t.prompt_ids for t in trajectories], left=True)
    completion_ids, attention = policy._pad([t.ids for t in trajectories], left=False)
    loss_mask = torch.zeros_like(attention)
    turn_index = torch.full_like(attention, -1)
    K = max(max(t.num_turns for t in trajectories), 1)
    turn_rewards = torch.zeros(len(trajectories), K, dtype=torch.float32)
    turn_mask = torch.zeros(len(trajectories), K, dtype=torch.long)
    for i, t in enumerate(trajectories):
        n = len(t.ids)
        loss_mask[i, :n] = torch.tensor(t.mask, dtype=torch.long)
        turn_index[i, :n] = torch.tensor(t.turns, dtype=torch.long)
        turn_rewards[i, :t.num_turns] = torch.tensor(t.rewards, dtype=torch.float32)
        turn_mask[i, :t.num_turns] = 1
    batch = EncodedBatch(prompt_ids, prompt_mask, completion_ids, loss_mask, attention)
    return Episodes(trajectories, group_size, batch, turn_index, turn_rewards.to(device), turn_mask.to(device),
                    episode_stats(trajectories), drifts)


def episode_stats(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """What to watch in a multi-turn rollout. ``tools/success_rate`` (calls that did not come back as an
    error) is there only when some episode called a tool."""
    returns = np.array([t.episode_return for t in trajectories])
    turns = sum(t.num_turns for t in trajectories)
    calls = sum(t.stats.get("tool_calls", 0) for t in trajectories)
    errors = sum(t.stats.get("tool_errors", 0) for t in trajectories)
    sampled = sum(sum(t.mask) for t in trajectories)
    stats = {
        "reward/mean": float(returns.mean()),
        "reward/std": float(returns.std()),
        "episodes/success_rate": float(np.mean([t.success for t in trajectories])),
        "episodes/turns": turns / len(trajectories),
        "episodes/terminated_rate": float(np.mean([t.terminated for t in trajectories])),
        "episodes/context_full_rate": float(np.mean([t.context_full for t in trajectories])),
        "turns/invalid_rate": sum(sum(t.invalid) for t in trajectories) / max(turns, 1),
        "turns/clipped_ratio": sum(sum(t.cut) for t in trajectories) / max(turns, 1),
        "tokens/generated": float(sampled),
        "tokens/env": float(sum(len(t.ids) for t in trajectories) - sampled),
        "tools/calls_per_turn": calls / max(turns, 1),
    }
    if calls:
        stats["tools/success_rate"] = (calls - errors) / calls
    return stats
