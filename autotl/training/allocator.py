"""Keep the process's memory flat over a long run: freed batch-sized buffers go back to the system.

glibc's ``malloc`` serves large requests with ``mmap`` and returns them on
``free``, but raises that threshold each time such a buffer is freed (up to
32 MB), after which batches of resized images and activations come from its
heaps, which keep what was freed: a search's resident memory then creeps up
with the number of batches, that is with the data's size.  A fixed threshold
(1 MiB) stops the creep; the cost is a page fault per page of each large
buffer, a few milliseconds per batch.
"""

from __future__ import annotations

import os
import platform

__all__ = ["return_large_buffers"]

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 1 << 20
_done = False


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for this process (once); False where it does not apply.

    A threshold the user chose (``MALLOC_MMAP_THRESHOLD_``) is left alone.
    """
    global _done
    if _done or "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return _done
    import ctypes

    try:
        _done = bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _done
