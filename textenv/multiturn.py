"""Multi-turn environments: the observation is the conversation so far, the action the next assistant message.

A ``MultiTurnTask`` states a task's rules in four methods; ``MultiTurnEnv`` plays them as a
``gymnasium.Env``::

    class MyTask(textenv.MultiTurnTask):
        name, tools, max_turns = "My-v0", [State.lookup], 6     # tools: functions with type hints + docstrings
        splits = {"train": [row, ...], "eval": [row, ...]}      # rows: any JSON-like data, one per episode
        def reset(self, row, rng):      -> (first messages, state)
        def respond(self, state, message): -> textenv.Reply(messages=[...], reward=0.0, done=False, invalid=False)
        def final_reward(self, state):  -> float, added once when the episode ends (default 0.0)
        def oracle(self, state):        -> the optimal next assistant message (a str)

One ``step(text)``:
  1. ``text`` becomes the assistant message; its ``<tool_call>`` blocks are run against the state
     (``textenv.tools``) and give one ``tool`` message each.
  2. ``task.respond(state, assistant_message)`` sees the state after the tools ran and returns the
     env's further reply (e.g. a user turn), a per-turn reward, whether the task is over, and whether
     the message broke the task's rules.
  3. ``terminated = reply.done``; ``truncated = not terminated and turns == max_turns`` (or the rendered
     conversation outgrew ``max_observation_length``; then the observation keeps its last characters).

The reward of a step is ``turn_reward + final_reward``: ``turn_reward`` is ``reply.reward`` and
``final_reward`` is ``task.final_reward(state)`` on the step that ends the episode (terminated or
truncated) and 0.0 on every other step. The episode's return is their sum. ``info`` of every step:

    messages        the whole conversation (a copy), = the previous one + [assistant] + env_messages
    assistant       the assistant message made of the action (``content``, and ``tool_calls`` if any)
    env_messages    exactly what the env appended after it this step (tool results, then the reply)
    turn            assistant turns so far;   turn_reward, final_reward   as above
    invalid_action  a tool call failed, or the task said the message broke its rules
    tool_calls, tool_errors                    blocks found / failed this step
    episode_stats   running totals {"return", "turns", "invalid_actions", "tool_calls", "tool_errors"}
                    (not "episode": Gymnasium's RecordEpisodeStatistics writes that key)
    split, index, row                          which example the episode plays (as ``reset`` reports)

A batch of G episodes of one prompt is G envs reset with one seed: same row, same state, and each then
steps with its own message (see ``textenv.multiturn.make_group``). ``env.oracle()`` and
``task.demonstration(...)`` give optimal moves and whole optimal conversations for SFT and pretraining.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rewards.messages import render_messages
from textenv.env import RESET_OPTIONS
from textenv.spaces import TextSpace
from textenv.task import TaskError, check_messages
from textenv.tools import Toolbox, format_tool_call

Message = dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """What the task says after an assistant message (see the module doc for how the env uses it)."""

    messages: Sequence[Message] = ()
    reward: float = 0.0
    done: bool = False
    invalid: bool = False


class MultiTurnTask:
    """The rules of a multi-turn task; subclass it and define ``reset``, ``respond`` (and usually
    ``final_reward`` and ``oracle``). ``splits`` maps a split name to its rows."""

    name: str = ""
    splits: Mapping[str, Sequence[Any]] = {}
    tools: Sequence[Callable[..., Any]] = ()
    max_turns: int = 8
    description: str = ""

    def reset(self, row: Any, rng: np.random.Generator) -> tuple[list[Message], Any]:
        """The first messages of the episode on ``row`` and the episode's state (tools get it as ``self``)."""
        raise NotImplementedError

    def respond(self, state: Any, message: Message) -> Reply:
        """The env's reply to the assistant ``message`` (its tool calls already run against ``state``)."""
        raise NotImplementedError

    def final_reward(self, state: Any) -> float:
        """The reward added on the step that ends the episode."""
        return 0.0

    def oracle(self, state: Any) -> str:
        """The optimal next assistant message (free demonstrations)."""
        raise NotImplementedError(f"task {self.name!r} has no oracle")

    def split(self, name: str) -> Sequence[Any]:
        if name not in self.splits:
            raise TaskError(f"task {self.name!r} has no split {name!r}; splits: {sorted(self.splits)}")
        return self.splits[name]

    def demonstration(self, split: str = "train", index: int = 0, seed: int = 0) -> list[Message]:
        """The whole conversation of the oracle playing row ``index`` of ``split``: first messages, then each
        oracle message (tool calls parsed, as the env records them) and the env's replies."""
        episode = Episode(self, self.split(split)[index], np.random.default_rng(seed))
        while not (episode.terminated or episode.truncated):
            episode.step(self.oracle(episode.state))
        return episode.messages

    def demonstrations(self, split: str = "train", seed: int = 0) -> list[list[Message]]:
        """``demonstration`` of every row of ``split`` (SFT references, and the corpus below)."""
        return [self.demonstration(split, i, seed) for i in range(len(self.split(split)))]

    def corpus(self, split: str = "train", seed: int = 0) -> list[str]:
        """The demonstrations as plain text (``render_conversation``), e.g. to pretrain a tiny base model."""
        schemas = Toolbox(self.tools, where=self.name).schemas
        return [render_conversation(m, schemas) for m in self.demonstrations(split, seed)]


def check_multiturn_task(task: Any, where: str = "MultiTurnEnv") -> None:
    """Raise a TaskError naming the task and the attribute when ``task`` cannot be played."""
    if isinstance(task, type) and issubclass(task, MultiTurnTask):
        raise TaskError(f"{where} needs a task instance, got the class {task.__name__}; pass {task.__name__}()")
    if not isinstance(task, MultiTurnTask):
        raise TaskError(f"{where} needs a textenv.MultiTurnTask, got {type(task).__name__}")
    label = f"task {task.name!r}" if task.name else f"task {type(task).__name__}"
    if not isinstance(task.name, str) or not task.name:
        raise TaskError(f"{label}: set the class attribute name, e.g. name = \"My-v0\"")
    for method in ("reset", "respond"):
        if getattr(type(task), method) is getattr(MultiTurnTask, method):
            raise TaskError(f"{label} does not define {method}(); see textenv.MultiTurnTask")
    if not isinstance(task.max_turns, int) or isinstance(task.max_turns, bool) or task.max_turns < 1:
        raise TaskError(f"{label}: max_turns must be an integer >= 1, got {task.max_turns!r}")
    if not isinstance(task.splits, Mapping) or not task.splits:
        raise TaskError(f"{label}: splits must be a non-empty dict of split name -> rows")
    for name, rows in task.splits.items():
        if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
            raise TaskError(f"{label}: split {name!r} must be a non-empty list of rows")
    Toolbox(task.tools, where=label)


def render_conversation(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                        tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """The conversation as text: through ``tokenizer``'s chat template with ``tools=`` when it has one,
    else plainly: a ``tools: [schemas as JSON]`` line when there are tools, then one ``role: content`` line
    per message (``textenv.render_messages``), an assistant's tool calls written back in the Hermes format."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    plain = []
    for m in messages:
        calls = [format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls", ())]
        plain.append({"role": m["role"], "content": "\n".join(([m["content"]] if m["content"] else []) + calls)})
    head = f"tools: {json.dumps(list(tools))}\n" if tools else ""
    return head + render_messages(plain, add_generation_prompt=add_generation_prompt)


@dataclass
class Episode:
    """One episode's bookkeeping, without Gymnasium: the env, ``demonstration`` and tests all play through it."""

    task: MultiTurnTask
    row: Any
    rng: np.random.Generator
    toolbox: Toolbox | None = None
    max_turns: int | None = None
    messages: list[Message] = field(init=False)
    state: Any = field(init=False)
    turns: int = field(init=False, default=0)
    terminated: bool = field(init=False, default=False)
    truncated: bool = field(init=False, default=False)
    stats: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.toolbox = self.toolbox if self.toolbox is not None else Toolbox(self.task.tools, where=self.task.name)
        self.max_turns = self.max_turns or self.task.max_turns
        first, self.state = self.task.reset(copy.deepcopy(self.row), self.rng)
        self.messages = check_messages(first, f"task {self.task.name!r}: reset() messages")
        self.stats = {"return": 0.0, "turns": 0, "invalid_actions": 0, "tool_calls": 0, "tool_errors": 0}

    def step(self, text: str) -> dict[str, Any]:
        """Play one assistant message; returns the step's facts (the env's ``info`` keys, less the copies)."""
        assert self.toolbox is not None and self.max_turns is not None
        turn = self.toolbox.run(text, self.state)
        reply = self.task.respond(self.state, turn.assistant)
        if not isinstance(reply, Reply):
            raise TaskError(f"task {self.task.name!r}: respond() returned {type(reply).__name__}, "
                            "expected textenv.Reply")
        replies = check_messages(list(reply.messages), f"task {self.task.name!r}: respond() messages") \
            if reply.messages else []
        env_messages = turn.results + replies
        self.messages += [turn.assistant, *env_messages]
        self.turns += 1
        self.terminated = bool(reply.done)
        self.truncated = not self.terminated and self.turns >= self.max_turns
        turn_reward = float(reply.reward)
        final_reward = float(self.task.final_reward(self.state)) if self.terminated or self.truncated else 0.0
        invalid = bool(reply.invalid) or turn.n_errors > 0
        s = self.stats
        s["return"] += turn_reward + final_reward
        s["turns"], s["invalid_actions"] = self.turns, s["invalid_actions"] + invalid
        s["tool_calls"] += turn.n_calls
        s["tool_errors"] += turn.n_errors
        return {"assistant": turn.assistant, "env_messages": env_messages, "turn": self.turns,
                "turn_reward": turn_reward, "final_reward": final_reward, "invalid_action": invalid,
                "tool_calls": turn.n_calls, "tool_errors": turn.n_errors}


class MultiTurnEnv(gym.Env[str, str]):
    """A ``MultiTurnTask`` as a Gymnasium env (see the module doc for ``step``, the reward and ``info``).

    ``max_length`` bounds an assistant message (characters); ``max_turns`` (default: the task's) the
    assistant turns; ``tokenizer`` renders observations through its chat template, tools included.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, task: MultiTurnTask, split: str = "train", max_length: int = 4096,
                 max_turns: int | None = None, tokenizer: Any = None, max_observation_length: int = 65536,
                 render_mode: str | None = None):
        check_multiturn_task(task)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{task.name}: render_mode must be None or 'ansi', got {render_mode!r}")
        if max_turns is not None and (not isinstance(max_turns, int) or max_turns < 1):
            raise ValueError(f"{task.name}: max_turns must be an integer >= 1, got {max_turns!r}")
        task.split(split)
        self.task, self.split, self.render_mode, self.tokenizer = task, split, render_mode, tokenizer
        self.max_turns = max_turns or task.max_turns
        self.toolbox = Toolbox(task.tools, where=task.name)
        self.action_space = TextSpace(max_length)
        self.observation_space = TextSpace(max_observation_length)
        self._episode: Episode | None = None
        self._where: tuple[str, int] | None = None
        self._text = ""

    @property
    def env_id(self) -> str:
        return self.spec.id if self.spec is not None else self.task.name

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The tools' JSON schemas, for ``tokenizer.apply_chat_template(messages, tools=env.tools)``."""
        return copy.deepcopy(self.toolbox.schemas)

    @property
    def messages(self) -> list[Message]:
        """The conversation so far (a copy)."""
        return copy.deepcopy(self._episode.messages) if self._episode else []

    @property
    def state(self) -> Any:
        """The task's state of the current episode (what ``oracle`` reads; tools get it as ``self``)."""
        if self._episode is None:
            raise gym.error.ResetNeeded(f"{self.env_id}: call reset() before reading state")
        return self._episode.state

    def render_conversation(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return render_conversation(messages, self.toolbox.schemas, self.tokenizer, add_generation_prompt)

    def _observe(self) -> tuple[str, bool]:
        assert self._episode is not None
        text = self.render_conversation(self._episode.messages)
        limit = self.observation_space.max_length
        return (text, False) if len(text) <= limit else (text[-limit:], True)

    def _info(self) -> dict[str, Any]:
        assert self._episode is not None and self._where is not None
        return {"messages": self.messages, "split": self._where[0], "index": self._where[1],
                "row": copy.deepcopy(self._episode.row), "episode_stats": dict(self._episode.stats)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on ``options["index"]`` of ``options["split"]`` (default: a row drawn from the seed)."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - RESET_OPTIONS
        if unknown:
            raise ValueError(f"{self.env_id}: unknown reset options {sorted(unknown)}; known: {sorted(RESET_OPTIONS)}")
        split = options.get("split") or self.split
        rows = self.task.split(split)
        index = options.get("index")
        if index is None:
            index = int(self.np_random.integers(len(rows)))
        elif isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < len(rows):
            raise IndexError(f"{self.env_id}: index {index!r} is out of range for split {split!r} "
                             f"with {len(rows)} rows")
        self._episode = Episode(self.task, rows[int(index)], self.np_random, self.toolbox, self.max_turns)
        self._where = (split, int(index))
        self._text, too_long = self._observe()
        if too_long:
            raise TaskError(f"{self.env_id}: the first messages render to more than max_observation_length="
                            f"{self.observation_space.max_length} characters")
        return self._text, self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        episode = self._episode
        if episode is None or episode.terminated or episode.truncated:
            raise gym.error.ResetNeeded(f"{self.env_id}: call reset() before step() "
                                        f"({'the episode has ended' if episode else 'no episode yet'})")
        if not isinstance(action, str):
            raise TypeError(f"{self.env_id}: the action must be the assistant message as a str, "
                            f"got {type(action).__name__}")
        if len(action) > self.action_space.max_length:
            raise ValueError(f"{self.env_id}: the message has {len(action)} characters, more than "
                             f"max_length={self.action_space.max_length} (pass max_length= to make)")
        facts = episode.step(action)
        self._text, too_long = self._observe()
        if too_long and not episode.terminated and not episode.truncated:
            episode.truncated = True
            facts["final_reward"] = float(self.task.final_reward(episode.state))
            episode.stats["return"] += facts["final_reward"]
        info = {**self._info(), **copy.deepcopy(facts)}
        return self._text, facts["turn_reward"] + facts["final_reward"], episode.terminated, episode.truncated, info

    def oracle(self) -> str:
        """The task's optimal next message for the current episode."""
        if self._episode is None:
            raise gym.error.ResetNeeded(f"{self.env_id}: call reset() before oracle()")
        return self.task.oracle(self._episode.state)

    def render(self) -> str | None:
        return self._text if self.render_mode == "ansi" else None


def make_group(id: str, group_size: int, **kwargs: Any) -> list[MultiTurnEnv]:
    """``group_size`` envs of one registered multi-turn task (built once, shared) for G episodes per prompt:
    reset each with the same seed and they start the same episode."""
    from textenv.registry import make, make_task

    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"make_group({id!r}): group_size must be an integer >= 1, got {group_size!r}")
    env_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in MULTITURN_OPTIONS}
    task = make_task(id, **kwargs)
    if not isinstance(task, MultiTurnTask):
        raise TaskError(f"make_group({id!r}): {id} is a single-turn task; use textenv.make_vec")
    return [make(id, task=task, **env_kw) for _ in range(group_size)]


MULTITURN_OPTIONS = frozenset({"split", "max_length", "max_turns", "tokenizer", "max_observation_length",
                               "render_mode"})
