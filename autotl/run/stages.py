"""What a study's stages decided, kept in the study's own database where every worker sees it.

One table, ``autotl_stages``, in the Optuna storage's database (SQLite in the run
folder, or the PostgreSQL that many workers share): one row per ``(study, key)``
holding a JSON value.  A row is written once: :func:`claim` inserts it unless
one is there and returns whichever is stored, so when two workers decide at
the same moment both go on with the first one's decision (the database's
unique key settles it).  Rows are written as soon as each result exists, so a
worker killed in the middle of a stage loses nothing that another finished.

Backbone screening (:mod:`autotl.engine.backbone_screen`) keeps one row per
backbone's sample result and one for the decision; the report reads them.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Optional

from autotl.run.storage import create_tables, sql_engine, sqlite_path

__all__ = ["STAGES_TABLE", "claim", "read", "read_all"]

STAGES_TABLE = "autotl_stages"
_table: Any = None


def _stages() -> Any:
    global _table
    if _table is None:
        from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, UniqueConstraint

        _table = Table(
            STAGES_TABLE,
            MetaData(),
            Column("study_name", String(512), nullable=False),
            Column("key", String(255), nullable=False),
            Column("value", JSON, nullable=False),
            Column("created", DateTime(timezone=True), nullable=False),
            UniqueConstraint("study_name", "key", name="autotl_stages_once"),
        )
    return _table


def claim(storage_url: str, study_name: str, key: str, value: Any) -> Any:
    """Store ``value`` under ``key`` unless a value is there already; the stored value either way."""
    from sqlalchemy.exc import IntegrityError

    table = _stages()
    engine = create_tables(storage_url, _stages().metadata)
    try:
        with engine.begin() as conn:
            conn.execute(
                table.insert().values(
                    study_name=study_name,
                    key=key,
                    value=value,
                    created=_dt.datetime.now(_dt.timezone.utc),
                )
            )
    except IntegrityError:  # someone stored it first: theirs holds
        pass
    found = read(storage_url, study_name, key)
    return value if found is None else found


def read(storage_url: str, study_name: str, key: str) -> Optional[Any]:
    """The value stored under ``key``, or None."""
    return read_all(storage_url, study_name).get(key)


def read_all(storage_url: str, study_name: str) -> dict[str, Any]:
    """Every key of ``study_name`` and its value (``{}`` when nothing was stored, or no table exists)."""
    from pathlib import Path

    from sqlalchemy import inspect, select

    path = sqlite_path(storage_url)
    if path is not None and not Path(path).exists():
        return {}
    table = _stages()
    engine = sql_engine(storage_url)
    if not inspect(engine).has_table(STAGES_TABLE):  # reading writes nothing
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.key, table.c.value).where(table.c.study_name == study_name)
        )
        return {r.key: r.value for r in rows}
