"""Quoting what a user typed inside a reply, shortened: a reply must fit Discord's 2,000 characters.

Slash-command options take up to 6,000 characters; quoted whole in an error, such a text made the
reply too long for Discord (error 50035) and the user never heard back. Every message that repeats
user text (an artist, a genre, a file name, a number typed in a form) goes through `quote_user_text`.
"""

from __future__ import annotations

import unicodedata

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


# Kept in a label's shown text besides ASCII letters and digits: the marks of names such as "r&b",
# "hip-hop", "rock 'n' roll" or "R.E.M.", none of which Discord reads as markup.
LABEL_MARKS = "'&-."


def plain_words(text: str, keep: str = LABEL_MARKS) -> str:
    """`text` with every character but ASCII letters, digits and `keep` as a space, runs of spaces as
    one: `'pop\\n# ✅ ||rock||'` → `'pop rock'`. For text kept for its words alone (a v2 genre), which
    then shows on one line, without markup, links, mentions or invisible characters."""
    return " ".join("".join(c if (c.isascii() and c.isalnum()) or c in keep else " " for c in text).split())


_MARKUP = str.maketrans({c: "\\" + c for c in "\\*_~|`[<"})  # mid-line markup: # > - only start a line


def public_label(text: str) -> str:
    """A stored label (artist, genres) as a public message shows it: on one line (line breaks, control
    and format characters such as right-to-left overrides or zero-width ones as spaces) with Discord's
    markup escaped, so `*nsync` shows as typed and stored text cannot add lines, links or mentions."""
    spaced = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text)
    return " ".join(spaced.split()).translate(_MARKUP)
