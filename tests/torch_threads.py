"""An autouse fixture for the engine/server tests: `from torch_threads import one_torch_thread`."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test machine's 2 cores are shared: one intra-op thread is ~10x faster than contended threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
