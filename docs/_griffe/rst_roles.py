"""A griffe extension for the API reference: docstrings written for Sphinx, read as Markdown.

autotl's docstrings name other objects as Sphinx does (``:func:`search```, ``:class:`Run```), and
Markdown would print the role's name as text; a ``<name>`` placeholder in plain text (a pydantic
field's description) would be taken for an HTML tag and vanish. mkdocstrings-python loads this file
(mkdocs.yml, ``extensions``, after griffe-pydantic has turned descriptions into docstrings) and
rewrites each docstring once the package is read; the source stays as it is, so ``help()`` and
``autotl search --help`` are unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
CODE_SPAN = re.compile(r"(``.*?``|`[^`]*`)", re.S)


def markdown_roles(text: str) -> str:
    """Roles as code spans (``:func:`x``` as `` `x` ``), and ``<`` outside code spans escaped."""
    text = ROLE.sub(lambda m: f"`{m.group(1).lstrip('.')}`", text)
    parts = CODE_SPAN.split(text)  # odd indices are code spans
    return "".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias and isinstance(member, griffe.Object):
            yield from _objects(member)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = markdown_roles(obj.docstring.value)
