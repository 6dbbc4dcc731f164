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

The record (``report.json``, schema ``autotl-report-2``) names the study's
objectives and sampler; scores, their labels and which way is better come
from them.  The modules, in the order data flows: ``_rows`` (trials as
leaderboard rows), ``_search``, ``_lineage``, ``_evaluate`` (the best model on
the validation split), ``_engines`` (the Optuna and keras-tuner studies of
one run compared) and ``_ensemble`` (the stored ensemble selection) feed
``_record`` (the data record); ``_figures`` draws it
(matplotlib).  ``_sections`` lists the report's sections in order (each a
function from the record to a neutral ``_document``: ``_sections_found``,
``_sections_search``, ``_sections_model``, ``_sections_ensemble``), which ``_html`` and ``_markdown``
render; ``_write`` writes the files.
"""

from autotl.report._common import SCHEMA
from autotl.report._figures import render_figures
from autotl.report._html import render_html
from autotl.report._markdown import render_markdown
from autotl.report._record import build_record
from autotl.report._sections import SECTIONS
from autotl.report._write import write_health_page, write_report
from autotl.scoring.stats import wilson_interval

__all__ = [
    "write_report",
    "write_health_page",
    "build_record",
    "wilson_interval",
    "SCHEMA",
    "render_figures",
    "render_html",
    "render_markdown",
    "SECTIONS",
]
