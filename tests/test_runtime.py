"""pvd.runtime: the peak-memory probe used for per-shape cost reports."""

import numpy as np

from pvd.runtime import PeakMemory, _rss


def test_peak_memory_sees_a_short_lived_allocation():
    before = _rss()
    with PeakMemory(interval=0.001) as probe:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        block.sum()
        del block
    assert probe.peak >= before + 150 * 2**20
    with PeakMemory() as idle:
        pass
    assert 0 < idle.peak < probe.peak + 50 * 2**20

