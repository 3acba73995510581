"""One torch intra-op thread for a block of small ops, restored afterwards.

Small tensors gain little from a second intra-op thread, and on a shared machine libgomp's spin-waiting
makes the threads wait for each other at every op (measured: a tiny training step ~8x slower, a fusion
head fit 0.3 s against 19 s under load). Where a caller wants parallelism it spreads whole samples or
fits over threads instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on one intra-op thread; the previous count comes back even if the block raises."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
