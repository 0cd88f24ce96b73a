"""Host syncs per training step: the ops that make the host wait for a GPU, counted while train.py
trains ``tiny`` with image conditioning. A CPU shows them as well as a GPU: the count is of ops
dispatched, not of time spent."""

from __future__ import annotations

import os
import traceback

from torch.utils._python_dispatch import TorchDispatchMode

import train

# Ops whose result (or output size) the host must read back: each is a device sync on a GPU.
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "unique", "_unique2", "unique_consecutive",
            "repeat_interleave"}
# Work that stays on the host in a GPU run too: the optimiser's step counter (a CPU tensor unless
# capturable) and the DataLoader's per-epoch base seed.
HOST_SIDE = (f"torch{os.sep}optim{os.sep}", f"torch{os.sep}utils{os.sep}data{os.sep}")


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS and not any(part in frame.filename for frame in traceback.extract_stack()
                                        for part in HOST_SIDE):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def syncs(data, run_dir, steps: int) -> list[str]:
    argv = ["tiny", f"data.path={data}", f"run_dir={run_dir}", f"max_steps={steps}", "ckpt_every=1000", "val_every=0",
            "log_every=1000"]  # tiny: image + category conditioning
    with SyncCounter() as counter:
        assert train.main(argv) == 0
    return counter.calls


def test_a_training_step_syncs_the_host_at_most_twice(pipeline_data, tmp_path):
    # The set-up, the last log line and the final checkpoint are the same in both runs: the
    # difference is 4 steps' worth (crossing two more epochs).
    short = syncs(pipeline_data, tmp_path / "a", 2)
    long = syncs(pipeline_data, tmp_path / "b", 6)
    per_step = (len(long) - len(short)) / 4
    extra = sorted(set(long) | set(short))
    assert per_step <= 2, f"{per_step} syncs per step ({extra})"
