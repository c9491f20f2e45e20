"""Counting the aten ops a block of code dispatches (a TorchDispatchMode): sees read-backs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# ops that read a device value back to the host
READ_BACKS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")


@contextmanager
def dispatched() -> Iterator[Counter[str]]:
    """Counts every aten op that runs inside the block, by name (e.g. "aten.addmm")."""
    seen: Counter[str] = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            seen[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        yield seen
