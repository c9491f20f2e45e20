"""Quoting what a user typed inside a reply, shortened: a reply must fit Discord's 2,000 characters.

Slash-command options take up to 6,000 characters; quoted whole in an error, such a text made the
reply too long for Discord (error 50035) and the user never heard back. Every message that repeats
user text (an artist, a genre, a file name, a number typed in a form) goes through `quote_user_text`.
"""

from __future__ import annotations

QUOTE_LIMIT = 60


def quote_user_text(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` in quotes (repr-style, so control characters show), cut to `limit` characters with "…"
    and the full length when longer: `'the beatles the beat…' (6,000 characters)`."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit] + '…'!r}{_length(text)}"


def shorten_user_text(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` unquoted (a number), cut like `quote_user_text`: `123456…` (80 characters)."""
    return text if len(text) <= limit else f"{text[:limit]}…{_length(text)}"


def _length(text: str) -> str:
    return f" ({len(text):,} characters)"
