"""`plain_words` and `public_label`: user text made safe to show in public messages."""

from __future__ import annotations

import pytest

from sampler.jukebox.labels import genre_keys
from sampler.user_text import plain_words, public_label


@pytest.mark.parametrize(
    ("typed", "plain"),
    [
        ("pop\n# ✅ rock ||jazz|| ```", "pop rock jazz"),
        ("Hip-Hop", "Hip-Hop"),
        ("R&B", "R&B"),
        ("rock 'n' roll", "rock 'n' roll"),
        ("[pop](https://evil.example)", "pop https evil.example"),
        ("<@&123> @everyone", "&123 everyone"),  # no mention without "<" and "@"
        ("pop\u202e\u200brock\x00", "pop rock"),
        ("z\u0301\u0301\u0301\u0301", "z"),
        ("*" * 5000, ""),
    ],
)
def test_plain_words_keeps_the_words_and_the_marks_of_names(typed: str, plain: str) -> None:
    assert plain_words(typed) == plain
    assert genre_keys(plain_words(typed.lower()), "v2") == genre_keys(typed, "v2")  # the same v2 genre


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("the beatles", "the beatles"),
        ("*nsync", r"\*nsync"),
        ("pop\n✅ Done", "pop ✅ Done"),
        ("pop\r\n\u2028\u2029-# small", "pop -# small"),
        ("[free nitro](https://evil.example)", r"\[free nitro](https://evil.example)"),
        ("<https://evil.example> <@&1> <#2> <t:0:R>", r"\<https://evil.example> \<@&1> \<#2> \<t:0:R>"),
        (
            "||spoiler|| ```fence``` ~~s~~ __u__ \\",
            r"\|\|spoiler\|\| \`\`\`fence\`\`\` \~\~s\~\~ \_\_u\_\_ \\",
        ),
        ("a\u202eb\u200bc\x00d\u00a0e", "a b c d e"),
        ("beyoncé\u200e", "beyoncé"),  # a vocabulary name's direction mark
    ],
)
def test_public_label_is_one_line_with_markup_escaped(stored: str, shown: str) -> None:
    assert public_label(stored) == shown
