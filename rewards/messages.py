"""Prompts that are conversations (TRL's message lists): as text, as TRL's reward functions see them, and how
a chat template opens the model's turn.

A reward gets the prompt as given: a string, or a list of messages ``{"role", "content"}``. A reward
model that reads text needs the two joined: with a tokenizer that has a chat template, the conversation
plus the completion as the assistant's reply is rendered by that template (as a chat reward model was
trained); otherwise it is the plain rendering below, which ``textenv`` also uses for observations.

A conversation that ends with an assistant message is *continued*, as TRL's ``apply_chat_template``
does (``continue_final_message=True``, no generation prompt): the model writes the rest of that
message instead of a new turn, so the completion belongs to that message's content.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Messages = Sequence[Mapping[str, Any]]


def is_messages(x: Any) -> bool:
    """True for a non-empty list of message dicts (TRL's conversational format), False for plain text."""
    return isinstance(x, list | tuple) and bool(x) and all(isinstance(m, Mapping) and "role" in m for m in x)


def continues_final_message(prompt: Any) -> bool:
    """True when ``prompt`` is a conversation that ends with an assistant message, which the model continues."""
    return is_messages(prompt) and prompt[-1]["role"] == "assistant"


def chat_template_options(messages: Messages) -> dict[str, bool]:
    """``apply_chat_template`` flags for a prompt, TRL's rule: continue a final assistant message, else open
    a new assistant turn (the generation prompt)."""
    continued = continues_final_message(messages)
    return {"add_generation_prompt": not continued, "continue_final_message": continued}


def render_messages(messages: Messages, add_generation_prompt: bool = False) -> str:
    """A plain, template-free rendering, one ``"role: content"`` line per message (observations, logs).

    ``add_generation_prompt`` ends it with ``"\\nassistant:"``, the cue for a model without a chat template.
    """
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text + "\nassistant:" if add_generation_prompt else text


def with_completion(prompt: Messages, completion: str) -> list[dict[str, Any]]:
    """The conversation once ``completion`` is said: one more assistant message, or, when the prompt ends
    with an assistant message (continued), that message with ``completion`` appended to its content."""
    if continues_final_message(prompt):
        *head, last = prompt
        return [*map(dict, head), {**last, "content": last["content"] + completion}]
    return [*map(dict, prompt), {"role": "assistant", "content": completion}]


def trl_reward_inputs(prompt: str | Messages, completion: str) -> tuple[Any, Any]:
    """``(prompt, completion)`` as TRL's GRPOTrainer hands them to a reward function.

    Text stays text. For a conversation the completion is one assistant message,
    ``[{"role": "assistant", "content": completion}]``, and the prompt a fresh copy of the messages; a
    continued final assistant message leaves the prompt and leads the completion's content (TRL's
    "bootstrap", GRPOTrainer up to 0.25), so the reward sees the whole assistant turn in one place.
    """
    if not is_messages(prompt):
        return prompt, completion
    conversation = with_completion(prompt, completion)
    return conversation[:-1], conversation[-1:]


def conversation_text(prompt: str | Messages, completion: str, tokenizer: Any = None) -> str:
    """``prompt + completion`` for a text prompt; a conversation with the completion as the assistant's reply
    (see ``with_completion``), through the tokenizer's chat template when it has one."""
    if isinstance(prompt, str):
        return prompt + completion
    messages = with_completion(prompt, completion)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return render_messages(messages)


def prompt_text(prompt: str | Messages) -> str:
    """A prompt as one string: plain text as is, messages rendered by ``render_messages``."""
    return prompt if isinstance(prompt, str) else render_messages(prompt)
