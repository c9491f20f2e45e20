"""What running out of memory looks like, on any device: one predicate for every place that catches it.

Torch-free: the worker runtime and the runner share it. Torch reports a full device in several ways:

* CUDA (and MPS, XPU): `torch.OutOfMemoryError` (alias `torch.cuda.OutOfMemoryError`), a RuntimeError;
* some CUDA paths (cuBLAS, a caching allocator that gave up): a plain RuntimeError saying
  "CUDA error: out of memory";
* the CPU allocator: a plain RuntimeError, "[enforce fail at alloc_cpu.cpp:…] … DefaultCPUAllocator:
  can't allocate memory: you tried to allocate … bytes. Error code 12 (Cannot allocate memory)"
  ("not enough memory" on Windows), not a MemoryError;
* the kernel (mmap, a thread's stack): OSError ENOMEM;
* Python itself (and numpy): MemoryError.
"""

from __future__ import annotations

import errno

_WORDS = (
    "out of memory",  # CUDA, MPS ("MPS backend out of memory"), HIP
    "can't allocate memory",  # torch's DefaultCPUAllocator
    "cannot allocate memory",  # ENOMEM spelled out
    "not enough memory",  # the CPU allocator on Windows
    "defaultcpuallocator",
)
_HEAD = 400  # the words are in the first line; a long message (a prompt echoed back) is not searched


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says a device (GPU or CPU) ran out of memory: MemoryError, torch's
    OutOfMemoryError, OSError ENOMEM, or the text of a CUDA or CPU allocation failure."""
    if isinstance(exc, MemoryError) or any(kind.__name__ == "OutOfMemoryError" for kind in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc)[:_HEAD].lower()
    return any(words in text for words in _WORDS)
