"""The documentation's shape, checked without building it: ``make docs`` builds it with --strict.

The README stays a front page (at most 250 lines) and the docs in ``docs/`` hold the rest, so what
can rot without a build is checked here: every relative link in the README and the pages names a
file that exists, and every page is reachable from ``mkdocs.yml``'s nav.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

DOCS = ROOT / "docs"
# [text](target) outside code: the target up to a space or a closing parenthesis
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def relative_links(text: str) -> list[str]:
    """The link targets of Markdown text that are not URLs or same-page anchors, code left out."""
    prose = CODE.sub("", FENCE.sub("", text))
    found = [target for target in LINK.findall(prose) if not target.startswith("#")]
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def nav_pages(nav: object) -> list[str]:
    """Every page path named anywhere in a mkdocs nav (lists of pages, titled pages and sections)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def mkdocs_nav() -> list[str]:
    # mkdocs.yml holds a !!python/name tag (superfences' mermaid fence): a loader that ignores tags
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    assert config["docs_dir"] == "docs"
    return nav_pages(config["nav"])


def test_the_readme_is_a_front_page_of_at_most_250_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move sections into docs/"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text
    assert "docs/getting-started.md" in text


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings, made as mkdocs' toc (and GitHub, for these headings) makes them."""
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M)
    slugs = (re.sub(r"[^\w\s-]", "", h.replace("`", "")).strip().lower() for h in headings)
    return {re.sub(r"[-\s]+", "-", s) for s in slugs}


@pytest.mark.parametrize(
    "source", [ROOT / "README.md", *pages()], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(source: Path) -> None:
    broken = []
    for target in relative_links(source.read_text()):
        path, _, anchor = target.partition("#")
        file = source.parent / path
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{source.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    nav = mkdocs_nav()
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert set(nav) == on_disk, (
        f"pages not in mkdocs.yml's nav: {sorted(on_disk - set(nav))}; "
        f"nav entries without a page: {sorted(set(nav) - on_disk)}"
    )
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_heading_anchors_are_made_as_mkdocs_makes_them() -> None:
    made = anchors(DOCS / "guide" / "mlflow.md")
    assert {"mlflow-tracking-and-the-model-registry", "optuna-dashboard"} <= made
    assert "measured-batching-reloads-memory" in anchors(DOCS / "guide" / "serving.md")


def test_the_link_check_sees_links_and_skips_code_and_urls() -> None:
    text = (
        "See [a](guide/a.md#x) and [b](https://x.org) and [c](#here).\n"
        "`[d](nope.md)`\n```\n[e](nope2.md)\n```\n[f](../g.md)"
    )
    assert relative_links(text) == ["guide/a.md#x", "../g.md"]


def test_the_api_reference_names_the_public_api() -> None:
    reference = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    objects = set(re.findall(r"^::: ([\w.]+)", reference, re.M))
    wanted = {
        "autotl.api.search",
        "autotl.Run",
        "autotl.doctor",
        "autotl.engine.options.SearchOptions",
        "autotl.spec",
        "autotl.hookspec",
        "autotl.testing",
        "autotl.export",
        "autotl.errors",
    }
    assert wanted <= objects, f"the API reference lacks {sorted(wanted - objects)}"


def test_sphinx_roles_become_code_spans_and_placeholders_stay_text() -> None:
    pytest.importorskip("griffe")  # the `docs` extra (`make docs` installs it)
    import importlib.util

    spec = importlib.util.spec_from_file_location("rst_roles", DOCS / "_griffe" / "rst_roles.py")
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    text = "Returns a :class:`Run` (see :func:`~autotl.api.search`); default runs/<data name>."
    assert roles.markdown_roles(text) == (
        "Returns a `Run` (see `autotl.api.search`); default runs/&lt;data name>."
    )
    assert roles.markdown_roles("``runs/<name>`` and `a<b`") == "``runs/<name>`` and `a<b`"
