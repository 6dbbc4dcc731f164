"""The report's sections, in order: each a function from the record to a ``Section`` (or ``None``).

Adding a section is one function (in the module of its kind) and one entry in
:data:`SECTIONS`; both renderings pick it up.  A section with nothing to say
(no engines to compare, a record without that part) is left out and the rest
are numbered from 1.
"""

from __future__ import annotations

from autotl.report._document import SectionFn
from autotl.report._sections_ensemble import ensemble
from autotl.report._sections_found import leaderboard, pareto_front, summary
from autotl.report._sections_health import data_health
from autotl.report._sections_model import evaluation, lineage
from autotl.report._sections_search import (
    backbone_screening,
    engines_compared,
    learning_curves,
    the_search,
)

#: The report, in order.  Sections with nothing to say are left out and the rest numbered from 1.
SECTIONS: list[SectionFn] = [
    summary,
    leaderboard,
    pareto_front,
    learning_curves,
    the_search,
    backbone_screening,
    evaluation,
    data_health,
    ensemble,
    lineage,
    engines_compared,
]
