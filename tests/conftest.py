"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tests made of thousands of tiny steps: on busy cores a second
    thread only adds waits (sampler tests ran 20x slower with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory):
    """A small built-in dataset for train.py / sample.py tests: 6 shapes per category (4 train,
    1 val, 1 test), 2 views at 16x16, 400 points (266 for training, 134 held out)."""
    from pvd.data.synthetic.writer import SyntheticConfig, write_synthetic_dataset
    path = tmp_path_factory.mktemp("pipeline") / "d.h5"
    write_synthetic_dataset(path, SyntheticConfig(per_category=6, views=2, resolution=16, num_points=400, supersample=1,
                                                  categories=("chair", "car")), progress=False)
    return path


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device: the CUDA path is not tested here"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has: CPU always, CUDA when present (skipped loudly otherwise)."""
    return torch.device(request.param)
