"""The data-health part of the record: counts per kind and the top findings of each, as thumbnails.

The check itself is :mod:`autotl.health` (run by ``autotl doctor`` and by
``Run.report()`` through ``Run.data_issues()``); the report reads what it
wrote in ``RUN_DIR/health/`` when it describes the study's data.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from autotl.health import KINDS, PAIR_KINDS, DataHealth
from autotl.report._common import REPORT_FILES
from autotl.run.folder import RunFolder

#: Findings of each kind shown as pictures.
TOP = 6


def _picture(source: str, rel: str, name: str, images: dict[str, bytes]) -> Optional[str]:
    """A thumbnail of ``source/rel`` under ``name`` in ``images``; None when the file does not decode."""
    from autotl.data.decoding import BadImage, decode_image
    from autotl.report._evaluate import _thumbnail

    try:
        images[name] = _thumbnail(decode_image(os.path.join(source, rel), 512))
    except (BadImage, OSError):
        return None
    return f"{REPORT_FILES}/{name}"


def _top(health: DataHealth, kind: str, images: dict[str, bytes]) -> list[dict[str, Any]]:
    out = []
    for k, f in enumerate(health.of_kind(kind)[:TOP]):
        row = {**f.__dict__, "thumbnail": None, "other_thumbnail": None}
        if kind != "unreadable":
            row["thumbnail"] = _picture(health.source, f.path, f"health_{kind}_{k:02d}.png", images)
        if kind in PAIR_KINDS:
            name = f"health_{kind}_{k:02d}_other.png"
            row["other_thumbnail"] = _picture(health.source, f.other, name, images)
        out.append(row)
    return out


def health_of(health: DataHealth, images: dict[str, bytes]) -> dict[str, Any]:
    """The record of one check: counts, leakage by splits, how it was made, and the top findings with pictures."""
    return {
        "source": health.source,
        "fingerprint": health.fingerprint,
        "backbone": health.backbone,
        "images": dict(health.images),
        "settings": dict(health.settings),
        "seconds": dict(health.seconds),
        "notes": list(health.notes),
        "counts": health.counts(),
        "leakage_by_splits": health.leakage_by_splits(),
        "leaked_val": sorted(health.leaked("val")),
        "top": {kind: _top(health, kind, images) for kind in KINDS if health.of_kind(kind)},
    }


def health_record(
    folder: RunFolder, study: Any, images: dict[str, bytes]
) -> Optional[dict[str, Any]]:
    """The run's data health, when ``RUN_DIR/health/health.json`` describes the study's data; else why it was
    not checked (``Run.report()`` says why in ``skipped.json``); None when nobody asked (no section)."""
    fingerprint = (study.user_attrs.get("data") or {}).get("fingerprint")
    path = folder.health_file("health.json")
    try:
        health = DataHealth.load(path) if path.is_file() else None
    except (ValueError, TypeError, KeyError):
        health = None
    if health is not None and health.fingerprint == fingerprint:
        return health_of(health, images)
    skipped = folder.health_file("skipped.json")
    try:
        why = json.loads(skipped.read_text()) if skipped.is_file() else {}
    except ValueError:
        why = {}
    if why.get("fingerprint") == fingerprint and why.get("reason"):
        return {"skipped": f"not checked: {why['reason']}"}
    return None
