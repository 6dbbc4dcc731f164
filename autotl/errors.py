"""The two kinds of failure autotl knows.

A :class:`UsageError` is the user's to fix (a missing folder, a bad search-space
file, an unknown backbone): it stops the search and the CLI prints its message
as one line.  A :class:`TrialFailed` belongs to one trial (the head diverged, a
backbone could not be built at a size): the study records it and goes on, as
keras-tuner's ``FailedTrialError`` does.  When failures pile up (no backbone
left, too many failed trials in a row) the search ends with
:class:`SearchStopped`, which the CLI prints as one line too.
"""

from __future__ import annotations

__all__ = [
    "AutotlError",
    "UsageError",
    "TrialFailed",
    "PluginError",
    "SearchStopped",
    "first_line",
    "failure_line",
]


class AutotlError(Exception):
    """Base class of every error autotl raises on purpose."""


class UsageError(AutotlError):
    """Something the user gave is wrong; the message says what and how to fix it."""


class PluginError(UsageError):
    """A plugin broke the hook contract; the message names the plugin."""


class TrialFailed(AutotlError):
    """One trial cannot go on; the search records the reason and continues."""


class SearchStopped(AutotlError):
    """The search cannot go on: every backbone was dropped, or too many trials in a row failed.

    Finished trials are kept; the message says why, and rerunning resumes.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failure_line(exc: BaseException) -> str:
    """``Type: message`` in one line, for a failure whose cause is not autotl's (a plugin's, a library's).

    Keras marks the error inside its "Exception encountered when calling ..."
    report in bold, and TensorFlow opens a traced call's error with ``in user
    code:`` and a stack: the line said is the one with the error itself.
    """
    import re

    raw = str(exc)
    bold = re.search(r"\x1b\[1m(.+?)\x1b\[0m", raw, re.S)
    text = re.sub(r"\x1b\[[0-9;]*m", "", bold.group(1) if bold else raw)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # an introduction, then the error at the end
        lines = [line for line in lines if not line.startswith(("File ", "•", "Arguments"))][-1:]
    if not lines:
        return type(exc).__name__
    said = " ".join(lines[:1])
    return (
        said
        if re.match(r"\w+(Error|Exception|Warning): ", said)
        else f"{type(exc).__name__}: {said}"
    )
