"""What ``autotl ensemble`` chose and measured, as plain records, and their file (``ensemble/selection.json``).

:mod:`autotl.ensemble` makes them; export and the report read them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotl.errors import UsageError
from autotl.run.folder import RunFolder
from autotl.scoring.metrics import log_loss
from autotl.scoring.stats import wilson_interval

__all__ = [
    "BEST",
    "ENSEMBLE",
    "SCHEMA",
    "Score",
    "Variant",
    "EnsembleSelection",
    "variant_name",
    "save_selection",
    "load_selection",
]

BEST, ENSEMBLE = "best", "ensemble"
SCHEMA = "autotl-ensemble-1"


@dataclass(frozen=True)
class Score:
    """A model's accuracy on one set of images, with its 95% Wilson interval, and its log loss."""

    images: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    loss: float

    @classmethod
    def of(cls, probs: np.ndarray, labels: np.ndarray) -> Score:
        correct = int((probs.argmax(1) == labels).sum())
        lo, hi = wilson_interval(correct, len(labels))
        return cls(len(labels), correct, correct / len(labels), (lo, hi), log_loss(probs, labels))


@dataclass
class Variant:
    """One model compared: the best single trial or the ensemble, with or without test-time augmentation."""

    name: str  # "best", "best+flip", "ensemble", "ensemble+flip"
    members: dict[int, float]  # trial number -> weight
    tta: Optional[str]
    val: Score
    test: Optional[Score] = None
    model: Optional[str] = None  # its .keras file, relative to the run folder, once built
    latency: Optional[dict[str, Any]] = None  # autotl.export.measure_tflite_latency of its TFLite
    input_size: Optional[tuple[int, int]] = None  # what its model resizes images to

    @property
    def base(self) -> str:
        return BEST if self.name.startswith(BEST) else ENSEMBLE


@dataclass
class EnsembleSelection:
    """What ``autotl ensemble`` chose and measured (``ensemble/selection.json``)."""

    top_k: int
    candidates: list[int]  # the trials selection chose from, best first
    members: dict[int, float]  # the ensemble: trial number -> weight (counts / total)
    counts: dict[int, int]
    objective: str  # the metric selection maximised on the validation images
    variants: list[Variant]
    test: Optional[dict[str, Any]]  # {"source", "images"}, or None when there is no test split
    settings: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    study_name: str = "autotl"
    data_fingerprint: Optional[str] = None
    input_size: Optional[tuple[int, int]] = None  # the ensemble's: its largest candidate's
    # candidates whose layers were not kept, refitted (autotl.engine.refit.Refit as a dict), by trial
    refits: dict[int, dict[str, Any]] = field(default_factory=dict)

    def variant(self, name: str) -> Optional[Variant]:
        return next((v for v in self.variants if v.name == name), None)

    def named(self, name: str) -> Variant:
        """Variant ``name``, or one line saying which there are."""
        v = self.variant(name)
        if v is None:
            raise UsageError(
                f"the run's ensemble has no variant {name!r}; it has {', '.join(x.name for x in self.variants)} "
                "(run `autotl ensemble RUN_DIR --tta flip` to measure test-time augmentation)"
            )
        return v

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleSelection:
        def score(s: Any) -> Optional[Score]:
            return None if s is None else Score(**{**s, "ci95": tuple(s["ci95"])})

        variants = [
            Variant(
                **{
                    **v,
                    "input_size": tuple(v["input_size"]) if v.get("input_size") else None,
                    "members": _int_keys(v["members"]),
                    "val": score(v["val"]),
                    "test": score(v.get("test")),
                }
            )
            for v in d["variants"]
        ]
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if fields.get("input_size"):
            fields["input_size"] = tuple(fields["input_size"])
        return cls(
            **{
                **fields,
                "members": _int_keys(d["members"]),
                "counts": _int_keys(d["counts"]),
                "refits": _int_keys(d.get("refits") or {}),
                "variants": variants,
            }
        )


def _int_keys(d: dict[Any, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def variant_name(base: str, tta: Optional[str]) -> str:
    return f"{base}+{tta}" if tta else base


def save_selection(run: RunFolder, selection: EnsembleSelection) -> Path:
    """Write ``selection`` to the run folder (atomically, as every run-folder file)."""
    run.ensemble_dir.mkdir(parents=True, exist_ok=True)
    return run.write_json(run.ensemble_selection, selection.to_dict())


def load_selection(run: RunFolder) -> Optional[EnsembleSelection]:
    """The stored selection, or None when there is none (or it is unreadable, or of another schema)."""
    try:
        d = json.loads(run.ensemble_selection.read_text())
        return EnsembleSelection.from_dict(d) if d.get("schema") == SCHEMA else None
    except (OSError, ValueError, TypeError, KeyError):
        return None
