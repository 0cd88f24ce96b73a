"""pvd.runtime: the peak-memory probe used for per-shape cost reports."""

import numpy as np
import pytest

import pvd.runtime as runtime
from pvd.runtime import PeakMemory, _rss

MiB = 2**20


def _allocate_and_free(mib: int) -> None:
    block = np.ones(mib * MiB // 8)  # touched, so resident
    block.sum()
    del block


@pytest.mark.parametrize("kernel_counter", [True, False], ids=["high-water-mark", "polling"])
def test_peak_memory_sees_a_short_lived_allocation(kernel_counter, monkeypatch):
    if not kernel_counter:
        monkeypatch.setattr(runtime, "_reset_high_water_mark", lambda: False)
        monkeypatch.setattr(runtime, "_high_water_mark", lambda: 0)
    elif not runtime._reset_high_water_mark():
        pytest.skip("this kernel refuses /proc/self/clear_refs: only the polling path is tested")
    before = _rss()
    with PeakMemory(interval=0.0005) as probe:
        if kernel_counter:
            _allocate_and_free(200)
        else:
            # numpy holds the GIL while filling, so the poller can only see a block that
            # outlives a few polling intervals: keep it alive briefly
            block = np.ones(200 * MiB // 8)
            block.sum()
            import time

            time.sleep(0.05)
            del block
    assert probe.peak >= before + 150 * MiB
    with PeakMemory() as idle:
        pass
    assert 0 < idle.peak < probe.peak


def test_high_water_mark_resets_between_blocks():
    if not runtime._reset_high_water_mark():
        pytest.skip("this kernel refuses /proc/self/clear_refs")
    with PeakMemory() as big:
        _allocate_and_free(200)
    with PeakMemory() as small:
        pass
    # the second block must not inherit the first one's peak
    assert big.peak - small.peak >= 150 * MiB
