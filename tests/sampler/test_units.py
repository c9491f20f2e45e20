from __future__ import annotations

import pytest

from sampler.units import format_bytes


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
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
