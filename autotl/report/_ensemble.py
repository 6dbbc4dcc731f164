"""The report's record of the run's ensemble: what ``autotl ensemble`` chose and measured, read back.

The report never computes an ensemble (it must stay cheap and safe while a
search runs); it shows the stored selection when there is one for this study.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Optional

from autotl.ensemble.record import load_selection
from autotl.run.folder import RunFolder

if TYPE_CHECKING:
    from optuna import Study


def ensemble_record(folder: RunFolder, study: Study) -> Optional[dict[str, Any]]:
    """The stored selection as plain data, or None when the run has none for this study."""
    selection = load_selection(folder)
    if selection is None or selection.study_name != study.study_name:
        return None
    variants = []
    for v in selection.variants:
        latency = v.latency or {}
        variants.append(
            {
                "name": v.name,
                "members": {str(n): w for n, w in v.members.items()},
                "tta": v.tta,
                "val": asdict(v.val),
                "test": asdict(v.test) if v.test else None,
                "latency_ms": latency.get("median_ms"),
                "latency": latency or None,
            }
        )
    return {
        "top_k": selection.top_k,
        "candidates": selection.candidates,
        "members": {str(n): w for n, w in selection.members.items()},
        "objective": selection.objective,
        "test": selection.test,
        "settings": selection.settings,
        "input_size": selection.input_size,
        "notes": selection.notes,
        "variants": variants,
        "file": folder.relative(folder.ensemble_selection),
    }
