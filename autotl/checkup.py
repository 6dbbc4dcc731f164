"""``autotl doctor DATA`` and ``Run.data_issues()``: data health for a folder, or for a run's data.

::

    import autotl

    health = autotl.doctor("images/", out="runs/flowers")   # runs/flowers/health/issues.csv
    print(health.counts())                                    # {"leakage": 3, "label_issue": 12, ...}
    run = autotl.search("images/", out="runs/flowers-clean", exclude="runs/flowers/health/issues.csv")

The check reads one backbone's pooled features from the run folder's feature
cache, or adds them to it (the search on the same run folder then reuses
them), and writes ``RUN_DIR/health/issues.csv``, ``health.json`` and a page,
``report.html``.  The data folder itself is only read.  Before a search's first
trial, :func:`leakage_check` says how many images have a copy in another split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.errors import UsageError
from autotl.health import DataHealth, Settings, check_data
from autotl.run.folder import RunFolder, atomic_write

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset
    from autotl.engine.space import SearchSpace

__all__ = [
    "doctor",
    "load_data",
    "data_issues",
    "leakage_check",
    "write_health",
    "ISSUES",
    "HEALTH",
]

Event = Callable[[dict[str, Any]], None]
ISSUES, HEALTH, PAGE = "issues.csv", "health.json", "report.html"


def load_data(
    data: str,
    space: SearchSpace,
    out: Path,
    exclude: Optional[str] = None,
    decode_workers: Optional[int] = None,
    emit: Optional[Event] = None,
) -> Dataset:
    """A data folder as a search sees it: scanned with the run folder's manifest (only new or changed files
    are read), split as ``space`` says, its test split added, and the files ``exclude`` lists left out."""
    from autotl.data import dataset as data_mod
    from autotl.data.exclude import apply_exclusions, read_exclusions
    from autotl.data.holdout import add_test_split

    say = emit or (lambda _e: None)
    run = RunFolder(out)
    run.prepare()
    dataset = data_mod.load_folder(
        data,
        space.val_fraction,
        space.seed,
        manifest=run.manifest,
        decode_workers=decode_workers,
        progress=lambda done, total: say({"scan": "reading images", "done": done, "total": total}),
    )
    dataset = add_test_split(dataset, dataset.source, space.test_fraction, space.seed)
    if exclude:
        exclusion = read_exclusions(exclude, dataset.source)
        dataset = apply_exclusions(dataset, exclusion)
        removed = dataset.exclusions["removed"] if dataset.exclusions else {}
        say(
            {
                "info": f"excluding {len(exclusion.files)} file(s) listed in {exclude} "
                f"({', '.join(f'{n} {s}' for s, n in removed.items())}); the data folder is left as it is"
            }
        )
    return dataset


def exclude_of(
    exclude: Optional[str], space: SearchSpace, space_file: Optional[str]
) -> Optional[str]:
    """The exclusion list: ``exclude`` if given, else the space's ``exclude`` (relative to the space file)."""
    if exclude:
        return os.fspath(exclude)
    if not space.exclude:
        return None
    if space_file and not os.path.isabs(space.exclude):
        return os.path.join(os.path.dirname(os.path.abspath(space_file)), space.exclude)
    return space.exclude


def write_health(run: RunFolder, health: DataHealth) -> dict[str, Path]:
    """``issues.csv`` and ``health.json`` in ``RUN_DIR/health``, written atomically; their paths."""
    import json

    run.health_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": run.health_file(ISSUES), "json": run.health_file(HEALTH)}
    atomic_write(paths["csv"], health.to_csv())
    atomic_write(paths["json"], json.dumps(health.to_json(), indent=2) + "\n")
    return paths


def doctor(
    data: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    space: Any = "default",
    backbone: Optional[str] = None,
    weights_dir: str | os.PathLike[str] | None = None,
    weights: Optional[str] = None,
    plugins: tuple[str, ...] | list[str] = (),
    exclude: Optional[str] = None,
    decode_workers: Optional[int] = None,
    cache_dir: str | os.PathLike[str] | None = None,
    near: Optional[float] = None,
    folds: Optional[int] = None,
    on_event: Optional[Event] = None,
) -> DataHealth:
    """Check the data folder ``data`` and write ``out/health/issues.csv``, ``health.json`` and ``report.html``.

    ``out`` (default ``runs/<data name>``, a search's default run folder) holds
    the manifest and the feature cache, so a search there reuses both.  The
    split is the one ``space`` makes (``val_fraction``, ``seed``, ``test_fraction``).
    ``backbone`` defaults to the cheapest one with pretrained weights at hand.
    """
    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource
    from autotl.engine.space import SearchSpace, load_space
    from autotl.report import write_health_page

    emit = on_event or (lambda _e: None)
    space_obj, space_file = (space, None) if isinstance(space, SearchSpace) else load_space(space)
    settings = _settings(backbone, near, folds, space_obj.seed, cache_dir)
    registry = get_registry(list(plugins))
    source = WeightsSource.parse(os.fspath(weights_dir) if weights_dir else None, weights)
    if backbone is not None:
        registry.backbone(backbone)  # an unknown name: one line now
    folder = RunFolder(Path(out) if out else Path("runs") / Path(data).resolve().name)
    dataset = load_data(
        os.fspath(data),
        space_obj,
        folder.path,
        exclude_of(exclude, space_obj, str(space_file) if space_file else None),
        decode_workers,
        emit,
    )
    health = check_data(
        dataset=dataset,
        registry=registry,
        weights=source,
        cache_root=folder.cache_dir,
        manifest=folder.manifest,
        settings=settings,
        say=lambda m: emit({"status": m}),
    )
    write_health(folder, health)
    write_health_page(folder.health_file(PAGE), health)
    return health


def _settings(
    backbone: Optional[str],
    near: Optional[float],
    folds: Optional[int],
    seed: int,
    cache_dir: str | os.PathLike[str] | None,
) -> Settings:
    """The check's settings, the defaults filled in; a ``near`` or ``folds`` out of range is one line."""
    from autotl.health import FOLDS, NEAR

    if near is not None and not 0.0 < near < 1.0:
        raise UsageError(
            f"near must be between 0 and 1 (a share of the median neighbour distance), got {near}"
        )
    if folds is not None and folds < 2:
        raise UsageError(f"folds must be at least 2, got {folds}")
    return Settings(
        backbone,
        NEAR if near is None else near,
        FOLDS if folds is None else folds,
        seed,
        Path(cache_dir).resolve() if cache_dir else None,
    )


def data_issues(
    run: RunFolder,
    study: Any,
    registry: Registry,
    weights: WeightsSource,
    backbone: Optional[str] = None,
    refresh: bool = False,
) -> DataHealth:
    """The health of a run's data (with the files its search left out, left out): ``RUN_DIR/health/health.json``
    when it describes this data (and ``backbone``), else checked now with the run's best backbone's features."""
    from autotl.engine.space import SearchSpace
    from autotl.health import NEAR
    from autotl.scoring.objective import best_trial

    data = study.user_attrs.get("data") or {}
    stored = run.health_file(HEALTH)
    if not refresh and stored.is_file():
        try:
            health = DataHealth.load(stored)
        except (ValueError, TypeError, KeyError):
            health = None
        if (
            health
            and health.fingerprint == data.get("fingerprint")
            and backbone in (None, health.backbone)
        ):
            return health
    dataset, same = run.reload_dataset(registry=registry, study=study)
    if not same:
        raise UsageError(
            f"the data at {dataset.source} changed since the search (fingerprint {dataset.fingerprint[:12]}); "
            "its health cannot be checked as the search saw it: run `autotl doctor` on the folder instead"
        )
    space = SearchSpace.model_validate(study.user_attrs.get("space") or run.record().get("space"))
    if backbone is None:
        best = best_trial(study)
        backbone = str(best.params["backbone"]) if best is not None else space.backbones[0]
    settings = Settings(backbone, NEAR, seed=space.seed, augmentation=space.augmentation)
    health = check_data(dataset, registry, weights, run.cache_dir, run.manifest, settings)
    write_health(run, health)
    return health


def leakage_check(
    dataset: Dataset,
    registry: Registry,
    weights: WeightsSource,
    backbone: str,
    manifest: Optional[Path],
    augmentation: Any,
    seed: int,
) -> Callable[[Any], Optional[str]]:
    """``check(cache)``: before a search's first trial, the warning (or None) that images have copies in
    another split, from the hashes and the pooled features the search just cached (nothing is computed
    again but the test split's features)."""

    def check(cache: Any) -> Optional[str]:
        from autotl.backbones.weights import resolve_weights
        from autotl.health import GRAPHS, duplicates_only, pooled_features, subject_of
        from autotl.training.model import build_base

        if dataset.train.paths is None:
            return None
        spec = registry.backbone(backbone)
        resolved = resolve_weights(spec, weights)
        features = (
            None  # random weights: their features say nothing of likeness; the hashes still do
            if resolved.argument is None
            else pooled_features(
                dataset,
                spec,
                resolved,
                cache,
                lambda: build_base(spec, resolved, seed=seed),
                augmentation,
            )
        )
        leaks = [
            f
            for f in duplicates_only(
                subject_of(dataset, manifest), features, folder=Path(cache.root) / GRAPHS
            )
            if f.kind == "leakage"
        ]
        if not leaks:
            return None
        exact = sum(f.detail == "exact" for f in leaks)
        held = sorted(({f.other_split for f in leaks} | {f.split for f in leaks}) - {"train"})
        return (
            f"leakage: {len(leaks)} image(s) of {'/'.join(held) or 'one split'} have a copy in another split "
            f"({exact} exact, {len(leaks) - exact} near duplicates): validation scores are inflated; "
            f"`autotl doctor {dataset.source}` lists them and `--exclude` leaves them out"
        )

    return check


def safely(check: Callable[[Any], Optional[str]], emit: Event) -> Callable[[Any], None]:
    """``check`` whose warning is emitted; a check that fails (its backbone broken) says nothing: the search goes on
    and its failure policy speaks for the backbone."""

    def run(cache: Any) -> None:
        try:
            warning = check(cache)
        except UsageError:
            raise
        except Exception:
            # the backbone itself failed (its trials will say so, and the failure policy acts);
            # the report's data health section checks again with what the search kept
            warning = None
        if warning:
            emit({"warning": warning})

    return run
