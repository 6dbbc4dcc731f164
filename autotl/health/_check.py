"""A data set's health check, end to end: its images, their pooled features, then every kind of finding."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from autotl.health._duplicates import NEAR, exact_duplicates, near_duplicates
from autotl.health._findings import DataHealth, Finding, sort_findings
from autotl.health._labels import FOLDS, label_issues, out_of_fold
from autotl.health._neighbours import Neighbours, stored_nearest
from autotl.health._outliers import odd_modes, outliers, tiny, unreadable
from autotl.health._subject import Subject, subject_of

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset

__all__ = ["Settings", "check_data", "find_findings", "duplicates_only"]

Say = Callable[[str], None]
#: Beyond this many images, near duplicates and outliers are not searched: the neighbour search's time grows
#: with the square of the images (249 s at 100,000 on a loaded 2-core machine; its memory stays flat).
NEIGHBOUR_LIMIT = 100_000
#: Beside the feature cache's entries: the neighbour graphs checks found, by a hash of their features.
GRAPHS = "neighbours"


@dataclass(frozen=True)
class Settings:
    """How a check looks: the backbone (None: the cheapest with weights), the near-duplicate bound, the folds."""

    backbone: Optional[str] = None
    near: float = NEAR
    folds: int = FOLDS
    seed: int = 0
    cache_dir: Optional[Path] = None
    cache_dtype: str = "float16"
    augmentation: Any = None  # the search space's, so its cache entry is the one read
    neighbour_limit: int = NEIGHBOUR_LIMIT


def duplicates_only(
    subject: Subject,
    features: Optional[np.ndarray],
    near: float = NEAR,
    graph: Optional[Neighbours] = None,
    limit: int = NEIGHBOUR_LIMIT,
    folder: Optional[Path] = None,
) -> list[Finding]:
    """Exact and near duplicates, and leakage: what a search checks before its first trial.  Without
    ``features`` (a backbone with random weights, whose features say nothing of likeness), or with more
    than ``limit`` images, only the hashes are compared; ``graph`` is their nearest neighbours when found
    (else found, or read from ``folder`` where an earlier check stored it)."""
    if graph is None:
        graph = graph_of(features, limit, folder)
    near_found = [] if graph is None else near_duplicates(subject, graph, near)
    return sort_findings([*exact_duplicates(subject), *near_found])


def graph_of(
    features: Optional[np.ndarray], limit: int, folder: Optional[Path] = None
) -> Optional[Neighbours]:
    """The features' nearest-neighbour graph (kept in ``folder`` for the next check of the same features),
    or None without features or past ``limit`` images."""
    if features is None or len(features) > limit:
        return None
    return stored_nearest(features, folder)


def find_findings(
    subject: Subject,
    features: np.ndarray,
    settings: Settings,
    seconds: dict[str, float],
    notes: Optional[list[str]] = None,
    folder: Optional[Path] = None,
) -> list[Finding]:
    """Every kind of finding of ``subject``, whose pooled features are ``features``; the time of each step
    goes into ``seconds``, and a step left out is said in ``notes``.  The neighbour graph is read from
    ``folder`` when a check of the same features stored it there (else found and stored)."""
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    graph = graph_of(features, settings.neighbour_limit, folder)
    if graph is None and notes is not None:
        notes.append(
            f"near duplicates and outliers not searched: {len(features):,} images are over "
            f"{settings.neighbour_limit:,} (the search's time grows with their square); "
            "exact duplicates and leakage by hash are checked"
        )
    lap("neighbours")
    found = duplicates_only(subject, features, settings.near, graph, settings.neighbour_limit)
    lap("duplicates")
    probs = out_of_fold(
        features, subject.labels, len(subject.class_names), settings.folds, settings.seed
    )
    found += label_issues(subject, probs)
    lap("label_issues")
    found += [] if graph is None else outliers(subject, features, graph)
    found += unreadable(subject) + tiny(subject) + odd_modes(subject)
    lap("outliers")
    return sort_findings(found)


def check_data(
    dataset: Dataset,
    registry: Registry,
    weights: WeightsSource,
    cache_root: Path,
    manifest: Optional[Path] = None,
    settings: Settings = Settings(),
    say: Optional[Say] = None,
) -> DataHealth:
    """Check ``dataset`` (its train, val and test images) with one backbone's pooled features, read from or
    added to the feature cache in ``cache_root`` (``settings.cache_dir`` wins); ``manifest`` gives each file's
    hash, size and mode (files it lacks are read)."""
    from autotl.backbones.weights import resolve_weights
    from autotl.health._features import default_backbone, pooled_features
    from autotl.training.cache import FeatureCache
    from autotl.training.model import build_base

    start = time.perf_counter()
    seconds: dict[str, float] = {}
    subject = subject_of(dataset, manifest)
    seconds["facts"] = round(time.perf_counter() - start, 3)
    name = settings.backbone or default_backbone(
        registry, weights, Path(cache_root) / "backbone_costs.json"
    )
    spec = registry.backbone(name)
    resolved = resolve_weights(spec, weights)
    cache = FeatureCache(settings.cache_dir or cache_root, settings.cache_dtype)
    began = time.perf_counter()
    features = pooled_features(
        dataset=dataset,
        spec=spec,
        weights=resolved,
        cache=cache,
        base=lambda: build_base(spec, resolved, seed=settings.seed),
        augmentation=settings.augmentation,
        say=say,
    )
    seconds["features"] = round(time.perf_counter() - began, 3)
    notes: list[str] = []
    findings = find_findings(subject, features, settings, seconds, notes, cache.root / GRAPHS)
    seconds["total"] = round(time.perf_counter() - start, 3)
    return DataHealth(
        findings=findings,
        source=dataset.source,
        fingerprint=dataset.fingerprint,
        backbone=name,
        images=subject.counts(),
        settings={
            "near": settings.near,
            "folds": settings.folds,
            "seed": settings.seed,
            "weights": resolved.origin,
        },
        seconds=seconds,
        notes=notes,
    )
