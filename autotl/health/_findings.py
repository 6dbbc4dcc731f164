"""What data health finds: one row per finding, the same in ``issues.csv``, ``health.json`` and the report."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Finding", "DataHealth", "KINDS", "PAIR_KINDS", "COLUMNS"]

#: Every kind of finding, in the order reports list them.
KINDS = (
    "leakage",  # the same picture (exact or near) in two splits: validation scores are inflated
    "exact_duplicate",  # the same bytes twice in one split
    "near_duplicate",  # a re-encoded, resized or lightly cropped copy in the same split
    "label_issue",  # cleanlab: the given label is likely wrong (``suggested`` is the likely one)
    "outlier",  # far from every other image (cleanlab's out-of-distribution score)
    "unreadable",  # the scan could not decode it (the manifest's reason): never used
    "tiny",  # far smaller than the data set's typical picture
    "odd_mode",  # a file format and colour mode few others have (a GIF placeholder among photos)
)
#: Kinds whose row names a second file (``other``): the twin that stays when ``path`` is left out.
PAIR_KINDS = ("leakage", "exact_duplicate", "near_duplicate")


@dataclass(frozen=True)
class Finding:
    """One finding.  ``path`` (relative to DATA_DIR) is the file to leave out if you act on it; ``score`` is
    in [0, 1], higher meaning surer or worse (a pair's similarity, 1 - a label's self-confidence, ...)."""

    path: str
    kind: str
    score: float
    other: str = ""  # the other file of a pair (kept)
    label: str = ""  # the class it is filed under
    suggested: str = ""  # label issues: the class the out-of-fold heads give it
    split: str = ""  # train, val or test
    other_split: str = ""
    detail: str = ""  # a few words: "exact", "near 0.97", the manifest's reason, "GIF P"


COLUMNS = tuple(f.name for f in fields(Finding))


@dataclass
class DataHealth:
    """A check of one data set: its findings (most certain first within each kind) and how they were found."""

    findings: list[Finding]
    source: str
    fingerprint: str  # the data fingerprint checked (with its exclusions, if any)
    backbone: str  # whose pooled features were compared
    images: dict[str, int]  # per split
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Findings per kind (every kind, zero included), in :data:`KINDS` order."""
        found = Counter(f.kind for f in self.findings)
        return {kind: found.get(kind, 0) for kind in KINDS}

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def leakage_by_splits(self) -> dict[str, int]:
        """Leaked pairs by the splits they join, e.g. ``{"train/val": 3, "train/test": 1}``."""
        order = {"train": 0, "val": 1, "test": 2}
        pairs = Counter(
            "/".join(sorted((f.split, f.other_split), key=lambda s: order.get(s, 3)))
            for f in self.of_kind("leakage")
        )
        return dict(sorted(pairs.items()))

    def leaked(self, split: str) -> set[str]:
        """Files of ``split`` that have a copy (exact or near) in another split."""
        out = set()
        for f in self.of_kind("leakage"):
            out |= {p for p, s in ((f.path, f.split), (f.other, f.other_split)) if s == split}
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for f in self.findings:
            writer.writerow(
                [round(v, 4) if isinstance(v, float) else v for v in asdict(f).values()]
            )
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "autotl-health-1",
            **{k: v for k, v in asdict(self).items() if k != "findings"},
            "counts": self.counts(),
            "leakage_by_splits": self.leakage_by_splits(),
            "findings": [asdict(f) for f in self.findings],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataHealth:
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in known and k != "findings"}
        return cls([Finding(**f) for f in data.get("findings") or []], **kept)

    @classmethod
    def load(cls, path: Path) -> DataHealth:
        return cls.from_json(json.loads(Path(path).read_text()))


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """In :data:`KINDS` order, the surest first within a kind (ties by path)."""
    rank = {k: i for i, k in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (rank[f.kind], -f.score, f.path, f.other))
