"""A Gymnasium text space for natural language.

``gymnasium.spaces.Text`` only contains strings over its charset, alphanumeric by default, so a prompt
with a space or a question mark would fail the env checker. ``TextSpace`` contains *any* ``str`` within
its length bounds; its charset (printable ASCII plus a few non-ASCII letters) only shapes ``sample()``.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium.spaces import Text

# What ``sample()`` draws from: printable ASCII (with space and newline) and some multi-byte characters,
# so random actions exercise UTF-8 handling in rewards and tokenizers.
SAMPLE_CHARSET = string.ascii_letters + string.digits + string.punctuation + " \n" + "éüñßçø€中文😀"


class TextSpace(Text):
    """Any string of ``min_length`` to ``max_length`` characters (bounds inclusive)."""

    def __init__(self, max_length: int, *, min_length: int = 0, charset: str = SAMPLE_CHARSET,
                 seed: int | np.random.Generator | None = None):
        super().__init__(max_length, min_length=min_length, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace({self.min_length}, {self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TextSpace) and self.min_length == other.min_length
                and self.max_length == other.max_length and self.character_set == other.character_set)
