"""``autotl export --trial N`` of a trial whose layers were not kept: what the refit costs beside an export.

A search keeps the layers of its ``--keep-models`` best trials only; an export
of another trial refits it from the feature cache first
(:func:`autotl.engine.refit.refit_model`).  On a real search (the data sets,
space and hold-out of ``benchmarks/ensemble.py``) that kept only its best
trial, this measures side by side, in one run:

1. the export of the kept best trial (the reference: nothing to train);
2. the first export of each of ``--exports`` trials that were not kept
   (refit, then the same export), and whether it reproduced the search's
   validation score (the export's parity check);
3. the second export of the same trial (the stored refit reused: nothing trained);
4. the trial's own training time in the search, beside its refit's.

    python benchmarks/export_refit.py [--data hymenoptera] [--trials 8] [--exports 3] [--seed 0]

Writes ``export-refit-<data>-seed<seed>.json`` in ``--out``; rerunning with the
same ``--out`` reuses the search (and forgets earlier refits first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ensemble import SHARED, search


def _timed_export(run, trial: int, out: Path, lines: list[str]) -> tuple[float, object]:
    """Seconds of ``Run.export`` of ``trial`` (Keras and float TFLite) into ``out``, and its result."""
    start = time.perf_counter()
    result = run.export("keras,tflite", out, trial=trial, on_event=lines.append)
    return time.perf_counter() - start, result


def _row(run, trial, root: Path, kept: bool) -> dict:
    """One trial exported twice: seconds, refit seconds and whether the score was reproduced each time."""
    from autotl.scoring.objective import trial_metrics

    row = {"trial": trial.number, "kept": kept, "backbone": trial.params["backbone"]}
    row["search_seconds"] = round(float(trial.duration.total_seconds()), 1)
    for when in ("first", "second"):
        lines: list[str] = []
        seconds, result = _timed_export(run, trial.number, root / f"export-{trial.number}", lines)
        refitted_now = any("refitting trial" in line for line in lines)
        refit = (result.parity.get("refit") or {}) if refitted_now else {}
        row[when] = {
            "seconds": round(seconds, 1),
            "refitted_now": refitted_now,
            "refit_seconds": refit.get("seconds", 0),
            "reproduced": bool(result.parity["search_score"].get("passed")),
            "accuracy": result.parity["search_score"].get("accuracy"),
        }
    row["recorded_accuracy"] = trial_metrics(trial)["val_accuracy"]
    return row


def run_one(name: str, args: argparse.Namespace) -> dict:
    from autotl.scoring.objective import ranked_trials

    args.top_k = 1  # keep the best trial's layers only: every other one is refitted
    root, run, _test, searched = search(name, args)
    ranked = ranked_trials(run.study)
    for t in ranked[1:]:
        run.folder.drop_trial(t.number)  # a rerun forgets earlier refits
    rows = [_row(run, ranked[0], root, kept=True)]
    rows += [_row(run, t, root, kept=False) for t in ranked[1 : 1 + args.exports]]
    result = {"data": name, "seed": args.seed, "trials": args.trials, "searched_s": searched}
    result["rows"] = rows
    (Path(args.out) / f"export-refit-{name}-seed{args.seed}.json").write_text(
        json.dumps(result, indent=2)
    )
    _print(result)
    return result


def _print(r: dict) -> None:
    print(f"\n{r['data']} seed {r['seed']}: {r['trials']} trials, the best kept")
    print(
        "trial | backbone | kept | trained in search | 1st export (refit) | 2nd export | reproduced"
    )
    for row in r["rows"]:
        first, second = row["first"], row["second"]
        print(
            f"{row['trial']} | {row['backbone']} | {row['kept']} | {row['search_seconds']} s | "
            f"{first['seconds']} s ({first['refit_seconds'] or 0} s) | {second['seconds']} s "
            f"(refitted again: {second['refitted_now']}) | {first['reproduced'] and second['reproduced']}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="hymenoptera")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--exports", type=int, default=3, help="trials not kept to export (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", default=str(SHARED / "weights"))
    p.add_argument("--out", default="/tmp/autotl-bench-export-refit")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.data.split(","):
        run_one(name.strip(), args)


if __name__ == "__main__":
    main()
