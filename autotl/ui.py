"""What a person sees in a terminal: progress, leaderboards, quiet imports and Ctrl-C, with rich.

The front end's helpers, shared by the command line and the extra workers'
processes; nothing below this layer prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from autotl.objective import Objectives, trial_metrics

__all__ = [
    "SearchProgress",
    "CountProgress",
    "leaderboard",
    "records_table",
    "console",
    "quiet_tensorflow",
    "CtrlC",
]


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probes, oneDNN notes) silenced.

    TensorFlow 2.21 logs those before ``TF_CPP_MIN_LOG_LEVEL`` takes effect,
    so stderr is closed at the file-descriptor level for the import only.
    """
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module="keras")
    if "tensorflow" in sys.modules:
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def console(stderr: bool = False) -> Any:
    """A rich console; lines are not wrapped when the output is not a terminal (logs, pipes)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)


class CtrlC:
    """Ctrl-C once: finish the running trial, then stop.  Twice: stop now (KeyboardInterrupt)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.count, self.previous = say, 0, None

    def __enter__(self) -> CtrlC:
        import signal

        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        self.say(
            "Ctrl-C: finishing the running trial, then stopping (press Ctrl-C again to stop now)"
        )

    def pressed(self) -> bool:
        return self.count > 0


class CountProgress:
    """A bar over a count (the data files a scan reads): done of total, rate and time left; gone when done."""

    def __init__(self, out: Any, what: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(what),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=out,
            transient=True,
        )
        self.task = self.progress.add_task(what, total=None)
        self.progress.start()

    def update(self, done: int, total: int) -> bool:
        """Move the bar; True once it is complete (and closed)."""
        self.progress.update(self.task, completed=done, total=total)
        if done >= total:
            self.progress.stop()
            return True
        return False


class SearchProgress:
    """A progress bar over trials whose description says where the current trial is."""

    def __init__(self, out: Any, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = out
        self.best: float | None = None
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self.task = self.progress.add_task("starting", total=total)

    def __enter__(self) -> SearchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, e: dict[str, Any]) -> None:
        if e.get("start"):
            self.progress.update(self.task, completed=e["done"], total=e["total"])
            if e["done"]:
                self.console.print(f"resuming: {e['done']} of {e['total']} trials already finished")
            return
        if "finished" in e:
            value = e.get("value")
            if value is not None and (self.best is None or value > self.best):
                self.best = value
            if e["state"] in ("COMPLETE", "PRUNED"):
                self.progress.advance(self.task)
            shown = f"{value:.4f}" if value is not None else "-"
            self.console.print(f"trial {e['finished']}: {e['state'].lower()}, val accuracy {shown}")
            return
        if "trial" not in e:
            if "status" in e:  # before the first trial: the feature cache being built
                self.progress.update(self.task, description=e["status"])
            return
        best = f"{self.best:.4f}" if self.best is not None else "-"
        if "failed" in e:
            where = f"failed: {e['failed']}"
        elif "status" in e:
            where = e["status"]
        else:
            where = f"phase {e.get('phase', '?')} epoch {e.get('epoch', '?')} val acc {e.get('val_accuracy', float('nan')):.3f}"
        self.progress.update(
            self.task,
            description=f"trial {e['trial']} | {e.get('backbone', '?')} | {where} | best {best}",
        )


COLUMNS = (
    "trial",
    "state",
    "backbone",
    "head",
    "dropout",
    "unfreeze",
    "finetune lr",
    "head stable",
)


def leaderboard(study: Any, top: int = 10) -> Any:
    """The best trials of a study as a rich table."""
    records = (
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "user_attrs": t.user_attrs,
            "values": t.values,
        }
        for t in study.get_trials(deepcopy=False)
    )
    return records_table(
        records, top, f"leaderboard: study {study.study_name}", Objectives.of_study(study)
    )


def records_table(
    records: Iterable[dict[str, Any]], top: int, title: str, objectives: Objectives | None = None
) -> Any:
    """The ``top`` best of ``records`` as a rich table, best first by ``objectives`` (unscored last).

    A record has ``number``, ``state`` (an Optuna state name), ``params`` and
    ``user_attrs`` (whose ``metrics`` the objectives read), as
    :func:`autotl.keras_tuner.run_keras_tuner_search` returns them.
    """
    from rich.table import Table

    objectives = objectives or Objectives.of()
    table = Table(title=title)
    for col in (*COLUMNS, *(o.short for o in objectives), "val loss", "time s"):
        table.add_column(col)
    rows = [(r, trial_metrics(r)) for r in records]
    rows.sort(key=lambda rm: objectives.key(rm[1], rm[0]["number"]))
    for r, metrics in rows[:top]:
        p, a = r["params"], r.get("user_attrs") or {}
        table.add_row(
            str(r["number"]),
            r["state"].lower(),
            str(p.get("backbone", "")),
            str(p.get("head_width", "")),
            f"{p['dropout']:.2f}" if "dropout" in p else "",
            str(p.get("unfreeze_blocks", "")),
            f"{p['finetune_lr']:.1e}" if "finetune_lr" in p else "",
            str(a["head_stable_epoch"]) if a.get("head_stable_epoch") is not None else "-",
            *(o.format(metrics.get(o.metric)) for o in objectives),
            f"{metrics['val_loss']:.4f}" if "val_loss" in metrics else "-",
            f"{a['seconds_total']:.0f}" if "seconds_total" in a else "-",
        )
    return table
