"""Study reports: what a search found, how it got there, and where the best model comes from.

``write_report(run_dir)`` reads the study (read-only, so it is safe while a
search is still running), computes one data record -- a plain, JSON-able dict
-- and then renders that record three ways in the run folder:

* ``report.html``: one self-contained page (inline CSS, plots as inline
  base64 PNG, no script and no network reference of any kind);
* ``report.md``: for a terminal or a pull request, with its plots written as
  files in ``report_files/``;
* ``report.json``: the record itself, for tools.

As Optuna's visualisation module does, plots compute their data first (here:
the record) and then draw it, so every number in a picture is in the JSON too.

The modules: ``_rows`` (trials as leaderboard rows), ``_record`` (the data
record), ``_evaluate`` (the best model on the validation split), ``_engines``
(the Optuna and keras-tuner studies of one run compared), ``_figures``
(matplotlib), ``_render`` (HTML and Markdown) and ``_write`` (the files).
"""

from autotl.report._common import SCHEMA
from autotl.report._figures import render_figures
from autotl.report._html import render_html
from autotl.report._markdown import render_markdown
from autotl.report._record import build_record
from autotl.report._sections import SECTIONS
from autotl.report._write import write_report
from autotl.stats import wilson_interval

__all__ = [
    "write_report",
    "build_record",
    "wilson_interval",
    "SCHEMA",
    "render_figures",
    "render_html",
    "render_markdown",
    "SECTIONS",
]
