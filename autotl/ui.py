"""What a person sees in a terminal: progress, leaderboards, quiet imports and Ctrl-C, with rich.

The front end's helpers, shared by the command line and the extra workers'
processes; nothing below this layer prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from types import FrameType

    from optuna import Study

    #: What ``signal.signal`` returns and takes back: a handler, SIG_DFL/SIG_IGN, or None.
    _Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]

from autotl._stderr import stderr_silenced
from autotl.scoring.objective import Objectives, trial_metrics

__all__ = [
    "SearchView",
    "SearchProgress",
    "CountProgress",
    "leaderboard",
    "records_table",
    "console",
    "quiet_tensorflow",
    "quiet_tensorflow_imports",
    "CtrlC",
    "health_table",
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
    with stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()
        # On a CPU without AVX-512 FP16, oneDNN says once a process, at the first float16 op, that
        # it falls back to Eigen: an error-level line TF_CPP_MIN_LOG_LEVEL does not always hold back
        # (it broke a command's one-line error once).  Said here, to nobody.
        with tf.device("/CPU:0"):
            tf.matmul(tf.ones([1, 1], tf.float16), tf.ones([1, 1], tf.float16))


class _QuietTensorFlowFinder:
    """Import hook: the first ``import tensorflow``, wherever it happens, runs through :func:`quiet_tensorflow`.

    Commands then import TensorFlow only when they need it (a bad argument is refused at once),
    and its start-up chatter never reaches the terminal.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        import importlib.abc
        import importlib.machinery
        import types

        sys.meta_path.remove(self)
        quiet_tensorflow()  # imports it, with stderr closed
        module = sys.modules["tensorflow"]

        class _Loaded(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
                return module

            def exec_module(self, module: types.ModuleType) -> None:
                return None

        return importlib.machinery.ModuleSpec(
            name, _Loaded(), origin=getattr(module, "__file__", None)
        )


def quiet_tensorflow_imports() -> None:
    """Make the process's first TensorFlow import quiet, whenever it comes (see ``_QuietTensorFlowFinder``)."""
    if "tensorflow" in sys.modules or any(
        isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


def console(stderr: bool = False) -> Any:
    """A rich console whose text lines are never wrapped (a warning or an error stays one line); tables
    fit the terminal, or 160 columns when the output is not one (logs, pipes)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(
        stderr=stderr, highlight=False, soft_wrap=True, width=None if stream.isatty() else 160
    )


class CtrlC:
    """Ctrl-C once: finish the running trial (a feature cache build stops at its next batch), then stop.
    Twice: stop now (KeyboardInterrupt)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.count = say, 0
        self.previous: _Handler = None

    def __enter__(self) -> CtrlC:
        import signal

        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        self.say(
            "Ctrl-C: finishing the running trial, then stopping (a feature cache being built stops at its "
            "next batch and is built again on resume; press Ctrl-C again to stop now)"
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
        """Draw one progress event; any field may be missing (a trial can fail before its first epoch)."""
        if e.get("start"):
            done, total = e.get("done", 0), e.get("total")
            self.progress.update(self.task, completed=done, total=total)
            if done:
                self.console.print(f"resuming: {done} of {total} trials already finished")
            return
        if "finished" in e:
            self._finished(e)
            return
        if "trial" not in e:
            if "status" in e:  # before the first trial: the feature cache being built
                self.progress.update(self.task, description=e["status"])
            return
        best = f"{self.best:.4f}" if self.best is not None else "-"
        if "failed" in e:
            where = f"failed: {e['failed']}"
        elif "status" in e:
            where = str(e["status"])
        else:
            acc = e.get("val_accuracy")
            shown = f"{acc:.3f}" if isinstance(acc, (int, float)) else "-"
            where = f"phase {e.get('phase', '?')} epoch {e.get('epoch', '?')} val acc {shown}"
        self.progress.update(
            self.task,
            description=f"trial {e['trial']} | {e.get('backbone', '?')} | {where} | best {best}",
        )

    def _finished(self, e: dict[str, Any]) -> None:
        """One line per finished trial; a failed one says why (the study and the report keep the reason too)."""
        value, state = e.get("value"), str(e.get("state", "?"))
        if isinstance(value, (int, float)) and (self.best is None or value > self.best):
            self.best = value
        if state in ("COMPLETE", "PRUNED"):
            self.progress.advance(self.task)
        if state == "FAIL":
            self.console.print(
                f"trial {e['finished']}: failed: {e.get('reason') or 'no reason recorded'}"
            )
            return
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        self.console.print(f"trial {e['finished']}: {state.lower()}, val accuracy {shown}")


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


class SearchView:
    """What ``autotl search`` shows of a search's events: the scan's bar, warnings and notes, the
    trials' bar, keras-tuner's leaderboard.  Call it with each event; ``close()`` ends the bars."""

    def __init__(self, out: Any, err: Any) -> None:
        self.out, self.err = out, err
        self.progress: list[SearchProgress] = []
        self.scans: list[CountProgress] = []

    def __call__(self, e: dict[str, Any]) -> None:
        if "scan" in e:  # the data files being read, before anything else
            if not self.scans:
                self.scans.append(CountProgress(self.err, e["scan"]))
            if self.scans[-1].update(e["done"], e["total"]):
                self.scans.clear()
        elif "warning" in e:
            self.err.print(f"[yellow]warning:[/] {e['warning']}")
        elif "info" in e:
            self.out.print(e["info"])
        elif "records" in e:
            self.out.print(records_table(e["records"], 10, e["title"]))
        elif e.get("start"):
            self.progress.append(SearchProgress(self.out, e["total"]).__enter__())
            self.progress[-1].event(e)
        elif self.progress:
            self.progress[-1].event(e)

    def close(self) -> None:
        for bar in self.progress:
            bar.__exit__(None, None, None)


def leaderboard(study: Study, top: int = 10) -> Any:
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
    :func:`autotl.engine.keras_tuner.run_keras_tuner_search` returns them.
    """
    from rich.table import Table

    objectives = objectives or Objectives.of()
    table = Table(title=title)
    for col in (*COLUMNS, *(o.short for o in objectives), "val loss", "time s"):
        table.add_column(col)
    rows = [(r, trial_metrics(r)) for r in records]
    keys = objectives.keys([(m, r["number"]) for r, m in rows])  # with Pareto levels
    rows = [rm for _, rm in sorted(zip(keys, rows), key=lambda kr: kr[0])]
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


def ensemble_table(selection: Any) -> Any:
    """``autotl ensemble``'s answer: each model compared (the best single model, the ensemble, with TTA), its
    members, validation and test accuracy with 95% Wilson intervals, and TFLite latency."""
    from rich.table import Table

    def acc(s: Any) -> str:
        return "-" if s is None else f"{s.accuracy:.4f} ({s.ci95[0]:.3f}-{s.ci95[1]:.3f})"

    refitted = {
        int(n) for n, r in (getattr(selection, "refits", None) or {}).items() if r["passed"]
    }

    def trial(n: int) -> str:
        return f"{n} (refitted)" if n in refitted else str(n)

    members = ", ".join(f"{trial(n)} x{w:.2f}" for n, w in selection.members.items())
    table = Table(
        title=f"ensemble of the top {selection.top_k} trials by {selection.objective}: {members}"
    )
    for col in ("model", "trials", "val acc (95% CI)", "test acc (95% CI)", "TFLite ms (1 thread)"):
        table.add_column(col)
    for v in selection.variants:
        ms = (v.latency or {}).get("median_ms")
        table.add_row(
            v.name,
            ", ".join(map(trial, v.members)),
            acc(v.val),
            acc(v.test),
            "-" if ms is None else f"{ms:.2f}",
        )
    return table


def health_table(health: Any, top: int = 5) -> Any:
    """``autotl doctor``'s answer: findings per kind, and the surest ``top`` of each."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"data health: {sum(health.images.values())} images, {health.backbone} features, "
        f"{health.seconds.get('total', 0):.1f} s"
    )
    for col in ("kind", "found", "surest findings"):
        table.add_column(col, justify="right" if col == "found" else "left")
    for kind, count in health.counts().items():
        lines = [escape(_finding_line(f)) for f in health.of_kind(kind)[:top]]
        more = count - len(lines)
        table.add_row(
            kind, str(count), "\n".join(lines + ([f"... {more} more"] if more > 0 else []))
        )
    return table


def _finding_line(f: Any) -> str:
    if f.other:
        return f"{f.path} ({f.split}) = {f.other} ({f.other_split}), {f.detail}"
    if f.suggested:
        return f"{f.path}: {f.label} -> {f.suggested} ({f.score:.2f})"
    return f"{f.path}: {f.detail}"
