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
from typing import Any, Optional

__all__ = ["engine_kwargs", "sqlite_path"]


def sqlite_wait() -> float:
    """Seconds a SQLite connection waits for another process's write (``AUTOTL_SQLITE_TIMEOUT``)."""
    return float(os.environ.get("AUTOTL_SQLITE_TIMEOUT", 60))


def sqlite_path(url: str) -> Optional[str]:
    """The file of a SQLite URL (any driver), or ``None`` (another database, SQLite in memory, or not a URL)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 -- not a URL: the caller reports it
        return None
    db = parsed.database
    return db if parsed.get_backend_name() == "sqlite" and db and db != ":memory:" and not db.startswith("file:") else None


def engine_kwargs(url: str) -> dict[str, Any]:
    """``create_engine`` keyword arguments for ``url`` (Optuna's ``engine_kwargs``)."""
    if not url.startswith("sqlite"):
        return {"pool_pre_ping": True}  # a server may drop idle connections
    path, wait = sqlite_path(url), sqlite_wait()
    if path is None:
        return {"connect_args": {"timeout": wait}}

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(path, timeout=wait, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")  # persists in the file; a no-op once set
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    return {"creator": connect}
