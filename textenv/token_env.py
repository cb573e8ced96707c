"""The token-level form of a task (RL4LMs style), for classic RL code that picks one action per step.

Action = a token id; observation = the token ids so far (prompt, then generated tokens) as a
fixed-size array plus an attention mask. EOS ends the episode (``terminated``), ``max_new_tokens``
cuts it (``truncated``); either way the decoded completion is scored by the task's reward, which is
the only non-zero reward of the episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rewards.messages import chat_template_options, render_messages
from rewards.tiny import byte_tokenizer
from textenv.env import TaskScoring, episode_info
from textenv.task import Example, Task, TaskError, Text


class TokenEnv(TaskScoring, gym.Env[dict[str, np.ndarray], int]):
    """Generate a completion token by token; reward = task reward of the decoded text at the end.

    The prompt is encoded as ``[bos] + tokens(prompt)`` (the layout tiny base models are pretrained
    on; ``add_bos=False`` drops the BOS) and, if longer than ``max_prompt_tokens``, truncated from the
    left. ``max_prompt_tokens=None`` fits the longest prompt of the task. A conversational prompt goes
    through the tokenizer's chat template with the generation prompt (no extra BOS: templates add their
    own), or, for a tokenizer without one, through ``render_messages(..., add_generation_prompt=True)``;
    a prompt that ends with an assistant message is continued instead (no generation prompt, the message
    left open), as TRL does. ``info["prompt"]`` is the prompt as given; TRL reward functions also get the
    generated ``completion_ids`` (EOS included when the episode ended with it).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, task: Task, tokenizer: Any = None, split: str = "train", max_prompt_tokens: int | None = None,
                 max_new_tokens: int = 64, add_bos: bool = True, render_mode: str | None = None):
        if not isinstance(task, Task):
            raise TypeError(f"TokenEnv needs a textenv.Task, got {type(task).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{task.name}: render_mode must be None or 'ansi', got {render_mode!r}")
        if max_new_tokens < 1:
            raise ValueError(f"{task.name}: max_new_tokens must be >= 1, got {max_new_tokens}")
        task.split(split)
        self.task, self.split, self.render_mode = task, split, render_mode
        self.tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise TaskError(f"{task.name}: the tokenizer has no eos_token_id; the token env needs one to end episodes")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.bos = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        if max_prompt_tokens is None:
            prompts = [ex.prompt for examples in task.splits.values() for ex in examples]
            max_prompt_tokens = max(len(self._encode(p)) for p in prompts)
        self.max_prompt_tokens, self.max_new_tokens = int(max_prompt_tokens), int(max_new_tokens)
        vocab = len(self.tokenizer)
        width = self.max_prompt_tokens + self.max_new_tokens
        self.action_space = spaces.Discrete(vocab)
        self.observation_space = spaces.Dict({
            "input_ids": spaces.Box(0, vocab - 1, shape=(width,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(width,), dtype=np.int64),
        })
        self._episode: tuple[str, int, Example] | None = None
        self._prompt_ids: list[int] = []
        self._new_ids: list[int] = []

    def _encode(self, prompt: Text) -> list[int]:
        if isinstance(prompt, str):
            return self.bos + list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        options = chat_template_options(prompt)  # a final assistant message is continued, as TRL does
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, **options)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.bos + list(self.tokenizer(render_messages(prompt, options["add_generation_prompt"]),
                                              add_special_tokens=False)["input_ids"])

    def _obs(self) -> dict[str, np.ndarray]:
        ids = self._prompt_ids + self._new_ids
        width = self.max_prompt_tokens + self.max_new_tokens
        input_ids = np.full(width, self.pad_id, dtype=np.int64)
        mask = np.zeros(width, dtype=np.int64)
        input_ids[: len(ids)], mask[: len(ids)] = ids, 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start on ``options["index"]`` of ``options["split"]`` (default: a random prompt of the env's split)."""
        super().reset(seed=seed)
        self._episode = self._pick(options, self.np_random)
        split, index, ex = self._episode
        self._prompt_ids = self._encode(ex.prompt)[-self.max_prompt_tokens:]
        self._new_ids = []
        return self._obs(), episode_info(split, index, ex)

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode is None:
            raise gym.error.ResetNeeded(f"{self.env_id}: call reset() before step() (and again after an "
                                        "episode ends)")
        if isinstance(action, bool) or not isinstance(action, int | np.integer) or not self.action_space.contains(
                np.int64(action)):
            raise TypeError(f"{self.env_id}: the action must be a token id in [0, {self.action_space.n}), "
                            f"got {action!r}")
        token = int(action)
        terminated = token == self.eos_id
        if not terminated:
            self._new_ids.append(token)
        truncated = not terminated and len(self._new_ids) >= self.max_new_tokens
        obs = self._obs()
        if not (terminated or truncated):
            return obs, 0.0, False, False, {}
        split, index, ex = self._episode
        completion = self.completion
        sampled = self._new_ids + [token] if terminated else list(self._new_ids)
        total, parts = self.score([ex], [completion], completion_ids=[sampled])
        self._episode = None
        info = episode_info(split, index, ex)
        info["completion"] = completion
        info["reward_components"] = {k: float(v[0]) for k, v in parts.items()}
        return obs, float(total[0]), terminated, truncated, info

    @property
    def completion(self) -> str:
        """The text generated so far (special tokens dropped)."""
        return self.tokenizer.decode(self._new_ids, skip_special_tokens=True)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return self.tokenizer.decode(self._prompt_ids + self._new_ids, skip_special_tokens=True)
