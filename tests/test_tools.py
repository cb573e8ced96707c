"""Tools: schemas from transformers' get_json_schema, Hermes tool-call parsing, and every malformed call
coming back as a tool message the model can read (exact texts), never as an exception."""

import pytest

from textenv import TaskError, Toolbox, format_tool_call, parse_tool_calls, tool_schema
from textenv.tasks.key_value import Lookup
from textenv.tools import is_stateful


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def shout(text: str, times: int) -> str:
    """Repeat a text in capitals.

    Args:
        text: What to shout.
        times: How often.
    """
    if times < 0:
        raise ValueError("times must be >= 0")
    return text.upper() * times


def untyped(x):
    """Do something.

    Args:
        x: A thing.
    """


def undocumented(x: int) -> int:
    return x


def toolbox() -> Toolbox:
    return Toolbox([add, shout, Lookup.get], where="Test-v0")


def call(name, **arguments) -> str:
    return format_tool_call(name, arguments)


# ---- schemas -----------------------------------------------------------------------------------------

def test_schema_is_get_json_schema_of_the_function():
    assert tool_schema(add) == {
        "type": "function",
        "function": {"name": "add", "description": "Add two integers.",
                     "parameters": {"type": "object",
                                    "properties": {"a": {"type": "integer", "description": "The first number."},
                                                   "b": {"type": "integer", "description": "The second number."}},
                                    "required": ["a"]},
                     "return": {"type": "integer"}}}


def test_a_method_of_the_state_is_a_stateful_tool_without_self_in_its_schema():
    assert tool_schema(Lookup.get) == {
        "type": "function",
        "function": {"name": "get", "description": "Look up a key in the store.",
                     "parameters": {"type": "object",
                                    "properties": {"key": {"type": "string", "description": "The key to look up."}},
                                    "required": ["key"]},
                     "return": {"type": "string",
                                "description": "The next key of the chain, or the number at its end."}}}
    assert is_stateful(Lookup.get) and not is_stateful(add)
    assert Toolbox([add, Lookup.get]).schemas == [tool_schema(add), tool_schema(Lookup.get)]


def test_a_tool_without_type_hints_or_docstring_is_a_task_error_naming_it():
    with pytest.raises(TaskError, match=r"^Test-v0: tool 'untyped': cannot derive its JSON schema \(Argument x is "
                                        r"missing a type hint in function untyped\); a tool needs a type hint"):
        Toolbox([untyped], where="Test-v0")
    with pytest.raises(TaskError, match=r"tool 'undocumented': cannot derive its JSON schema \(Cannot generate JSON "
                                        r"schema for undocumented because it has no docstring!\)"):
        tool_schema(undocumented)
    with pytest.raises(TaskError, match=r"tool 3 is int, expected a function"):
        tool_schema(3)
    with pytest.raises(TaskError, match=r"Test-v0: two tools are named 'add'"):
        Toolbox([add, add], where="Test-v0")


# ---- parsing ------------------------------------------------------------------------------------------

def test_one_call_becomes_tool_calls_and_a_tool_message():
    turn = toolbox().run("Let me add.\n" + call("add", a=2, b=3))
    assert turn.assistant == {"role": "assistant", "content": "Let me add.",
                              "tool_calls": [{"type": "function", "function": {"name": "add",
                                                                               "arguments": {"a": 2, "b": 3}}}]}
    assert turn.results == [{"role": "tool", "name": "add", "content": "5"}]
    assert (turn.n_calls, turn.n_errors) == (1, 0)


def test_several_calls_run_in_order_and_a_stateful_tool_gets_the_state():
    state = Lookup(store={"lime": "fig", "fig": 42}, chain=["lime", "fig"], answer=42)
    text = call("get", key="lime") + "\n" + call("get", key="fig") + call("shout", text="ok", times=2)
    turn = toolbox().run(text, state)
    assert [c["function"]["name"] for c in turn.assistant["tool_calls"]] == ["get", "get", "shout"]
    assert turn.assistant["content"] == ""
    assert turn.results == [{"role": "tool", "name": "get", "content": "fig"},
                            {"role": "tool", "name": "get", "content": "42"},
                            {"role": "tool", "name": "shout", "content": "OKOK"}]
    assert state.fetched == {"lime", "fig"}


def test_text_without_calls_is_the_message_itself():
    turn = toolbox().run("  just text  ")
    assert turn.assistant == {"role": "assistant", "content": "  just text  "} and turn.results == []
    assert (turn.n_calls, turn.n_errors) == (0, 0) and parse_tool_calls("no calls") == []


HINT = 'Write <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>'


@pytest.mark.parametrize("text, content", [
    ('<tool_call>\n{"name": "add", "arguments": {"a": }}\n</tool_call>',
     "Error: tool call 1 is not valid JSON (Expecting value: line 1 column 36 (char 35)). " + HINT),
    ('<tool_call>["add", 1]</tool_call>',
     'Error: tool call 1 must be a JSON object with a string "name" and an "arguments" object. ' + HINT),
    ('<tool_call>{"arguments": {}}</tool_call>',
     'Error: tool call 1 must be a JSON object with a string "name" and an "arguments" object. ' + HINT),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>',
     'Error: tool call 1 (add): "arguments" must be a JSON object, got list. ' + HINT),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1}}',
     "Error: tool call 1 has no closing </tool_call>. " + HINT),
])
def test_a_malformed_block_is_an_error_message_and_stays_in_the_text(text, content):
    turn = toolbox().run(text)
    assert turn.assistant == {"role": "assistant", "content": text}  # no tool_calls: nothing was called
    assert turn.results == [{"role": "tool", "name": "invalid_tool_call", "content": content}]
    assert (turn.n_calls, turn.n_errors) == (1, 1)


@pytest.mark.parametrize("name, arguments, content", [
    ("mul", {"a": 1}, "Error: unknown tool 'mul'; tools: add, shout, get"),
    ("add", {}, "Error: bad arguments for add: missing argument 'a'"),
    ("add", {"a": 1, "c": 2}, "Error: bad arguments for add: unexpected argument 'c'; add takes a, b"),
    ("add", {"a": "1"}, "Error: bad arguments for add: argument 'a' must be integer, got \"1\""),
    ("add", {"a": True}, "Error: bad arguments for add: argument 'a' must be integer, got true"),
    ("add", {"a": 1.5}, "Error: bad arguments for add: argument 'a' must be integer, got 1.5"),
    ("shout", {"text": "x", "times": -1}, "Error: shout raised ValueError: times must be >= 0"),
    ("get", {"key": "nope"}, "Error: get raised LookupError: no key 'nope' in the store"),
])
def test_a_wrong_call_is_an_error_message_the_model_can_read(name, arguments, content):
    state = Lookup(store={"lime": 7}, chain=["lime"], answer=7)
    turn = toolbox().run("Calling. " + call(name, **arguments), state)
    assert turn.assistant == {"role": "assistant", "content": "Calling.",
                              "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}
    assert turn.results == [{"role": "tool", "name": name, "content": content}]
    assert (turn.n_calls, turn.n_errors) == (1, 1)


def test_good_and_bad_calls_mix_in_order_and_count_apart():
    text = call("add", a=1) + '<tool_call>{oops}</tool_call>' + call("nope") + call("add", a=2, b=2)
    turn = toolbox().run(text)
    assert [m["content"] for m in turn.results] == [
        "1", "Error: tool call 2 is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1)). " + HINT, "Error: unknown tool 'nope'; tools: add, shout, get", "4"]
    assert [m["name"] for m in turn.results] == ["add", "invalid_tool_call", "nope", "add"]
    assert turn.assistant["content"] == "<tool_call>{oops}</tool_call>"
    assert len(turn.assistant["tool_calls"]) == 3 and (turn.n_calls, turn.n_errors) == (4, 2)


def test_no_tools_and_non_text_results():
    assert Toolbox().run(call("add", a=1)).results[0]["content"] == \
        "Error: unknown tool 'add'; this conversation has no tools"

    def pair(x: int) -> dict:
        """A pair.

        Args:
            x: The number.
        """
        return {"x": x, "twice": 2 * x}

    def obj(x: int) -> object:
        """An object.

        Args:
            x: The number.
        """
        return {1, 2}

    box = Toolbox([pair, obj])
    assert box.run(call("pair", x=2)).results[0]["content"] == '{"x": 2, "twice": 4}'
    assert box.run(call("obj", x=2)).results[0]["content"] == "{1, 2}"
