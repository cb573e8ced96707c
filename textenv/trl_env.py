"""A multi-turn env of ours as TRL's ``environment_factory``, so TRL's ``GRPOTrainer`` trains on it::

    factory = textenv.trl_environment("textenv/KeyValue-v0")
    trainer = trl.GRPOTrainer(model, reward_funcs=textenv.episode_return, train_dataset=textenv.trl_dataset(factory),
                              environment_factory=factory, args=trl.GRPOConfig(...))

TRL's contract (trl 1.16, ``trainer/grpo_trainer.py``) and how the adapter meets it:

    TRL                                               here
    ``factory()`` makes one instance per rollout;     ``trl_environment`` returns a class; the task is built once and
      instances are pooled and reused (``reset``)       shared, each instance plays one episode of it at a time
    ``instance.reset(**row)`` before generation;      ``reset(split=, index=, seed=, prompt=)`` starts the episode on
      a returned str is appended to the last            that row and returns None: the row's ``prompt`` already holds
      prompt message                                    the episode's first messages (``trl_dataset`` writes them)
    the class's public functions are the tools        one method per tool of the task, with its name, signature and
      (schemas by ``get_json_schema``)                  docstring, so its schema is our ``Toolbox`` schema exactly
    a tool that raises: the model sees                a call our ``Toolbox`` answers with ``Error: ...`` raises
      ``{'error': str(exc)}``, TRL counts a failure     ``ToolCallError`` with that text (``tools/failure_frequency``)
    the rollout ends at the first assistant           ``episode_return`` (the reward function) plays that last message
      message without a tool call                       as one more turn if the episode still runs, then ends it there
    reward functions get ``environments=``            ``episode_return(completions, environments)``: the returns
    ``tool_mask``: tool-result tokens get no loss     the env only ever speaks through tool results, so all its
                                                        tokens are masked; the model's tokens are trained

What maps, and what does not. TRL's rollout has no user turns: between the prompt and the end, the env can only
answer tool calls. So

- a task with tools (KeyValue-v0) maps. One TRL tool call is one turn of ours: the tool runs, then the task's
  ``respond`` sees an assistant message holding that one call (so ``max_turns`` counts calls; the oracle's play,
  one call per turn, is the same episode as in ``MultiTurnEnv``). Text the env says after a tool call (``respond``'s
  messages) is appended to that call's result, the only place TRL shows it. A call to a name that is not a tool
  never reaches the env (TRL answers it). TRL runs a call before it checks that the result still fits in
  ``max_completion_length``; when it does not, TRL drops the result from the rollout, but the call was played
  (the episode counts it), so leave room for the results.
- a task whose moves are plain text (GuessNumber-v0, Nim-v0) maps only with its moves exposed as a tool:
  ``trl_environment("textenv/GuessNumber-v0", move_tool="guess")`` adds ``guess(message)``, which plays the message
  as one turn and returns the env's reply ("Higher.") as the tool result. Without ``move_tool`` such a task has no
  way to show the model its replies, and ``trl_environment`` raises a ``TaskError`` that says so.
- a single-turn task (``textenv.Task``) needs no environment: give TRL its prompts and reward function directly.

TRL also needs the tokenizer's chat template to render tool calls and a response parser for it (TRL ships one for
the Qwen2.5/Qwen3, Llama 3.1/3.2 and a few other templates; ``tests/test_trl_env.py`` gives the tiny chat model
Qwen2.5's template).

Rewards are read with ``episode_return``, not TRL's ``get_reward()`` hook: ``get_reward`` takes no arguments, so it
cannot see the rollout's last message (the final answer of a task that ends in text); defining both would also
count the reward twice. ``episode_return`` ends each episode once (a second call reads the same return).
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium.utils.seeding import np_random

from textenv.multiturn import Episode, Message, MultiTurnTask, check_multiturn_task
from textenv.registry import make_task
from textenv.task import Task, TaskError
from textenv.tools import Toolbox, format_tool_call, is_stateful

TRL_HOOKS = frozenset({"reset", "get_reward"})  # methods TRL calls itself, never as tools
MOVE_DOC = """Send your next message to the environment (your move) and read its reply.

Args:
    message: Your message: your answer, guess or move.
"""
ENDED = "The episode has ended."


class ToolCallError(RuntimeError):
    """A tool call our Toolbox refused, or whose tool raised; TRL shows the model ``{'error': <message>}``."""


class TRLEnvironment:
    """One episode of a multi-turn task, played through TRL's tool-calling loop (see the module doc).

    ``trl_environment`` builds the subclasses; they add one method per tool. Everything here other than
    ``reset`` is private or a property, because TRL turns every public function of the class into a tool.
    """

    _task: MultiTurnTask
    _toolbox: Toolbox
    _max_turns: int | None = None

    def __init__(self) -> None:
        self._episode: Episode | None = None
        self._ended = False

    def reset(self, **row: Any) -> None:
        """Start the episode on ``row`` (a row of ``trl_dataset``: ``split``, ``index``, ``seed`` and ``prompt``)."""
        split, index, seed = _row_address(row, self._task)
        self._episode = Episode(self._task, self._task.split(split)[index], np_random(seed)[0], self._toolbox,
                                self._max_turns)
        self._ended = False
        if row.get("prompt") is not None:
            _check_prompt(row["prompt"], self._episode.messages, f"{self._task.name} split {split!r} row {index}")
        return None

    @property
    def task(self) -> MultiTurnTask:
        return self._task

    @property
    def messages(self) -> list[Message]:
        """The episode's conversation (a copy) as our env records it: first messages, then each turn's."""
        return copy.deepcopy(self._live().messages)

    @property
    def episode_stats(self) -> dict[str, Any]:
        """Running totals ``{"return", "turns", "invalid_actions", "tool_calls", "tool_errors"}``."""
        return dict(self._live().stats)

    @property
    def episode_return(self) -> float:
        return float(self._live().stats["return"])

    @property
    def done(self) -> bool:
        """True once the task ended the episode, ``max_turns`` ran out, or ``episode_return`` ended it."""
        episode = self._live()
        return episode.terminated or episode.truncated

    @property
    def state(self) -> Any:
        """The task's state (what its oracle reads)."""
        return self._live().state

    def _live(self) -> Episode:
        if self._episode is None:
            raise TaskError(f"{self._task.name}: reset(**row) has not been called on this TRL environment; "
                            "TRL's GRPOTrainer calls it with each dataset row before generating")
        return self._episode

    def _play(self, text: str) -> dict[str, Any]:
        episode = self._live()
        if episode.terminated or episode.truncated:
            why = "the task is done" if episode.terminated else f"max_turns={episode.max_turns} turns were played"
            raise ToolCallError(f"{ENDED[:-1]} ({why}); no more calls are played")
        return episode.step(text)

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """Play one tool call as one turn; the tool's result (and any reply after it) is what TRL shows."""
        facts = self._play(format_tool_call(name, arguments))
        text = _reply_text(facts["env_messages"])
        if facts["tool_errors"]:
            raise ToolCallError(text.removeprefix("Error: "))
        return text

    def _call_move(self, message: str) -> str:
        """Play ``message`` as one turn (the move tool); the env's reply is the tool result."""
        facts = self._play(message)
        return _reply_text(facts["env_messages"]) or (ENDED if self.done else "")

    def _end(self, completion: Any) -> float:
        """End the episode after TRL's rollout (see ``episode_return``) and return its return."""
        episode = self._live()
        if not self._ended:
            last = _last_text_message(completion)
            if last is not None and not self.done:
                episode.step(last)
            if not self.done:  # TRL's rollout is over: the episode is truncated here, as at max_turns
                episode.truncated = True
                episode.stats["return"] += float(self._task.final_reward(episode.state))
            self._ended = True
        return float(episode.stats["return"])


def _row_address(row: dict[str, Any], task: MultiTurnTask) -> tuple[str, int, int]:
    """``(split, index, seed)`` of a dataset row; a TaskError naming the column when one is missing or wrong."""
    missing = [k for k in ("split", "index") if k not in row]
    if missing:
        raise TaskError(f"{task.name}: the dataset row has no {' or '.join(map(repr, missing))} column (it has "
                        f"{sorted(row)}); build the dataset with textenv.trl_dataset(factory), which names the "
                        "example each row plays")
    split, index, seed = row["split"], row["index"], row.get("seed", 0)
    rows = task.split(split)
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < len(rows):
        raise TaskError(f"{task.name}: row index {index!r} is out of range for split {split!r} with {len(rows)} rows")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TaskError(f"{task.name}: the row's seed must be an integer >= 0, got {seed!r}")
    return split, int(index), int(seed)


def _check_prompt(prompt: Any, first: list[Message], where: str) -> None:
    """The dataset's prompt must be the episode's first messages, or the model would see another conversation."""
    shown = [(m.get("role"), m.get("content")) if isinstance(m, dict) else m for m in prompt] \
        if isinstance(prompt, list) else prompt
    if shown != [(m["role"], m["content"]) for m in first]:
        raise TaskError(f"{where}: the row's prompt {shown!r} is not the episode's first messages "
                        f"{[(m['role'], m['content']) for m in first]!r}; rebuild the dataset with "
                        "textenv.trl_dataset(factory) (same task arguments and seed)")


def _reply_text(messages: Sequence[Message]) -> str:
    return "\n".join(m["content"] for m in messages if m["content"])


def _last_text_message(completion: Any) -> str | None:
    """The rollout's last assistant message when it is plain text (a move TRL never showed the env), else None."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        if isinstance(last, dict) and last.get("role") == "assistant" and not last.get("tool_calls"):
            return str(last.get("content") or "")
    return None


def _tool_method(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A method TRL calls as tool ``name``: the signature, hints and docstring of ``fn`` (so ``get_json_schema``
    gives its schema), and a body that plays the call through our Toolbox, which checks the arguments."""

    def call(self, **arguments: Any) -> str:  # self unannotated: get_json_schema leaves it out
        return self._call_tool(name, arguments)

    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    if not is_stateful(fn):
        params.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    call.__signature__ = signature.replace(parameters=params,  # type: ignore[attr-defined]
                                           return_annotation=hints.get("return", signature.return_annotation))
    call.__annotations__ = hints
    call.__name__, call.__qualname__, call.__doc__ = name, f"TRLEnvironment.{name}", fn.__doc__
    return call


def _move_method(name: str, doc: str) -> Callable[..., Any]:
    def move(self, message: str) -> str:
        return self._call_move(message)

    move.__name__, move.__qualname__, move.__doc__ = name, f"TRLEnvironment.{name}", doc
    return move


def _check_tool_name(name: str, task: MultiTurnTask, what: str) -> None:
    taken = TRL_HOOKS | {n for n in dir(TRLEnvironment) if not n.startswith("_")}
    if not name.isidentifier() or name.startswith("_") or name in taken:
        raise TaskError(f"trl_environment({task.name!r}): the {what} {name!r} cannot be a TRL tool: TRL calls "
                        f"reset/get_reward itself, ignores names starting with '_', and the adapter uses "
                        f"{sorted(taken - TRL_HOOKS)}; rename it")


def trl_environment(task: str | MultiTurnTask, *, move_tool: str | None = None, move_doc: str = MOVE_DOC,
                    max_turns: int | None = None, **task_kwargs: Any) -> type[TRLEnvironment]:
    """The class to pass as ``GRPOTrainer(environment_factory=...)`` for a multi-turn task (an id or a task).

    ``move_tool`` names a tool that plays a plain-text move (required for tasks without tools, see the module
    doc; ``move_doc`` is its docstring, Google style with an ``Args: message:`` line); ``max_turns`` overrides the
    task's; ``task_kwargs`` go to the task factory, as in ``textenv.make``.
    """
    if isinstance(task, str):
        label = task
        task = make_task(task, **task_kwargs)
    elif task_kwargs:
        raise TaskError(f"trl_environment: task arguments {sorted(task_kwargs)} need a task id, not a built task")
    else:
        label = getattr(task, "name", type(task).__name__)
    if isinstance(task, Task):
        raise TaskError(f"trl_environment({label!r}): {task.name} is a single-turn task; TRL's GRPOTrainer trains on "
                        "it without an environment: pass its prompts as train_dataset and its reward as reward_funcs")
    check_multiturn_task(task, where=f"trl_environment({label!r})")
    toolbox = Toolbox(task.tools, where=task.name)
    if not toolbox.functions and move_tool is None:
        raise TaskError(f"trl_environment({label!r}): {task.name} has no tools, its moves are plain text, and TRL's "
                        "rollout has no user turns: it ends at the first message without a tool call, so the env's "
                        "replies could never reach the model. Pass move_tool='move' (any name) to expose each move "
                        "as a tool whose result is the env's reply")
    methods: dict[str, Any] = {}
    for name, fn in toolbox.functions.items():
        _check_tool_name(name, task, "tool")
        methods[name] = _tool_method(name, fn)
    if move_tool is not None:
        if move_tool in methods:
            raise TaskError(f"trl_environment({label!r}): move_tool={move_tool!r} is already a tool of {task.name}")
        _check_tool_name(move_tool, task, "move_tool")
        Toolbox([_move_method(move_tool, move_doc)], where=f"trl_environment({label!r}) move_doc")
        methods[move_tool] = _move_method(move_tool, move_doc)
    if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
        raise TaskError(f"trl_environment({label!r}): max_turns must be an integer >= 1, got {max_turns!r}")
    attributes = {"_task": task, "_toolbox": toolbox, "_max_turns": max_turns, "__doc__": (
        f"{task.name} as a TRL environment; tools: {', '.join(methods)} (see textenv.trl_env).")}
    return type(f"TRL{type(task).__name__}", (TRLEnvironment,), {**attributes, **methods})


def trl_dataset(factory: type[TRLEnvironment], split: str = "train", *, limit: int | None = None,
                seed: int = 0) -> Any:
    """TRL's train dataset for ``factory``: one row per example of ``split`` (the first ``limit``), with
    ``prompt`` (the episode's first messages, which TRL renders with the tools) and ``split``, ``index``, ``seed``
    (which ``reset`` reads to start the same episode)."""
    import datasets

    if not (isinstance(factory, type) and issubclass(factory, TRLEnvironment)):
        raise TaskError(f"trl_dataset: expected a class made by textenv.trl_environment, got {factory!r}")
    task = factory._task
    rows = task.split(split)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"trl_dataset({task.name!r}): limit must be an integer >= 1 or None, got {limit!r}")
    records = []
    for index in range(min(len(rows), limit or len(rows))):
        first = Episode(task, rows[index], np_random(seed)[0], factory._toolbox).messages
        records.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in first],
                        "split": split, "index": index, "seed": seed})
    return datasets.Dataset.from_list(records)


def episode_return(completions: Sequence[Any], environments: Sequence[TRLEnvironment] | None = None,
                   **kwargs: Any) -> list[float]:
    """A TRL reward function: each rollout's episode return, read from its environment instance.

    The rollout's last message, when it has no tool call and the episode still runs, is played as one more turn
    (the final answer of a task that ends in text); then an episode still running is truncated, its final reward
    added. Logs the mean turns, invalid actions and tool errors per episode when TRL passes ``log_metric``.
    """
    if environments is None:
        raise TaskError("episode_return reads the episode returns from TRL's environments=, which GRPOTrainer "
                        "passes only with environment_factory=textenv.trl_environment(...)")
    if len(environments) != len(completions):
        raise TaskError(f"episode_return: {len(completions)} completions but {len(environments)} environments")
    for i, env in enumerate(environments):
        if not isinstance(env, TRLEnvironment):
            raise TaskError(f"episode_return: environment {i} is {type(env).__name__}, not one made by "
                            "textenv.trl_environment")
    returns = [env._end(c) for env, c in zip(environments, completions, strict=True)]
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        for key in ("turns", "invalid_actions", "tool_errors"):
            log_metric(f"episode/{key}", sum(e.episode_stats[key] for e in environments) / len(environments))
    return returns
