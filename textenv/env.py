"""Text-generation environments: one episode is one prompt, one action is one whole completion.

``TextGenEnv`` is the Gymnasium face of a ``Task`` (reset -> prompt, step(completion) -> reward). Its
batched API (``sample``, ``score``, ``reference_rewards``) is what the algorithms use: G samples per
prompt are scored with *one* reward call per batch, because a learned reward model or an LLM judge is
far cheaper per batch than per string. ``TextVectorEnv`` exposes the same grouping as a Gymnasium
``VectorEnv`` (``num_prompts x group_size`` sub-envs, one reward call per step).

Conversational prompts (message lists) cannot be a Gymnasium text observation, so the observation is
their plain rendering (``textenv.render_messages``: one "role: content" line per message) and
``info["prompt"]`` carries the prompt as given, messages included; the observation after a step renders
the conversation with the completion as one more assistant message (or, when the prompt ends with an
assistant message, which the model continues, as that message's rest). Rewards get the prompts as given,
the completions as text (TRL reward functions: as TRL gives them, see ``rewards.calling``), references
as text (``message_text``) and the meta columns, by keyword.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rewards import RewardError
from rewards.messages import conversation_text, prompt_text
from textenv.spaces import TextSpace
from textenv.task import Example, Task, TaskError, columns_of, message_text

RESET_OPTIONS = frozenset({"split", "index"})


class TaskScoring:
    """The batched API shared by the text and token environments (needs ``self.task`` and ``self.split``)."""

    task: Task
    split: str
    spec: Any

    @property
    def env_id(self) -> str:
        """The registered id when made through ``make``, else the task's name: every error carries it."""
        return self.spec.id if getattr(self, "spec", None) is not None else self.task.name

    def sample(self, n: int, rng: np.random.Generator, split: str | None = None,
               require: str | None = None) -> list[Example]:
        """``n`` examples of ``split``, without replacement when the split is large enough.

        ``require="reference"`` draws only examples with a reference answer (SFT, GRAO), and
        ``require="pair"`` only those with a (chosen, rejected) pair (DPO).
        """
        split = split or self.split
        if require not in (None, "reference", "pair"):
            raise ValueError(f"{self.env_id}: sample(require={require!r}) must be None, 'reference' or 'pair'")
        examples = {None: self.task.split, "reference": self.task.with_references,
                    "pair": self.task.pairs}[require](split)
        if n < 1:
            raise ValueError(f"{self.env_id}: sample(n={n}) needs n >= 1")
        idx = rng.choice(len(examples), size=n, replace=n > len(examples))
        return [examples[int(i)] for i in idx]

    def score(self, examples: Sequence[Example], completions: Sequence[str],
              completion_ids: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rewards of ``completions[i]`` for ``examples[i]`` in one reward call: ``(total, components)``.

        The reward gets the references and the examples' shared ``meta`` fields as keyword columns;
        ``completion_ids``, the token ids a policy sampled, reach TRL reward functions (``rewards.calling``).
        """
        if len(examples) != len(completions):
            raise RewardError(f"{self.env_id}: got {len(examples)} examples for {len(completions)} completions")
        refs = [None if ex.reference is None else message_text(ex.reference) for ex in examples]
        return self.task.reward.score([ex.prompt for ex in examples], list(completions),
                                      None if all(r is None for r in refs) else refs,
                                      where=self.env_id, completion_ids=completion_ids, **columns_of(examples))

    def reference_rewards(self, examples: Sequence[Example]) -> np.ndarray:
        """R(y) of each example's reference answer (0 for a pairwise judge: y ties with itself)."""
        missing = [i for i, ex in enumerate(examples) if ex.reference is None]
        if missing:
            raise TaskError(f"{self.env_id}: example {missing[0]} has no reference answer"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        return self.task.reward.reference_rewards([ex.prompt for ex in examples],
                                                  [message_text(ex.reference) for ex in examples],  # type: ignore[arg-type]
                                                  where=self.env_id, **columns_of(examples))

    def _pick(self, options: dict[str, Any] | None, rng: np.random.Generator) -> tuple[str, int, Example]:
        """The (split, index, example) a reset asks for; a random example of the split by default."""
        options = dict(options or {})
        unknown = set(options) - RESET_OPTIONS
        if unknown:
            raise ValueError(f"{self.env_id}: unknown reset options {sorted(unknown)}; "
                             f"known: {sorted(RESET_OPTIONS)}")
        split = options.get("split") or self.split
        examples = self.task.split(split)
        index = options.get("index")
        if index is None:
            index = int(rng.integers(len(examples)))
        elif isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < len(examples):
            raise IndexError(f"{self.env_id}: index {index!r} is out of range for split {split!r} "
                             f"with {len(examples)} examples")
        return split, int(index), examples[int(index)]


def episode_info(split: str, index: int, ex: Example) -> dict[str, Any]:
    """What the agent may know about its episode; copied, so users can mutate it freely."""
    texts = {k: copy.deepcopy(getattr(ex, k)) for k in ("prompt", "reference", "chosen", "rejected")}
    return {**texts, "index": index, "split": split, "meta": copy.deepcopy(dict(ex.meta))}


class TextGenEnv(TaskScoring, gym.Env[str, str]):
    """One prompt per episode; the action is the whole completion; terminated after one step.

    ``max_length`` bounds the completion (in characters) accepted by ``step`` and sampled by
    ``action_space``. The observation after the step is prompt + completion (for messages, see the
    module doc).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, task: Task, split: str = "train", max_length: int = 1024, render_mode: str | None = None):
        if not isinstance(task, Task):
            raise TypeError(f"TextGenEnv needs a textenv.Task, got {type(task).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{task.name}: render_mode must be None or 'ansi', got {render_mode!r}")
        task.split(split)
        self.task, self.split, self.render_mode = task, split, render_mode
        prompts = [ex.prompt for examples in task.splits.values() for ex in examples]
        longest_prompt = max(len(conversation_text(p, "")) for p in prompts)
        self.action_space = TextSpace(max_length)
        self.observation_space = TextSpace(longest_prompt + max_length)
        self._episode: tuple[str, int, Example] | None = None
        self._text = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on ``options["index"]`` of ``options["split"]`` (default: a random train prompt)."""
        super().reset(seed=seed)
        self._episode = self._pick(options, self.np_random)
        split, index, ex = self._episode
        self._text = prompt_text(ex.prompt)
        return self._text, episode_info(split, index, ex)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._episode is None:
            raise gym.error.ResetNeeded(f"{self.env_id}: call reset() before step(); each episode is one "
                                        "prompt and ends after one step")
        if not isinstance(action, str):
            raise TypeError(f"{self.env_id}: the action must be the completion as a str, "
                            f"got {type(action).__name__}")
        if len(action) > self.action_space.max_length:
            raise ValueError(f"{self.env_id}: completion has {len(action)} characters, more than "
                             f"max_length={self.action_space.max_length} (pass max_length= to make)")
        split, index, ex = self._episode
        total, parts = self.score([ex], [action])
        self._episode = None
        self._text = conversation_text(ex.prompt, action)
        info = episode_info(split, index, ex)
        info["reward_components"] = {k: float(v[0]) for k, v in parts.items()}
        return self._text, float(total[0]), True, False, info

    def render(self) -> str | None:
        return self._text if self.render_mode == "ansi" else None

    def evaluate(self, examples: Sequence[Example], completions: Sequence[str],
                 base_completions: Sequence[str] | None = None) -> dict[str, float]:
        """Shortcut for ``textenv.metrics.evaluate_completions(self, ...)``."""
        from textenv.metrics import evaluate_completions

        return evaluate_completions(self, examples, completions, base_completions)


def _masked(values: dict[str, Any], n: int) -> dict[str, Any]:
    """Gymnasium's vector info layout: each key holds one value per sub-env, ``_key`` a presence mask."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = _masked(value, n) if isinstance(value, dict) else value
        out[f"_{key}"] = np.ones(n, dtype=np.bool_)
    return out


def _objects(items: Sequence[Any]) -> np.ndarray:
    """A 1-D object array; filled item by item so equal-length message lists never become a 2-D array."""
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr


class TextVectorEnv(VectorEnv):
    """``num_prompts`` prompts, each served to ``group_size`` consecutive sub-envs; one reward call per step.

    Sub-env ``i`` answers prompt ``i // group_size``. Every episode ends after one step, and the
    env resets in the same step (``AutoresetMode.SAME_STEP``): ``step`` returns the next batch's prompts,
    with the finished texts in ``info["final_obs"]`` and their infos in ``info["final_info"]``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, env: TextGenEnv | Task, num_prompts: int = 1, group_size: int = 1,
                 split: str | None = None, max_length: int = 1024):
        if num_prompts < 1 or group_size < 1:
            raise ValueError(f"TextVectorEnv: num_prompts and group_size must be >= 1, "
                             f"got {num_prompts} and {group_size}")
        self.env = env if isinstance(env, TextGenEnv) else TextGenEnv(env, split=split or "train",
                                                                       max_length=max_length)
        self.split = split or self.env.split
        self.env.task.split(self.split)
        self.num_prompts, self.group_size = num_prompts, group_size
        self.num_envs = num_prompts * group_size
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._episodes: list[tuple[str, int, Example]] | None = None

    @property
    def task(self) -> Task:
        return self.env.task

    @property
    def env_id(self) -> str:
        return self.spec.id if self.spec is not None else self.env.env_id

    def _draw(self, options: dict[str, Any] | None) -> list[tuple[str, int, Example]]:
        options = dict(options or {})
        unknown = set(options) - {"split", "indices"}
        if unknown:
            raise ValueError(f"{self.env_id}: unknown reset options {sorted(unknown)}; known: ['indices', 'split']")
        split = options.get("split") or self.split
        examples = self.task.split(split)
        indices = options.get("indices")
        if indices is None:
            n = len(examples)
            indices = self.np_random.choice(n, size=self.num_prompts, replace=self.num_prompts > n)
        elif len(indices) != self.num_prompts or not all(0 <= int(i) < len(examples) for i in indices):
            raise IndexError(f"{self.env_id}: options['indices'] must hold {self.num_prompts} indices into "
                             f"split {split!r} ({len(examples)} examples), got {list(indices)}")
        return [(split, int(i), examples[int(i)]) for i in indices for _ in range(self.group_size)]

    def _infos(self) -> dict[str, Any]:
        assert self._episodes is not None
        per_env = [episode_info(*ep) for ep in self._episodes]
        keys = ("prompt", "reference", "chosen", "rejected", "split", "meta")
        info = {k: _objects([d[k] for d in per_env]) for k in keys}
        info["index"] = np.array([d["index"] for d in per_env], dtype=np.int64)
        info["group"] = np.arange(self.num_envs, dtype=np.int64) // self.group_size
        return info

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[tuple[str, ...], dict[str, Any]]:
        """Draw ``num_prompts`` prompts (``options["indices"]`` picks them) and serve each ``group_size`` times."""
        super().reset(seed=seed)
        self._episodes = self._draw(options)
        return tuple(prompt_text(ep[2].prompt) for ep in self._episodes), _masked(self._infos(), self.num_envs)

    def step(self, actions: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray,
                                                    dict[str, Any]]:
        if self._episodes is None:
            raise gym.error.ResetNeeded(f"{self.env_id}: call reset() before step()")
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"{self.env_id}: got {len(actions)} actions for {self.num_envs} sub-envs")
        bad = [i for i, a in enumerate(actions) if not isinstance(a, str)]
        if bad:
            raise TypeError(f"{self.env_id}: action {bad[0]} is {type(actions[bad[0]]).__name__}; "
                            "each action must be a completion (str)")
        examples = [ep[2] for ep in self._episodes]
        total, parts = self.env.score(examples, actions)
        final_info = self._infos()
        final_info["reward_components"] = dict(parts)
        final_obs = _objects([conversation_text(ex.prompt, a) for ex, a in zip(examples, actions, strict=True)])
        self._episodes = self._draw({"split": self.split})
        infos = _masked(self._infos(), self.num_envs)
        infos |= _masked({"final_obs": final_obs, "final_info": final_info}, self.num_envs)
        n = self.num_envs
        return (tuple(prompt_text(ep[2].prompt) for ep in self._episodes), np.asarray(total, dtype=np.float64),
                np.ones(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_), infos)

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()
