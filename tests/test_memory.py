"""kdbench.memory: the peak of a stretch of work, resettable where the OS allows it."""
from __future__ import annotations

import sys

import pytest
import torch

from kdbench import memory

CPU = torch.device("cpu")


def touch(mb: int) -> bytearray:
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):  # resident, not just reserved
        block[i] = 1
    return block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM / clear_refs are Linux's")
def test_reset_starts_a_new_peak():
    block = touch(256)
    high = memory.peak_mb(CPU)
    assert high is not None and high >= memory.resident_mb() >= 256
    del block
    assert memory.peak_mb(CPU) >= high - 1  # freeing does not lower a peak
    assert memory.reset_peak(CPU)
    after = memory.peak_mb(CPU)
    assert after <= high - 200, (high, after)  # the 256 MB block is no longer in it
    block = touch(128)
    assert memory.peak_mb(CPU) >= after + 120
    del block


def test_peak_is_a_number_on_every_platform():
    memory.reset_peak(CPU)
    peak = memory.peak_mb(CPU)
    assert peak is None or peak > 0
