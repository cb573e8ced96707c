"""Examples and tasks: the data an environment serves and the reward that judges it.

A prompt is a string or a conversation in TRL's format, a list of messages ``{"role", "content"}``
(roles: system, user, assistant, tool; content a string; other keys such as ``name`` are kept). A
reference, chosen or rejected answer is a string or a list of assistant messages, e.g.
``[{"role": "assistant", "content": "It is blue."}]``. ``Example`` checks this when it is built, so
a malformed message never reaches an environment or a reward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rewards
from rewards import ValidatedReward
from rewards.messages import is_messages


class TaskError(ValueError):
    """A task or dataset is malformed; the message names the task, split or column."""


ROLES = ("system", "user", "assistant", "tool")
RESERVED_META = frozenset({"prompts", "completions", "references", "completion_ids", "where"})  # the reward call's own
Message = dict[str, Any]
Text = str | list[Message]   # a prompt or an answer: plain text, or messages


def is_conversational(x: Any) -> bool:
    """True for a message list (or an ``Example`` whose prompt is one), False for plain text."""
    return is_messages(x.prompt if isinstance(x, Example) else x)


def check_messages(value: Any, where: str, *, answer: bool = False) -> list[Message]:
    """A copy of ``value`` as a list of message dicts; anything malformed is a ``TaskError`` naming ``where``.

    ``answer=True`` (references, chosen, rejected) also requires every message to be the assistant's.
    """
    if not isinstance(value, list | tuple) or not value:
        raise TaskError(f"{where}: expected a non-empty list of messages {{'role', 'content'}}, got "
                        f"{'an empty list' if isinstance(value, list | tuple) else type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise TaskError(f"{where}: message {j} is {type(m).__name__}, expected a dict with 'role' and 'content'")
        absent = [k for k in ("role", "content") if k not in m]
        if absent:
            raise TaskError(f"{where}: message {j} has no {' or '.join(map(repr, absent))}; it has {sorted(m)}")
        if m["role"] not in ROLES:
            raise TaskError(f"{where}: message {j} has unknown role {m['role']!r}; roles: {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise TaskError(f"{where}: message {j} ({m['role']}) has {type(m['content']).__name__} content, "
                            "expected str")
        if answer and m["role"] != "assistant":
            raise TaskError(f"{where}: message {j} has role {m['role']!r}; an answer holds assistant messages only")
        out.append(dict(m))
    return out


def check_text(value: Any, where: str, *, answer: bool = False) -> Text:
    """``value`` if it is a string, else ``check_messages(value, where, answer=answer)``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return check_messages(value, where, answer=answer)
    raise TaskError(f"{where} is {type(value).__name__}, expected str or a list of messages")


def message_text(x: Text) -> str:
    """The text of an answer: the string itself, or its assistant messages' contents (joined by newlines)."""
    if isinstance(x, str):
        return x
    parts = [m["content"] for m in x if m["role"] == "assistant"]
    if not parts:
        raise TaskError(f"message_text: no assistant message in {x!r}")
    return "\n".join(parts)


def split_conversation(messages: Any, where: str) -> tuple[list[Message], list[Message]]:
    """TRL's "messages" column: ``(prompt, [answer])``, the answer being the last message.

    The last message must be the assistant's (a trailing user turn would have nowhere to go) and the
    prompt, every message before it, must not be empty.
    """
    messages = check_messages(messages, where)
    if messages[-1]["role"] != "assistant":
        raise TaskError(f"{where}: the conversation ends with a {messages[-1]['role']!r} message; its last "
                        "message must be the assistant's answer, which becomes the reference")
    if len(messages) == 1:
        raise TaskError(f"{where}: the conversation is only an assistant message; nothing is left for the prompt")
    return messages[:-1], messages[-1:]


@dataclass(frozen=True)
class Example:
    """One prompt, with what the task knows about good answers to it.

    Each text is a string or messages (see the module doc); message lists are checked and copied, and so
    is ``meta``, a dict with string keys. A wrong field is a ``TaskError`` naming it.
    """

    prompt: Text
    reference: Text | None = None
    chosen: Text | None = None
    rejected: Text | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompt", "reference", "chosen", "rejected"):
            value = getattr(self, name)
            if value is not None or name == "prompt":
                object.__setattr__(self, name, check_text(value, f"Example.{name}", answer=name != "prompt"))
        object.__setattr__(self, "meta", check_meta(self.meta, "Example.meta"))


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """A copy of ``meta`` as a dict with string keys (they become the reward's keyword columns)."""
    if not isinstance(meta, Mapping):
        raise TaskError(f"{where} must be a dict of str keys, got {type(meta).__name__}")
    bad = [k for k in meta if not isinstance(k, str)]
    if bad:
        bad = bad[0]
        raise TaskError(f"{where}: key {bad!r} is {type(bad).__name__}, expected str (meta keys become the "
                        "reward's keyword columns)")
    return dict(meta)


@dataclass
class Task:
    """Named splits of examples plus the reward that scores completions.

    ``metrics`` are extra rewards reported at evaluation (e.g. a gold judge beside a learned reward).
    ``corpus`` is domain text from which a tiny base model can be pretrained. ``subset_key`` names the
    ``Example.meta`` key whose values split evaluation into subsets (e.g. helpful / harmless).
    """

    name: str
    splits: dict[str, list[Example]]
    reward: str | Callable[..., Any] | ValidatedReward
    metrics: dict[str, str | Callable[..., Any] | ValidatedReward] = field(default_factory=dict)
    corpus: list[str] | None = None
    subset_key: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.splits:
            raise TaskError(f"task {self.name!r} has no splits")
        for split, examples in self.splits.items():
            if not examples:
                raise TaskError(f"task {self.name!r}: split {split!r} is empty")
            for i, ex in enumerate(examples):
                if not isinstance(ex, Example):
                    raise TaskError(f"task {self.name!r}: split {split!r} item {i} is "
                                    f"{type(ex).__name__}, expected textenv.Example")
                clash = sorted(RESERVED_META & set(ex.meta))
                if clash:
                    raise TaskError(f"task {self.name!r}: split {split!r} item {i}: meta key {clash[0]!r} is also "
                                    "the name of a reward argument; rename it")
        self.reward = rewards.resolve(self.reward)
        self.metrics = {k: rewards.resolve(v, name=k) for k, v in self.metrics.items()}

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise TaskError(f"task {self.name!r} has no split {name!r}; splits: {sorted(self.splits)}")
        return self.splits[name]

    def pairs(self, split: str = "train") -> list[Example]:
        """The examples of ``split`` that carry a (chosen, rejected) preference pair."""
        pairs = [ex for ex in self.split(split) if ex.chosen is not None and ex.rejected is not None]
        if not pairs:
            raise TaskError(f"task {self.name!r}: split {split!r} has no (chosen, rejected) pairs")
        return pairs

    def with_references(self, split: str = "train") -> list[Example]:
        refs = [ex for ex in self.split(split) if ex.reference is not None]
        if not refs:
            raise TaskError(f"task {self.name!r}: split {split!r} has no reference answers")
        return refs


def columns_of(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """Meta fields shared by all examples, as keyword columns for a reward call (TRL style).

    A shared key named like a reward argument (``prompts``, ``completions``, ``references``,
    ``completion_ids``, ``where``) could not be passed beside it, so it is an error.
    """
    if not examples:
        return {}
    keys = set(examples[0].meta)
    for ex in examples[1:]:
        keys &= set(ex.meta)
    clash = sorted(keys & RESERVED_META)
    if clash:
        raise TaskError(f"meta key {clash[0]!r} is also the name of a reward argument; rename it")
    return {k: [ex.meta[k] for ex in examples] for k in sorted(keys)}
