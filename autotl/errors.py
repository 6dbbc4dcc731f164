"""The two kinds of failure autotl knows.

A :class:`UsageError` is the user's to fix (a missing folder, a bad search-space
file, an unknown backbone): it stops the search and the CLI prints its message
as one line.  A :class:`TrialFailed` belongs to one trial (the head diverged, a
backbone could not be built at a size): the study records it and goes on, as
keras-tuner's ``FailedTrialError`` does.
"""

from __future__ import annotations

__all__ = ["AutotlError", "UsageError", "TrialFailed", "PluginError", "first_line"]


class AutotlError(Exception):
    """Base class of every error autotl raises on purpose."""


class UsageError(AutotlError):
    """Something the user gave is wrong; the message says what and how to fix it."""


class PluginError(UsageError):
    """A plugin broke the hook contract; the message names the plugin."""


class TrialFailed(AutotlError):
    """One trial cannot go on; the search records the reason and continues."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
