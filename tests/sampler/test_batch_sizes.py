from __future__ import annotations

import pytest

from sampler.batch_sizes import DEFAULT_MAX_BATCH_SIZE, format_batch_sizes, parse_batch_sizes


def test_one_number_is_every_level_and_three_are_levels_0_1_2() -> None:
    assert parse_batch_sizes("4") == (4, 4, 4)
    assert parse_batch_sizes(" 8, 6 2 ") == (8, 6, 2)
    assert parse_batch_sizes(format_batch_sizes(DEFAULT_MAX_BATCH_SIZE)) == DEFAULT_MAX_BATCH_SIZE


@pytest.mark.parametrize("text", ["", "0", "4,4", "a,b,c", "1,2,-3", "1.5"])
def test_anything_else_says_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"one positive number or three \(levels 0, 1, 2\), e.g. 16,16,3"):
        parse_batch_sizes(text)
