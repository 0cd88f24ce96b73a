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
