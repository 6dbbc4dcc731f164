"""Silence file descriptor 2 for a block: TensorFlow's and TFLite's C++ logging ignores Python's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["stderr_silenced"]


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null for the block and restore it after; exceptions still raise.

    Where fd 2 cannot be duplicated (it is closed), the block runs as it is.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
