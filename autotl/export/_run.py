"""The run folder an export reads: its study, the chosen trial, that trial's model file and the search's data again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from autotl.errors import UsageError
from autotl.rundir import open_run_study, read_run_json, reload_dataset, split_settings


@dataclass
class _Run:
    run_dir: Path
    storage_url: str
    study: Any
    trial: Any
    model_file: Path
    class_names: list[str]
    record: dict[str, Any]  # run.json
    space: dict[str, Any]
    data_summary: dict[str, Any]


def _weights_source(record: dict[str, Any], weights: Any) -> Any:
    """What the search's backbones were built from: ``weights`` if given, else what run.json records."""
    from autotl.weights import WeightsSource

    if weights is not None:
        return weights
    recorded = str(record.get("weights") or "")
    if recorded in ("none", "imagenet"):
        return WeightsSource(recorded)
    if recorded:
        return WeightsSource.parse(weights_dir=recorded)  # a folder that is gone is a one-line UsageError
    raise UsageError("the run folder does not record where the backbone weights came from; pass --weights-dir DIR or --weights none|imagenet")


def _model_file(run_dir: Path, study: Any, chosen: Any, complete: list[Any], plugins: Sequence[str], registry: Any,
                weights: Any, record: dict[str, Any], say: Callable[[str], None]) -> Path:
    """The chosen trial's ``.keras`` file: already there, the best model's copy, or assembled from its stored layers."""
    from autotl.search import BEST_MARKER, BEST_MODEL, MODEL_FILE, WEIGHTS_FILE, trial_model
    from autotl.weights import resolve_weights

    folder = run_dir / "trials" / f"{chosen.number:04d}"
    for path in (run_dir / str(chosen.user_attrs.get("model_path", "-")), folder / MODEL_FILE):
        if path.is_file():
            return path
    marker = run_dir / BEST_MARKER
    if (run_dir / BEST_MODEL).is_file() and marker.is_file() and json.loads(marker.read_text()).get("trial") == chosen.number:
        return run_dir / BEST_MODEL
    stored = run_dir / str(chosen.user_attrs.get("weights_path", f"trials/{chosen.number:04d}/{WEIGHTS_FILE}"))
    if not stored.is_file():
        kept = [t.number for t in complete if (run_dir / "trials" / f"{t.number:04d}").is_dir()]
        raise UsageError(f"trial {chosen.number} has no saved model (only the --keep-models best trials keep theirs); "
                         f"trials with a model: {', '.join(map(str, kept)) or 'none'} (or omit --trial for the best)")
    if registry is None:
        from autotl.registry import get_registry

        registry = get_registry(plugins)
    name = chosen.params["backbone"]
    if name not in registry.backbones:
        raise UsageError(f"trial {chosen.number} used backbone {name!r} from plugin {chosen.user_attrs.get('plugin', '?')!r}, "
                         "which is not installed here; install it or pass --plugin MODULE")
    source = _weights_source(record, weights)
    resolved = resolve_weights(registry.backbone(name), source)
    trained_on = chosen.user_attrs.get("weights_sha256")
    if trained_on and resolved.sha256 and trained_on != resolved.sha256:
        raise UsageError(f"trial {chosen.number} was trained on {name} weights with SHA-256 {trained_on[:12]}..., but {resolved.origin} "
                         f"has {resolved.sha256[:12]}...; pass the --weights-dir the search used")
    say(f"assembling trial {chosen.number}'s model from its stored layers")
    return trial_model(run_dir, study, chosen.number, registry, source)


def _open_run(run_dir: Path, trial: Optional[int], storage_url: Optional[str], study_name: str, plugins: Sequence[str] = (),
              registry: Any = None, weights: Any = None, say: Callable[[str], None] = lambda _m: None) -> _Run:
    import optuna

    from autotl.search import CLASSES_FILE

    study, url = open_run_study(run_dir, storage_url, study_name)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if trial is None:
        if not complete:
            raise UsageError(f"the study in {run_dir} has no complete trial yet; finish a search first")
        from autotl.search import best_trial

        chosen = best_trial(study)  # the trial best_model.keras holds
    else:
        found = [t for t in trials if t.number == trial]
        if not found:
            raise UsageError(f"no trial {trial} in the study ({len(trials)} trials, numbered 0..{len(trials) - 1}); pass one of them to --trial")
        chosen = found[0]
        if chosen.number not in {t.number for t in complete}:
            raise UsageError(f"trial {trial} is {chosen.state.name.lower()}, not complete; complete trials: {', '.join(str(t.number) for t in complete) or 'none'}")
    record = read_run_json(run_dir)
    names = study.user_attrs.get("class_names") or record.get("class_names")
    if not names and (run_dir / CLASSES_FILE).is_file():
        names = json.loads((run_dir / CLASSES_FILE).read_text())
    if not names:
        raise UsageError(f"cannot find the class names of {run_dir} (no classes.json, run.json or study attribute)")
    model_file = _model_file(run_dir, study, chosen, complete, plugins, registry, weights, record, say)
    return _Run(run_dir, url, study, chosen, model_file, [str(c) for c in names], record,
                study.user_attrs.get("space") or record.get("space") or {}, study.user_attrs.get("data") or {})


def _dataset(run: _Run, data: Optional[str], plugins: Sequence[str], notes: list[str]) -> tuple[Any, bool]:
    """``(dataset, same_data)``: the search's data set again (its validation split checks parity, its training split
    calibrates int8), and whether it is known to be the search's (its fingerprint is the recorded one; no recorded
    fingerprint means not known)."""
    val_fraction, seed = split_settings(run.data_summary, run.space)
    source = data or run.record.get("source") or run.data_summary.get("source")
    if not source:
        raise UsageError(f"{run.run_dir} does not record where its data came from; pass --data DATA_DIR (parity is checked on its validation images)")
    if not source.startswith("sample:") and not Path(source).is_dir():
        raise UsageError(f"the search's data folder {source} is gone; parity is checked on its validation images: pass --data DATA_DIR")
    ds = reload_dataset(source, val_fraction, seed, plugins)
    if list(ds.class_names) != run.class_names:
        raise UsageError(f"data at {source} has classes {list(ds.class_names)} but the model predicts {run.class_names}; pass the search's data with --data")
    expected = run.record.get("data_fingerprint") or run.data_summary.get("fingerprint")
    same_data = bool(expected) and ds.fingerprint == expected
    if expected and not same_data:
        notes.append(f"data at {source} does not match the search's (fingerprint differs: files changed, or the search split them "
                     f"otherwise than val_fraction={val_fraction:g}, seed={seed}); parity holds regardless, but the accuracy "
                     "re-measured here is not on the search's validation split")
    elif not expected:
        notes.append(f"the run records no fingerprint of its data, so the data at {source} is not known to be the search's; "
                     "parity holds regardless, but the search's score was not re-checked and the accuracy re-measured here "
                     "may not be on the search's validation split")
    return ds, same_data
