"""Multi-turn envs over HTTP in OpenEnv's style: ``serve`` one of ours, or play a served one as a task of ours.

OpenEnv (meta-pytorch/OpenEnv) serves an env as JSON over HTTP; this module speaks its original HTTP protocol
(one env per server, the episode kept between calls), with the standard library only::

    POST /reset  {"seed": 0, "episode_id": ..., "split": "eval", "index": 3}    (every field optional)
              -> {"observation": {"messages": [...], "tools": [...]}, "reward": null, "done": false, "metadata": {...}}
    POST /step   {"action": {"message": "<the assistant message>"}}   ("timeout_s", "request_id" accepted, unused)
              -> {"observation": {"messages": [...], "env_messages": [...]}, "reward": 0.0, "done": false,
                  "metadata": {"terminated", "truncated", "turn", "turn_reward", "final_reward", "invalid_action",
                               "tool_calls", "tool_errors", "assistant", "episode_stats"}}
    GET  /state  -> {"episode_id", "step_count", "done", "episode_stats"}
    GET  /metadata -> {"name", "description", "max_turns", "tools"};   GET /health -> {"status": "healthy"}
    an error -> HTTP 400 (the request was wrong), 404 (no such path) or 500 (the env failed), {"detail": "..."}

``observation`` holds our env's ``info`` as JSON: ``messages`` is the whole conversation, ``env_messages`` what the
env appended this step (tool results, then its reply); ``reward`` is the step's reward and ``done`` is
``terminated or truncated`` (OpenEnv has one flag; ``metadata`` keeps both). Newer OpenEnv servers keep an episode
only over their WebSocket ``/ws`` and answer each HTTP ``/reset`` and ``/step`` with a fresh env; ``HTTPTask`` needs
a server that keeps the episode, as ``serve`` does (the standard library has no WebSocket client).

``HTTPTask(url)`` is a ``MultiTurnTask`` whose ``reset`` and ``respond`` are those calls, so
``MultiTurnEnv(HTTPTask(url))`` plays the served env (and every rollout of ``algos`` with it): the same messages,
rewards, termination and truncation as the env played in-process. The remote env must have no tools: the local
env runs the ``<tool_call>`` blocks of a message itself, before ``respond``, and cannot run tools that live on the
server, so ``HTTPTask`` refuses a server that lists tools. A foreign OpenEnv text env whose observation is one text
field (e.g. the echo env's ``echoed_message``) plays with ``reply_field=`` naming it; its action's field is
``action_field`` ("message", as in OpenEnv's echo and TextArena envs).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import gymnasium as gym
import numpy as np

from textenv.multiturn import Message, MultiTurnEnv, MultiTurnTask, Reply
from textenv.task import TaskError, check_messages
from textenv.tools import format_tool_call

RESET_FIELDS = frozenset({"seed", "episode_id", "split", "index"})
STEP_FIELDS = frozenset({"action", "timeout_s", "request_id"})
STEP_METADATA = ("terminated", "truncated", "turn", "turn_reward", "final_reward", "invalid_action", "tool_calls",
                 "tool_errors", "assistant", "episode_stats")


class HTTPEnvError(TaskError):
    """A served env could not be reached or answered something this protocol does not allow; names the URL."""


class RequestError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"detail": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---- the server -----------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class EnvServer:
    """One ``MultiTurnEnv`` served over HTTP from a background thread (see the module doc); ``url`` is where.

    Requests are handled one at a time, in order, against the one episode the env holds.
    """

    def __init__(self, env: MultiTurnEnv, host: str = "127.0.0.1", port: int = 0):
        if not isinstance(env, MultiTurnEnv):
            raise TaskError(f"serve: expected a textenv.MultiTurnEnv (or an id of one), got {type(env).__name__}")
        self.env, self.episode_id = env, None
        self._progress: dict[str, Any] = {"step_count": 0, "done": False, "episode_stats": None}
        self._httpd = HTTPServer((host, port), _handler_for(self))
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"serve {env.env_id}", daemon=True)  # close() waits one poll
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> EnvServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # The routes: each takes the request body (None for GET) and returns the response body.
    def health(self, body: Any) -> dict[str, Any]:
        return {"status": "healthy"}

    def metadata(self, body: Any) -> dict[str, Any]:
        task = self.env.task
        return {"name": task.name, "description": task.description, "max_turns": self.env.max_turns,
                "tools": self.env.tools}

    def state(self, body: Any) -> dict[str, Any]:
        return {"episode_id": self.episode_id, **self._progress}

    def reset(self, body: Any) -> dict[str, Any]:
        body = _request_object(body or {}, "reset", RESET_FIELDS)
        options = {k: body[k] for k in ("split", "index") if body.get(k) is not None}
        try:
            _, info = self.env.reset(seed=body.get("seed"), options=options)
        except (gym.error.Error, ValueError, IndexError, TypeError) as err:  # a bad seed, split or index
            raise RequestError(400, f"reset: {err}") from None
        self.episode_id = str(body.get("episode_id") or uuid.uuid4().hex)
        self._progress = {"step_count": 0, "done": False, "episode_stats": info["episode_stats"]}
        return {"observation": {"messages": info["messages"], "tools": self.env.tools}, "reward": None,
                "done": False, "metadata": {"episode_id": self.episode_id, "split": info["split"],
                                            "index": info["index"]}}

    def step(self, body: Any) -> dict[str, Any]:
        body = _request_object(body, "step", STEP_FIELDS)
        action = body.get("action")
        if not isinstance(action, dict) or not isinstance(action.get("message"), str):
            raise RequestError(400, f"step: the body needs \"action\": {{\"message\": <the assistant message as a "
                                    f"string>}}, got action={json.dumps(action)}")
        limit = self.env.action_space.max_length
        if len(action["message"]) > limit:
            raise RequestError(400, f"step: the message has {len(action['message'])} characters, more than the "
                                    f"env's max_length={limit}")
        try:  # anything else the env raises is its own failure: HTTP 500
            _, reward, terminated, truncated, info = self.env.step(action["message"])
        except gym.error.ResetNeeded as err:
            raise RequestError(400, f"step: {err}") from None
        metadata = {"terminated": terminated, "truncated": truncated,
                    **{k: info[k] for k in STEP_METADATA if k in info}}
        self._progress = {"step_count": info["turn"], "done": terminated or truncated,
                          "episode_stats": info["episode_stats"]}
        return {"observation": {"messages": info["messages"], "env_messages": info["env_messages"]},
                "reward": reward, "done": terminated or truncated, "metadata": metadata}


def _request_object(body: Any, route: str, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(400, f"{route}: the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise RequestError(400, f"{route}: unknown field(s) {unknown}; the fields are {sorted(fields)}")
    return body


def _handler_for(server: EnvServer) -> type[BaseHTTPRequestHandler]:
    routes = {("GET", "/health"): server.health, ("GET", "/metadata"): server.metadata,
              ("GET", "/state"): server.state, ("POST", "/reset"): server.reset, ("POST", "/step"): server.step}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def _answer(self, method: str) -> None:
            path = self.path.split("?")[0].rstrip("/") or "/"
            try:
                route = routes.get((method, path))
                if route is None:
                    known = sorted(f"{m} {p}" for m, p in routes)
                    raise RequestError(404, f"no route {method} {path}; routes: {', '.join(known)}")
                status, body = 200, route(self._body() if method == "POST" else None)
            except RequestError as err:
                status, body = err.status, {"detail": str(err)}
            except Exception as err:  # the env failed: say so, keep serving
                status, body = 500, {"detail": f"Environment error: {type(err).__name__}: {err}"}
            data = json.dumps(body, default=_jsonable).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                return json.loads(raw) if raw.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RequestError(400, f"the body is not JSON ({err})") from None

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the caller's logs are not ours to fill
            pass

    return Handler


def serve(env: MultiTurnEnv | str, *, host: str = "127.0.0.1", port: int = 0, **make_kwargs: Any) -> EnvServer:
    """Serve ``env`` (or ``textenv.make(env, **make_kwargs)``) at ``http://host:port`` (port 0: a free one) until
    ``close()``; use it as a context manager to close it."""
    if isinstance(env, str):
        from textenv.registry import make

        env = make(env, **make_kwargs)
    elif make_kwargs:
        raise TaskError(f"serve: arguments {sorted(make_kwargs)} need an env id, not a built env")
    return EnvServer(env, host, port)


# ---- the client ---------------------------------------------------------------------------------------------

@dataclass
class Remote:
    """The client's state of an episode: the server keeps the real one."""

    turns: int = 0
    final_reward: float = 0.0


class HTTPTask(MultiTurnTask):
    """A served multi-turn env as a task of ours (see the module doc); play it with ``MultiTurnEnv(HTTPTask(url))``.

    ``splits`` maps a split name to rows, each row a dict of ``/reset`` fields (``split``, ``index``, ``seed``) sent
    with it (default: one row, ``{}``, so the server draws the example from the seed the env passes); ``name`` and
    ``max_turns`` default to the server's ``/metadata``. ``reply_field`` and ``action_field`` adapt a foreign text env.
    """

    def __init__(self, base_url: str, *, splits: Mapping[str, Sequence[dict[str, Any]]] | None = None,
                 name: str | None = None, max_turns: int | None = None, timeout: float = 30.0,
                 reply_field: str | None = None, action_field: str = "message"):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        self.reply_field, self.action_field = reply_field, action_field
        self.splits = {k: [dict(row) for row in rows] for k, rows in (splits or {"train": [{}]}).items()}
        meta = self._call("GET", "/metadata") if name is None or max_turns is None else {}
        self.name = name or _field(meta, "name", str, f"GET {self.base_url}/metadata")
        if max_turns is None and not isinstance(meta.get("max_turns"), int):
            raise HTTPEnvError(f"HTTPTask: GET {self.base_url}/metadata does not say max_turns; pass max_turns=")
        self.max_turns = max_turns or meta["max_turns"]
        self.description = str(meta.get("description", ""))
        self._refuse_tools(meta.get("tools"), f"GET {self.base_url}/metadata")

    def reset(self, row: dict[str, Any], rng: np.random.Generator) -> tuple[list[Message], Remote]:
        where = f"POST {self.base_url}/reset"
        data = self._call("POST", "/reset", {"seed": int(rng.integers(2**31 - 1)), **row})
        observation = _field(data, "observation", dict, where)
        self._refuse_tools(observation.get("tools"), where)
        if self.reply_field is not None:
            return [{"role": "user", "content": _field(observation, self.reply_field, str, where)}], Remote()
        return _messages(observation.get("messages"), f"{where}: field observation.messages"), Remote()

    def respond(self, state: Remote, message: Message) -> Reply:
        where = f"POST {self.base_url}/step"
        data = self._call("POST", "/step", {"action": {self.action_field: _message_text(message)}})
        observation = _field(data, "observation", dict, where)
        done = _field(data, "done", bool, where)
        reward = 0.0 if data.get("reward", 0.0) is None else _field(data, "reward", float, where)  # OpenEnv: null
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        state.turns += 1
        state.final_reward = float(metadata.get("final_reward", 0.0))
        turn_reward = float(metadata.get("turn_reward", reward - state.final_reward))
        # a truncation the local env does not reach by itself (another max_turns) still ends the episode here
        ends = bool(metadata.get("terminated", done)) or (done and state.turns < self.max_turns)
        return Reply(self._reply(observation, metadata, where), reward=turn_reward, done=ends,
                     invalid=bool(metadata.get("invalid_action", False)))

    def final_reward(self, state: Remote) -> float:
        return state.final_reward

    def _reply(self, observation: dict[str, Any], metadata: dict[str, Any], where: str) -> list[Message]:
        """The env's reply this step; tool results are left out: the local env made the same ones (no tools)."""
        if self.reply_field is not None:
            return [{"role": "user", "content": _field(observation, self.reply_field, str, where)}]
        messages = observation.get("env_messages")
        if not isinstance(messages, list):
            raise HTTPEnvError(f"{where}: the response's field observation.env_messages must be a list of "
                               f"messages, got {json.dumps(messages)[:80]}")
        reply = messages[int(metadata.get("tool_calls", 0)):]
        return _messages(reply, f"{where}: field observation.env_messages") if reply else []

    def _refuse_tools(self, tools: Any, where: str) -> None:
        if tools:
            names = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
            raise HTTPEnvError(f"HTTPTask: {where} lists tools {names}; a local MultiTurnEnv runs the <tool_call> "
                               "blocks of a message itself and cannot run tools that live on the server. Serve a "
                               "task without tools, or play this one with raw /step calls")

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        url = self.base_url + path
        request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise HTTPEnvError(f"{method} {url} answered HTTP {err.code}: {_detail(err.read())}") from None
        except OSError as err:  # refused, unknown host, timed out (URLError is an OSError)
            reason = getattr(err, "reason", err)
            raise HTTPEnvError(f"cannot reach {method} {url} ({reason}); is the server running? "
                               "textenv.serve(env) starts one") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPEnvError(f"{method} {url} answered with non-JSON: {raw[:80]!r}") from None
        if not isinstance(data, dict):
            raise HTTPEnvError(f"{method} {url} answered a JSON {type(data).__name__}, expected an object")
        return data


def _messages(value: Any, where: str) -> list[Message]:
    try:
        return check_messages(value, where)
    except TaskError as err:
        raise HTTPEnvError(str(err)) from None


def _detail(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["detail"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``data[key]`` checked against ``kind``; an HTTPEnvError naming the URL and the field otherwise."""
    if key not in data:
        raise HTTPEnvError(f"{where}: the response has no field {key!r} (it has {sorted(data)})")
    value = data[key]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        names = {float: "a number", bool: "true or false", str: "a string", dict: "an object"}
        raise HTTPEnvError(f"{where}: the response's field {key!r} must be {names.get(kind, kind.__name__)}, "
                           f"got {json.dumps(value)[:80]}")
    return value


def _message_text(message: Message) -> str:
    """The assistant message as text again: its content, then its tool calls as Hermes blocks."""
    calls = [format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", ())]
    return "\n".join(([message["content"]] if message["content"] else []) + calls)
