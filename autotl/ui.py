"""What a search shows on screen: one progress line and a leaderboard, with rich."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["SearchProgress", "leaderboard", "records_table"]


class SearchProgress:
    """A progress bar over trials whose description says where the current trial is."""

    def __init__(self, console: Any, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.best: float | None = None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
        self.task = self.progress.add_task("starting", total=total)

    def __enter__(self) -> "SearchProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, e: dict[str, Any]) -> None:
        if e.get("start"):
            self.progress.update(self.task, completed=e["done"])
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
        best = f"{self.best:.4f}" if self.best is not None else "-"
        where = e.get("status") or f"phase {e['phase']} epoch {e['epoch']} val acc {e['val_accuracy']:.3f}"
        if "failed" in e:
            where = f"failed: {e['failed']}"
        self.progress.update(self.task, description=f"trial {e['trial']} | {e['backbone']} | {where} | best {best}")


COLUMNS = ("trial", "state", "backbone", "head", "dropout", "unfreeze", "finetune lr", "head stable", "val acc", "val loss", "time s")


def leaderboard(study: Any, top: int = 10) -> Any:
    """The best trials as a rich table."""
    records = ({"number": t.number, "state": t.state.name, "params": t.params, "user_attrs": t.user_attrs,
                "val_accuracy": t.value, "val_loss": t.user_attrs.get("val_loss")} for t in study.get_trials(deepcopy=False))
    return records_table(records, top, f"leaderboard: study {study.study_name}")


def records_table(records: Iterable[dict[str, Any]], top: int, title: str) -> Any:
    """The ``top`` best of ``records`` as a rich table, best first (:func:`autotl.search.rank_key`; unscored last).

    A record has ``number``, ``state`` (an Optuna state name), ``params``, ``user_attrs``,
    ``val_accuracy`` and ``val_loss``, as :func:`autotl.keras_tuner.run_keras_tuner_search` returns them.
    """
    from rich.table import Table

    from autotl.search import rank_key

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col)
    rows = sorted(records, key=lambda r: (r["val_accuracy"] is None, *rank_key(r["val_accuracy"] or 0.0, r["val_loss"], r["number"])))
    for r in rows[:top]:
        p, a = r["params"], r.get("user_attrs") or {}
        table.add_row(
            str(r["number"]), r["state"].lower(), str(p.get("backbone", "")), str(p.get("head_width", "")),
            f"{p['dropout']:.2f}" if "dropout" in p else "", str(p.get("unfreeze_blocks", "")),
            f"{p['finetune_lr']:.1e}" if "finetune_lr" in p else "",
            str(a["head_stable_epoch"]) if a.get("head_stable_epoch") is not None else "-",
            f"{r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "-",
            f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-",
            f"{a['seconds_total']:.0f}" if "seconds_total" in a else "-",
        )
    return table
