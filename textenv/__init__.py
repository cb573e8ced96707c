"""Alignment tasks as Gymnasium environments that return rewards for generated text.

    import textenv
    env = textenv.make("textenv/Dialogue-v0")              # == gymnasium.make(...) after `import textenv`
    prompt, info = env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(" Boil water and add milk.")

Built-in envs: Arithmetic-v0, Sentiment-v0, Dialogue-v0, Preference-v0, HH-v0, and the multi-turn
GuessNumber-v0, KeyValue-v0 (tools) and Nim-v0 (see ``textenv.tasks`` and ``textenv.multiturn``);
``textenv.register`` adds your own, and installed packages add theirs through the "textenv.envs"
entry-point group (see ``textenv.registry``). ``textenv.trl_environment`` hands a multi-turn env to TRL's
``GRPOTrainer`` as its ``environment_factory`` (see ``textenv.trl_env``); ``textenv.serve`` serves one over
OpenEnv-style HTTP and ``textenv.HTTPTask`` plays a served one (see ``textenv.http_env``).
"""

import textenv.tasks  # noqa: F401  (registers the built-in envs)
from rewards.messages import conversation_text, prompt_text, render_messages
from textenv.batched import batched
from textenv.data import extract_prompt, hf_dataset, load_hf, load_hh, load_jsonl, parse_hh
from textenv.env import TextGenEnv, TextVectorEnv
from textenv.http_env import HTTPEnvError, HTTPTask, serve
from textenv.metrics import evaluate_completions, evaluate_examples
from textenv.multiturn import MultiTurnEnv, MultiTurnTask, Reply, make_group, render_conversation
from textenv.registry import (
    ENTRY_POINT_GROUP,
    EnvNotFound,
    check_task_kwargs,
    list_envs,
    load_plugins,
    make,
    make_task,
    make_vec,
    register,
    unregister,
)
from textenv.spaces import TextSpace
from textenv.task import (
    Example,
    Task,
    TaskError,
    columns_of,
    is_conversational,
    message_text,
)
from textenv.token_env import TokenEnv
from textenv.tools import Toolbox, format_tool_call, parse_tool_calls, tool_schema
from textenv.trl_env import ToolCallError, episode_return, trl_dataset, trl_environment

__all__ = [
    "ENTRY_POINT_GROUP",
    "EnvNotFound",
    "Example",
    "HTTPEnvError",
    "HTTPTask",
    "MultiTurnEnv",
    "MultiTurnTask",
    "Reply",
    "Task",
    "TaskError",
    "TextGenEnv",
    "TextSpace",
    "TextVectorEnv",
    "TokenEnv",
    "ToolCallError",
    "Toolbox",
    "batched",
    "check_task_kwargs",
    "columns_of",
    "conversation_text",
    "episode_return",
    "evaluate_completions",
    "evaluate_examples",
    "extract_prompt",
    "format_tool_call",
    "hf_dataset",
    "is_conversational",
    "list_envs",
    "load_hf",
    "load_hh",
    "load_jsonl",
    "load_plugins",
    "make",
    "make_group",
    "make_task",
    "make_vec",
    "message_text",
    "parse_hh",
    "parse_tool_calls",
    "prompt_text",
    "register",
    "render_conversation",
    "render_messages",
    "serve",
    "tool_schema",
    "trl_dataset",
    "trl_environment",
    "unregister",
]
