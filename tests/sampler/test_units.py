from __future__ import annotations

import pytest

from sampler.units import format_bytes, format_bytes_apart


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (176_400, "172.3 KiB"),
        (25 * 1024 * 1024, "25.0 MiB"),
        (int(9.7 * 1024**3), "9.7 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
        (1024**2 - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (1024**3 - 1, "1.0 GiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_a_size_over_its_limit_never_reads_as_the_limit() -> None:
    limit = 25 * 1024**2
    assert format_bytes_apart(limit + 1, limit) == ("26,214,401 bytes", "26,214,400-byte")
    assert format_bytes_apart(limit + 1024**2, limit) == ("26.0 MiB", "25.0 MiB")
