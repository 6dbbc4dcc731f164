"""``write_report``: the record, its figures and its three renderings, written into the run folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from autotl.report._common import TOP_CURVES
from autotl.report._figures import render_figures
from autotl.report._html import render_html
from autotl.report._markdown import render_markdown
from autotl.report._record import build_record
from autotl.run.folder import RunFolder, atomic_write

if TYPE_CHECKING:
    from autotl.health import DataHealth


def write_report(
    run_dir: Path | str,
    storage_url: Optional[str] = None,
    study_name: str = "autotl",
    *,
    top_curves: int = TOP_CURVES,
    evaluate: bool = True,
) -> dict[str, Path]:
    """Write report.html, report.md (+ report_files/) and report.json into ``run_dir``; return their paths.

    Reads the study only, so it may run while a search is going on: running
    trials appear with the fields they have so far.  A run searched only with
    ``--engine keras-tuner`` has no study ``study_name``; its keras-tuner study
    (``<study_name>-keras-tuner``) is reported on instead.  When the storage
    holds both engines' studies, section 7 compares them.
    """
    run = RunFolder(run_dir)
    study, url = run.open_study(storage_url, study_name, any_engine=True)
    thumbs: dict[str, bytes] = {}
    record = build_record(run.path, study, url, thumbs, top_curves, evaluate)
    figs = render_figures(record)
    files = run.report_files
    record["figures"] = {name: f"{files.name}/{name}" for name in figs}
    files.mkdir(exist_ok=True)
    written = {**figs, **thumbs}
    for name, data in written.items():
        atomic_write(files / name, data)
    for old in files.glob("*.png"):  # plots of an earlier report that this one no longer has
        if old.name not in written:
            old.unlink(missing_ok=True)
    paths = {kind: run.report(kind) for kind in ("html", "md", "json")}
    atomic_write(paths["html"], render_html(record, figs, thumbs).encode("utf-8"))
    atomic_write(paths["md"], render_markdown(record, figs).encode("utf-8"))
    atomic_write(
        paths["json"], (json.dumps(record, indent=2, allow_nan=False) + "\n").encode("utf-8")
    )
    return paths


def write_health_page(path: Path, health: DataHealth) -> Path:
    """``autotl doctor``'s page: the data-health section alone, its pictures inline (one self-contained file)."""
    from autotl.report._document import build_document
    from autotl.report._health import health_of
    from autotl.report._html import html_page
    from autotl.report._sections_health import data_health

    images: dict[str, bytes] = {}
    record = {"health": health_of(health, images), "summary": {"data": {"source": health.source}}}
    doc = build_document(record, [data_health])
    import datetime as _dt

    when = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    doc = dataclasses.replace(
        doc,
        title=f"autotl doctor: {health.source}",
        subtitle=f"generated {when}; every finding is a row of issues.csv beside this page",
    )
    return atomic_write(Path(path), html_page(doc, images).encode("utf-8"))
