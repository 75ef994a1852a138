"""One number formatter, two conventions: the planner's decimal units and inspect's binary ones."""

from __future__ import annotations

import pytest

from llmkit.summary import human_bytes as inspect_bytes
from llmkit.summary import human_count as inspect_count
from llmkit.units import human_bytes, human_count


def test_planner_bytes_are_decimal_with_three_significant_digits():
    assert human_bytes(4 * 10**9) == "4 GB"  # 1B parameters in fp32: 4 GB, not 3.73 GiB
    assert human_bytes(168.9e6) == "169 MB"
    assert human_bytes(37.7e6) == "37.7 MB"
    assert human_bytes(16_384) == "16.4 KB"
    assert human_bytes(999) == "999 B"
    assert human_bytes(999.9e6) == "1000 MB"  # not 1e+03 MB
    assert human_bytes(3e15) == "3000 TB"  # TB is the largest unit


def test_inspect_bytes_are_binary_with_one_decimal():
    assert inspect_bytes(4 * 10**9) == "3.7 GiB"
    assert inspect_bytes(497_759_232) == "474.7 MiB"  # gpt2's fp32 weights
    assert inspect_bytes(1024) == "1.0 KiB"
    assert inspect_bytes(1023) == "1023 B"
    assert human_bytes(2**20, base=1024) == "1 MiB"


def test_counts():
    assert human_count(124_439_808) == "124M"
    assert human_count(1.3e9) == "1.3B"
    assert human_count(999.9e6) == "1000M"
    assert human_count(2.5e12) == "2.5T"
    assert human_count(512) == "512"
    assert inspect_count(124_439_808) == "124.44M"
    assert inspect_count(999) == "999"


def test_unknown_base():
    with pytest.raises(ValueError, match="1000 or 1024"):
        human_bytes(1, base=1023)
