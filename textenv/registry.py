"""Registering tasks as Gymnasium environments, and finding environments that other packages provide.

``textenv.register(id, task_factory, **defaults)`` calls ``gymnasium.register``, so both of these work::

    env = textenv.make("textenv/Arithmetic-v0")                # or level="token" for the token form
    env = gymnasium.make("textenv/Arithmetic-v0", seed=1)      # after `import textenv`

``defaults`` (and the keyword arguments of ``make``) go to the task factory, except the environment
options ``level`` ("text" | "token"), ``split``, ``max_length``, ``render_mode``, ``tokenizer``,
``max_prompt_tokens``, ``max_new_tokens``, ``add_bos`` and ``task`` (a prebuilt ``Task``, which skips
the factory). An option that does not apply to the chosen level is an error.

A factory may also return a ``textenv.MultiTurnTask`` (or be one, e.g. a ``MultiTurnTask`` subclass whose
``__init__`` takes the task arguments): ``make`` then gives a ``MultiTurnEnv``, whose options are ``split``,
``max_length``, ``max_turns``, ``tokenizer``, ``max_observation_length``, ``render_mode`` and ``task``.
Multi-turn envs have no token level and no vector form; ``textenv.multiturn.make_group`` gives G envs
of one task. The envs are registered
without Gymnasium's checker and order-enforcing wrappers: the env checks its own inputs, and
``gymnasium.utils.env_checker.check_env`` passes on every built-in env (tests/test_textenv.py), so
``make`` returns the env itself and its batched API (``env.sample``, ``env.score``) is in reach.

Plugins: a third-party package adds environments through the entry-point group ``textenv.envs``.
Each entry point names a callable that registers envs (or a module that does so on import)::

    # pyproject.toml of the plugin package
    [project.entry-points."textenv.envs"]
    my_envs = "my_package.envs:register_envs"

    # my_package/envs.py
    def register_envs():
        textenv.register("my_package/Polite-v0", polite_task)

``textenv.load_plugins()`` loads every such entry point once; ``make``, ``make_task`` and
``list_envs`` call it, so an installed plugin's envs are simply there. A plugin that fails to load
is reported with a warning naming it, and the others still load.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import gymnasium
from gymnasium.envs.registration import parse_env_id

from textenv.env import TextGenEnv, TextVectorEnv
from textenv.multiturn import MULTITURN_OPTIONS, MultiTurnEnv, MultiTurnTask
from textenv.task import Task, TaskError
from textenv.token_env import TokenEnv

ENTRY_POINT_GROUP = "textenv.envs"
TEXT_OPTIONS = frozenset({"split", "max_length", "render_mode"})
TOKEN_OPTIONS = frozenset({"split", "tokenizer", "max_prompt_tokens", "max_new_tokens", "add_bos", "render_mode"})
ENV_OPTIONS = TEXT_OPTIONS | TOKEN_OPTIONS | MULTITURN_OPTIONS | {"level", "task"}
AnyTask = Task | MultiTurnTask

_ENVS: dict[str, tuple[Callable[..., AnyTask], dict[str, Any]]] = {}
_LOADED_PLUGINS: set[str] = set()


class EnvNotFound(TaskError, gymnasium.error.UnregisteredEnv):
    """No textenv environment has this id; the message lists the closest ids."""


def _split_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    env_kw = {k: v for k, v in kwargs.items() if k in ENV_OPTIONS}
    return env_kw, {k: v for k, v in kwargs.items() if k not in ENV_OPTIONS}


def _check_arguments(env_id: str, factory: Callable[..., AnyTask], task_kw: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: let the call itself complain
        return
    try:
        signature.bind(**task_kw)
    except TypeError as err:
        names = [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise TaskError(f"{env_id}: bad task arguments {sorted(task_kw)} ({err}); the task takes: "
                        f"{', '.join(names)} (env options: {', '.join(sorted(ENV_OPTIONS))})") from None


def check_task_kwargs(id: str, **kwargs: Any) -> None:
    """Raise a TaskError naming the key when ``kwargs`` do not fit the task factory behind ``id``."""
    id = resolve_id(id)
    factory, defaults = _ENVS[id]
    _, task_kw = _split_kwargs({**defaults, **kwargs})
    _check_arguments(id, factory, task_kw)


def _build_task(env_id: str, factory: Callable[..., AnyTask], task_kw: dict[str, Any]) -> AnyTask:
    _check_arguments(env_id, factory, task_kw)
    task = factory(**task_kw)
    if not isinstance(task, AnyTask):
        raise TaskError(f"{env_id}: the task factory {factory!r} returned {type(task).__name__}, "
                        "expected textenv.Task or textenv.MultiTurnTask")
    return task


def _create_env(env_id: str, factory: Callable[..., AnyTask], **kwargs: Any) -> gymnasium.Env:
    """Gymnasium entry point: build the task (or take ``task=``) and wrap it at the requested level."""
    env_kw, task_kw = _split_kwargs(kwargs)
    level = env_kw.pop("level", "text")
    task = env_kw.pop("task", None)
    if task is None:
        task = _build_task(env_id, factory, task_kw)
    elif task_kw:
        raise TaskError(f"{env_id}: got task= and task arguments {sorted(task_kw)}; pass one or the other")
    if isinstance(task, MultiTurnTask):
        if level != "text":
            raise TaskError(f"{env_id}: a multi-turn task has only the text level, got level={level!r}")
        if set(env_kw) - MULTITURN_OPTIONS:
            raise TaskError(f"{env_id}: option(s) {sorted(set(env_kw) - MULTITURN_OPTIONS)} do not apply to a "
                            f"multi-turn env; its options: {', '.join(sorted(MULTITURN_OPTIONS))}")
        return MultiTurnEnv(task, **env_kw)
    if not isinstance(task, Task):
        raise TaskError(f"{env_id}: task= is {type(task).__name__}, expected textenv.Task or textenv.MultiTurnTask")
    if level not in ("text", "token"):
        raise TaskError(f"{env_id}: level must be 'text' or 'token', got {level!r}")
    allowed = TEXT_OPTIONS if level == "text" else TOKEN_OPTIONS
    if set(env_kw) - allowed:
        raise TaskError(f"{env_id}: option(s) {sorted(set(env_kw) - allowed)} do not apply to level={level!r}; "
                        f"its options: {', '.join(sorted(allowed))}")
    return (TextGenEnv if level == "text" else TokenEnv)(task, **env_kw)


def _create_vector_env(env_id: str, factory: Callable[..., AnyTask], num_envs: int = 1, group_size: int = 1,
                       **kwargs: Any) -> TextVectorEnv:
    """Gymnasium vector entry point: ``num_envs = num_prompts * group_size``."""
    if num_envs % group_size:
        raise TaskError(f"{env_id}: num_envs={num_envs} is not a multiple of group_size={group_size}")
    kwargs.pop("level", None)
    env = _create_env(env_id, factory, **kwargs)
    if isinstance(env, MultiTurnEnv):
        raise TaskError(f"{env_id} is a multi-turn env, which has no vector form; "
                        "textenv.multiturn.make_group(id, G) gives G envs that one seed starts alike")
    return TextVectorEnv(env, num_prompts=num_envs // group_size, group_size=group_size)


def register(id: str, task_factory: Callable[..., AnyTask] | AnyTask, *, override: bool = False,
             **defaults: Any) -> None:
    """Register ``task_factory(**kwargs) -> Task | MultiTurnTask`` (or a fixed task) as the environment ``id``.

    Re-registering the same factory with the same defaults is a no-op (plugins may load twice);
    anything else already registered under ``id`` is refused unless ``override=True``.
    """
    if isinstance(task_factory, AnyTask):
        task_factory = functools.partial(_fixed_task, task_factory)
    if not callable(task_factory):
        raise TypeError(f"register({id!r}): task_factory must be a callable returning a Task, "
                        f"got {type(task_factory).__name__}")
    try:
        parse_env_id(id)
    except gymnasium.error.Error as err:
        raise TaskError(f"register({id!r}): invalid env id: {err}") from err
    if id in _ENVS and _ENVS[id] == (task_factory, defaults):
        return
    if (id in _ENVS or id in gymnasium.registry) and not override:
        raise TaskError(f"env {id!r} is already registered; pass override=True to replace it")
    _ENVS[id] = (task_factory, dict(defaults))
    gymnasium.registry.pop(id, None)  # an override replaces the old spec (without Gymnasium's warning)
    gymnasium.register(id=id, entry_point=functools.partial(_create_env, id, task_factory),
                       vector_entry_point=functools.partial(_create_vector_env, id, task_factory),
                       kwargs=dict(defaults), disable_env_checker=True, order_enforce=False)


def _fixed_task(task: AnyTask) -> AnyTask:
    return task


def unregister(id: str) -> None:
    """Remove an environment registered with ``register`` (tests, notebooks that re-run a cell)."""
    if _ENVS.pop(id, None) is not None:
        gymnasium.registry.pop(id, None)


def load_plugins() -> list[str]:
    """Load the ``textenv.envs`` entry points not loaded yet; returns their names."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _LOADED_PLUGINS:
            continue
        _LOADED_PLUGINS.add(key)
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModuleType):
                obj()
        except Exception as err:  # a broken plugin must not break every other env
            warnings.warn(f"textenv: plugin {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
            continue
        loaded.append(ep.name)
    return loaded


def list_envs() -> list[str]:
    """Ids of every textenv environment: built-in, registered in this process, or from plugins."""
    load_plugins()
    return sorted(_ENVS)


def resolve_id(id: str) -> str:
    """The registered id for ``id`` ("Arithmetic-v0" finds "textenv/Arithmetic-v0"); else EnvNotFound."""
    load_plugins()
    if id in _ENVS:
        return id
    if f"textenv/{id}" in _ENVS:
        return f"textenv/{id}"
    short = {k.split("/", 1)[-1]: k for k in _ENVS}
    close = difflib.get_close_matches(id, list(_ENVS), n=3, cutoff=0.5)
    close += [short[s] for s in difflib.get_close_matches(id, list(short), n=3, cutoff=0.5) if short[s] not in close]
    hint = f"; did you mean {', '.join(map(repr, close[:3]))}?" if close else ""
    raise EnvNotFound(f"unknown textenv environment {id!r}{hint} Known: {', '.join(sorted(_ENVS)) or 'none'}")


def make(id: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make`` with textenv's id resolution: ``level="token"`` gives the token-level env."""
    return gymnasium.make(resolve_id(id), **kwargs)


def make_vec(id: str, num_prompts: int = 1, group_size: int = 1, **kwargs: Any) -> TextVectorEnv:
    """A ``TextVectorEnv`` of ``num_prompts x group_size`` sub-envs via ``gymnasium.make_vec``."""
    for name, value in (("num_prompts", num_prompts), ("group_size", group_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"make_vec({id!r}): {name} must be an integer >= 1, got {value!r}")
    return gymnasium.make_vec(resolve_id(id), num_envs=num_prompts * group_size, group_size=group_size, **kwargs)


def make_task(id: str, **kwargs: Any) -> AnyTask:
    """Build the task behind ``id`` (registered defaults updated with ``kwargs``) without an env."""
    id = resolve_id(id)
    factory, defaults = _ENVS[id]
    _, task_kw = _split_kwargs(defaults)
    return _build_task(id, factory, {**task_kw, **kwargs})
