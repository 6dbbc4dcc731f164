"""The Pareto front's data: with two or more objectives, which complete trials no other beats on all of them.

Computed from the leaderboard rows with the study's one order
(:meth:`autotl.scoring.objective.Objectives.keys`): a point is on the front when it
meets the constraints and is Pareto level 0 among the trials that do.  The
plot takes the first objective as y and the second as x.
"""

from __future__ import annotations

from typing import Any, Optional

from autotl.scoring.objective import Objectives

FRONT_NOTE = (
    "A trial is on the Pareto front when it meets the constraints and no other such trial is at least "
    "as good on every objective and better on one. The single best trial is the front's best on the "
    'first objective; `autotl export RUN_DIR --pick "NAME<=VALUE"` exports the best trial that meets '
    "a condition."
)


def pareto_record(rows: list[dict[str, Any]], objectives: Objectives) -> Optional[dict[str, Any]]:
    """Every complete trial with all objectives scored, whether it meets the constraints and is on the front."""
    if len(objectives) < 2:
        return None
    scored = [
        r
        for r in rows
        if r["state"] == "complete" and all(r["values"].get(o.name) is not None for o in objectives)
    ]
    keys = objectives.keys([(r["metrics"], r["number"]) for r in scored])
    points = [
        {
            "number": r["number"],
            "backbone": r["backbone"],
            "head_width": r["head_width"],
            "values": dict(r["values"]),
            "feasible": k[0] == 0,
            "front": k[0] == 0 and k[1] == 0,
            "broken": objectives.broken(r["metrics"]),
        }
        for r, k in sorted(zip(scored, keys), key=lambda rk: rk[1])
    ]
    return {
        "y": objectives.items[0].name,
        "x": objectives.items[1].name,
        "points": points,
        "front": [p["number"] for p in points if p["front"]],
        "constraints": [
            {"name": c.objective.name, "bound": c.bound, "text": c.describe()}
            for c in objectives.constraints
        ],
        "note": FRONT_NOTE,
    }
