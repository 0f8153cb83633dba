"""CPU thread count for a block of work.

Small-tensor training is overhead-bound: on a busy machine one thread per process beats several (threads that
wait for each other's cores make every op slower), and bit-exact reproduction needs the same count each time.
"""
import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch intra-op threads (None: leave the setting alone), then restore it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
