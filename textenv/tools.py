"""Tools: Python functions a multi-turn environment exposes to the model, and the model's calls to them.

A tool is a function with type hints and a Google-style docstring; its JSON schema is what
``transformers.utils.get_json_schema`` derives from them (the format chat templates take as
``apply_chat_template(messages, tools=schemas)``). A function whose first parameter is an unannotated
``self`` (a method taken from a class, e.g. ``Vault.unlock``) is a *stateful* tool: ``get_json_schema``
leaves ``self`` out of the schema (its own rule), and the environment passes the episode's state as
``self``. Any other function is called with the model's arguments alone.

The model calls tools in the Hermes/Qwen format, any number of blocks in one message::

    <tool_call>
    {"name": "get", "arguments": {"key": "lime"}}
    </tool_call>

``parse_tool_calls`` reads them; ``Toolbox.run`` turns a model's message into the assistant message
(TRL/transformers format: ``content`` is the text outside the well-formed blocks, ``tool_calls`` a list of
``{"type": "function", "function": {"name", "arguments"}}``) and one ``{"role": "tool", "name", "content"}``
message per block, in order. Nothing the model writes raises: a block that is not JSON, not an object
with a ``name``, names an unknown tool, has wrong or missing arguments, or whose tool raises, comes back
as a tool message that starts with ``"Error: "`` and says what was wrong, and is counted as an error.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import get_json_schema

from textenv.task import TaskError

Message = dict[str, Any]

TOOL_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.S)
INVALID_CALL_NAME = "invalid_tool_call"   # the ``name`` of the error message for a block with no usable name
JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                           "boolean": (bool,), "array": (list,), "object": (dict,),
                                           "null": (type(None),)}


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def is_stateful(fn: Callable[..., Any]) -> bool:
    """True when ``fn``'s first parameter is an unannotated ``self``: the env passes the episode state to it."""
    params = list(inspect.signature(fn).parameters.values())
    return bool(params) and params[0].name == "self" and params[0].annotation is inspect.Parameter.empty


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of ``fn`` from ``transformers.utils.get_json_schema``; a TaskError naming the tool if
    its type hints or docstring do not allow one."""
    if not callable(fn):
        raise TaskError(f"tool {fn!r} is {type(fn).__name__}, expected a function")
    try:
        return get_json_schema(fn)
    except Exception as err:  # transformers raises TypeHintParsingException / DocstringParsingException
        raise TaskError(f"tool {_name_of(fn)!r}: cannot derive its JSON schema ({err}); a tool needs a type hint "
                        "on every argument and a Google-style docstring with an 'Args:' line for each") from err


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the Hermes/Qwen format, as a model (or an oracle) writes it."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': dict(arguments)})}\n</tool_call>"


@dataclass(frozen=True)
class ParsedCall:
    """One ``<tool_call>`` block: a name and arguments, or ``error`` saying why the block is unusable."""

    name: str | None
    arguments: dict[str, Any] | None
    error: str | None
    span: tuple[int, int]   # where the block sits in the message


def parse_tool_calls(text: str) -> list[ParsedCall]:
    """Every ``<tool_call>`` block of ``text`` in order (an unclosed last block included, as an error)."""
    calls = []
    for k, match in enumerate(TOOL_CALL.finditer(text), start=1):
        body, closed = match.group(1).strip(), bool(match.group(2))
        name = arguments = error = None
        if not closed:
            error = f"tool call {k} has no closing </tool_call>"
        else:
            try:
                data = json.loads(body)
            except json.JSONDecodeError as err:
                data, error = None, f"tool call {k} is not valid JSON ({err})"
            if error is None and not (isinstance(data, dict) and isinstance(data.get("name"), str)):
                error = f"tool call {k} must be a JSON object with a string \"name\" and an \"arguments\" object"
            elif error is None:
                name, arguments = data["name"], data.get("arguments", {})
                if not isinstance(arguments, dict):
                    error = (f"tool call {k} ({name}): \"arguments\" must be a JSON object, "
                             f"got {type(arguments).__name__}")
                    arguments = None
        calls.append(ParsedCall(name, arguments if error is None else None, error, match.span()))
    return calls


@dataclass(frozen=True)
class ToolTurn:
    """What ``Toolbox.run`` made of one model message."""

    assistant: Message            # the assistant message, with ``tool_calls`` when there were any
    results: list[Message]        # one tool message per block, in order
    n_calls: int                  # blocks found
    n_errors: int                 # blocks that came back as an error


class Toolbox:
    """Named tools, their schemas (``schemas``, for chat templates) and the runner of a model's calls."""

    def __init__(self, tools: Sequence[Callable[..., Any]] = (), where: str = "textenv"):
        self.functions: dict[str, Callable[..., Any]] = {}
        self.schemas: list[dict[str, Any]] = []
        for fn in tools:
            try:
                schema = tool_schema(fn)
            except TaskError as err:
                raise TaskError(f"{where}: {err}") from None
            name = schema["function"]["name"]
            if name in self.functions:
                raise TaskError(f"{where}: two tools are named {name!r}; tool names must be unique")
            self.functions[name] = fn
            self.schemas.append(schema)

    def __len__(self) -> int:
        return len(self.functions)

    def check_arguments(self, name: str, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` do not fit tool ``name``'s schema (missing, unexpected, wrong JSON type), or None."""
        params = next(s for s in self.schemas if s["function"]["name"] == name)["function"]["parameters"]
        props, required = params.get("properties", {}), params.get("required", [])
        missing = [a for a in required if a not in arguments]
        if missing:
            return f"missing argument {', '.join(map(repr, missing))}"
        unexpected = [a for a in arguments if a not in props]
        if unexpected:
            return f"unexpected argument {', '.join(map(repr, unexpected))}; {name} takes {', '.join(props) or 'none'}"
        for arg, value in arguments.items():
            kinds = props[arg].get("type")
            kinds = [kinds] if isinstance(kinds, str) else kinds or []
            ok = [JSON_TYPES[k] for k in kinds if k in JSON_TYPES]
            # bool is an int in Python, never in JSON
            if ok and not any(isinstance(value, t) and not (isinstance(value, bool) and bool not in t) for t in ok):
                return f"argument {arg!r} must be {' or '.join(kinds)}, got {json.dumps(value)}"
        return None

    def call(self, name: str | None, arguments: dict[str, Any] | None, state: Any = None) -> tuple[str, bool]:
        """``(content, ok)``: the tool's result as text, or an error the model can read."""
        if name not in self.functions:
            known = f"tools: {', '.join(self.functions)}" if self.functions else "this conversation has no tools"
            return f"Error: unknown tool {name!r}; {known}", False
        assert arguments is not None
        problem = self.check_arguments(name, arguments)
        if problem:
            return f"Error: bad arguments for {name}: {problem}", False
        fn = self.functions[name]
        try:
            result = fn(state, **arguments) if is_stateful(fn) else fn(**arguments)
        except Exception as err:  # the model's call must not crash the env
            return f"Error: {name} raised {type(err).__name__}: {err}", False
        if isinstance(result, str):
            return result, True
        try:
            return json.dumps(result), True
        except (TypeError, ValueError):
            return str(result), True

    def run(self, text: str, state: Any = None) -> ToolTurn:
        """Parse ``text``, run its calls against ``state`` in order, and return the messages (see module doc)."""
        calls = parse_tool_calls(text)
        content, start, tool_calls, results, errors = [], 0, [], [], 0
        for call in calls:
            if call.error is None:  # a well-formed block becomes a tool call; a malformed one stays in the text
                content.append(text[start:call.span[0]])
                start = call.span[1]
                tool_calls.append({"type": "function", "function": {"name": call.name, "arguments": call.arguments}})
                result, ok = self.call(call.name, call.arguments, state)
            else:
                result, ok = f"Error: {call.error}. Write <tool_call>\n{{\"name\": ..., \"arguments\": {{...}}}}\n" \
                             "</tool_call>", False
            errors += not ok
            name = call.name if call.name is not None and call.error is None else INVALID_CALL_NAME
            results.append({"role": "tool", "name": name, "content": result})
        content.append(text[start:])
        assistant: Message = {"role": "assistant", "content": "".join(content).strip() if tool_calls else text}
        if tool_calls:
            assistant["tool_calls"] = tool_calls
        return ToolTurn(assistant, results, len(calls), errors)
