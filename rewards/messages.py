"""Prompts that are conversations (TRL's message lists) as text, for rewards that read one string.

A reward gets the prompt as given: a string, or a list of messages ``{"role", "content"}``. A reward
model that reads text needs the two joined: with a tokenizer that has a chat template, the conversation
plus the completion as the assistant's reply is rendered by that template (as a chat reward model was
trained); otherwise it is the plain rendering below, which ``textenv`` also uses for observations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def render_messages(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """A plain, template-free rendering, one ``"role: content"`` line per message (observations, logs).

    ``add_generation_prompt`` ends it with ``"\\nassistant:"``, the cue for a model without a chat template.
    """
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text + "\nassistant:" if add_generation_prompt else text


def conversation_text(prompt: str | Sequence[Mapping[str, Any]], completion: str, tokenizer: Any = None) -> str:
    """``prompt + completion`` for a text prompt; a conversation with the completion as its last assistant turn."""
    if isinstance(prompt, str):
        return prompt + completion
    messages = [*prompt, {"role": "assistant", "content": completion}]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return render_messages(messages)


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """A prompt as one string: plain text as is, messages rendered by ``render_messages``."""
    return prompt if isinstance(prompt, str) else render_messages(prompt)
