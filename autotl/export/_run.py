"""The run an export reads: its study, the chosen trial, that trial's model file and the search's data again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.errors import UsageError
from autotl.run.folder import RunFolder
from autotl.scoring.objective import best_trial, complete_trials

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from autotl.backbones.registry import Registry
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import Dataset


@dataclass
class _Run:
    folder: RunFolder
    storage_url: str
    study: Study
    trial: FrozenTrial
    model_file: Path
    class_names: list[str]
    record: dict[str, Any]  # run.json
    space: dict[str, Any]
    data_summary: dict[str, Any]
    #: When the model exported is not ``trial``'s own (the run's ensemble, or TTA): what it is and must
    #: reproduce (``_variant.open_variant``); ``trial`` is then the best trial, or the one given.
    variant: Optional[dict[str, Any]] = None
    #: When ``trial``'s layers are a refit's (its own were not kept): what the refit measured (``refit.json``).
    refit: Optional[dict[str, Any]] = None

    def chosen_variant(self) -> dict[str, Any]:
        """``variant``, for the steps that run only when one is exported."""
        if self.variant is None:
            raise ValueError(f"no ensemble or TTA model is exported from {self.run_dir}")
        return self.variant

    @property
    def run_dir(self) -> Path:
        return self.folder.path


def _open_run(
    run_dir: Path,
    trial: Optional[int],
    storage_url: Optional[str],
    study_name: str,
    plugins: Sequence[str] = (),
    registry: Optional[Registry] = None,
    weights: Optional[WeightsSource] = None,
    say: Callable[[str], None] = lambda _m: None,
    data: Optional[Callable[[_Run], tuple[Dataset, bool]]] = None,
) -> _Run:
    """The run and its chosen trial with that trial's model file.  With ``data`` (the search's data set
    again, and whether it is the search's), a trial whose layers were not kept is refitted from the
    feature cache (:func:`autotl.engine.refit.refit_model`); without, it is refused (``LayersNotHere``)."""
    folder = RunFolder(run_dir)
    study, url = folder.open_study(storage_url, study_name)
    chosen = _chosen(study, trial, run_dir)
    record = folder.record()
    run = _Run(
        folder=folder,
        storage_url=url,
        study=study,
        trial=chosen,
        model_file=folder.trial_model(chosen.number),  # where it is assembled, replaced below
        class_names=folder.class_names(study),
        record=record,
        space=study.user_attrs.get("space") or record.get("space") or {},
        data_summary=study.user_attrs.get("data") or {},
    )
    from autotl.engine.refit import refit_model, stored_refit

    run.model_file = refit_model(
        folder,
        study,
        chosen,
        None if data is None else (lambda: data(run)),
        registry=registry,
        weights=weights,
        plugins=tuple(plugins),
        say=say,
    )
    refit = stored_refit(folder, chosen.number)
    run.refit = asdict(refit) if refit is not None else None
    return run


def _chosen(study: Study, trial: Optional[int], run_dir: Path) -> FrozenTrial:
    """Trial ``trial`` of ``study`` (default: the best), which must be complete."""
    complete = complete_trials(study)
    if trial is None:
        best = best_trial(study)  # the trial best_model.keras holds
        if best is None:
            raise UsageError(
                f"the study in {run_dir} has no complete trial yet; finish a search first"
            )
        return best
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == trial]
    if not found:
        raise UsageError(
            f"no trial {trial} in the study ({len(trials)} trials, numbered 0..{len(trials) - 1}); "
            "pass one of them to --trial"
        )
    if found[0].number not in {t.number for t in complete}:
        raise UsageError(
            f"trial {trial} is {found[0].state.name.lower()}, not complete; complete trials: "
            f"{', '.join(str(t.number) for t in complete) or 'none'}"
        )
    return found[0]


def _dataset(
    run: _Run, data: Optional[str], plugins: Sequence[str], notes: list[str]
) -> tuple[Any, bool]:
    """``(dataset, same_data)``: the search's data set again (its validation split checks parity, its training split
    calibrates int8), and whether it is known to be the search's (its fingerprint is the recorded one; no recorded
    fingerprint means not known)."""
    ds, same_data = run.folder.reload_dataset(data, plugins, study=run.study)
    if list(ds.class_names) != run.class_names:
        raise UsageError(
            f"data at {ds.source} has classes {list(ds.class_names)} but the model predicts {run.class_names}; "
            "pass the search's data with --data"
        )
    val_fraction, seed = run.folder.split_settings(run.data_summary, run.space)
    expected = run.record.get("data_fingerprint") or run.data_summary.get("fingerprint")
    if expected and not same_data:
        notes.append(
            f"data at {ds.source} does not match the search's (fingerprint differs: files changed, or the search split them "
            f"otherwise than val_fraction={val_fraction:g}, seed={seed}); parity holds regardless, but the accuracy "
            "re-measured here is not on the search's validation split"
        )
    elif not expected:
        notes.append(
            f"the run records no fingerprint of its data, so the data at {ds.source} is not known to be the search's; "
            "parity holds regardless, but the search's score was not re-checked and the accuracy re-measured here "
            "may not be on the search's validation split"
        )
    return ds, same_data
