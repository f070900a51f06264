"""Quoting user input in messages: every error message quotes at most ``QUOTE_CHARS`` of any input, so a huge
parameter never comes back in a response body or a log line."""

from __future__ import annotations

QUOTE_CHARS = 64


def shorten(value: object, limit: int = QUOTE_CHARS) -> str:
    """``str(value)`` cut to ``limit`` characters (with an ellipsis), for messages that name an input."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
