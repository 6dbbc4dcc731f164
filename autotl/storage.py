"""How autotl opens a study's database: SQLite in the run folder by default, any SQLAlchemy URL otherwise.

Optuna's ``RDBStorage`` and autotl's lineage tables share one database, opened
with the same settings.  A SQLite file is put in write-ahead-log mode, so
readers (``autotl report``, other workers) never block the writer, and each
connection commits with ``synchronous=NORMAL``: in WAL mode a commit then
survives a crash or kill of the process (only an operating-system crash or
power cut can undo the last ones), at a fraction of the cost of a full sync
per commit, which a search makes dozens of times per trial.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Optional

__all__ = ["engine_kwargs", "sqlite_path", "use_wal"]


def sqlite_wait() -> float:
    """Seconds a SQLite connection waits for another process's write (``AUTOTL_SQLITE_TIMEOUT``)."""
    return float(os.environ.get("AUTOTL_SQLITE_TIMEOUT", 60))


def sqlite_path(url: str) -> Optional[str]:
    """The file of a ``sqlite:///`` URL, or ``None`` (another database, or SQLite in memory)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if not path or path == ":memory:" or path.startswith("file:") else path


def use_wal(url: str) -> None:
    """Put a SQLite file in write-ahead-log mode (the mode persists in the file)."""
    path = sqlite_path(url)
    if path is None or not Path(path).parent.is_dir():
        return
    con = sqlite3.connect(path, timeout=sqlite_wait())
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def engine_kwargs(url: str) -> dict[str, Any]:
    """``create_engine`` keyword arguments for ``url`` (Optuna's ``engine_kwargs``)."""
    if not url.startswith("sqlite"):
        return {"pool_pre_ping": True}  # a server may drop idle connections
    path, wait = sqlite_path(url), sqlite_wait()
    if path is None:
        return {"connect_args": {"timeout": wait}}

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(path, timeout=wait, check_same_thread=False)
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    return {"creator": connect}
