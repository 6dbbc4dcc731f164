"""How autotl opens a study and its database: SQLite in the run folder by default, any SQLAlchemy URL otherwise.

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
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, Optional

from autotl.errors import AutotlError, UsageError, first_line
from autotl.scoring.objective import Direction

__all__ = [
    "engine_kwargs",
    "sql_engine",
    "create_tables",
    "sqlite_path",
    "check_database",
    "open_study",
    "load_study",
    "study_names",
    "safe_url",
    "trial_seconds",
]

#: Tables every Optuna RDB storage has: a SQLite file without them is another program's.
OPTUNA_TABLES = ("studies", "trials", "version_info")


def sqlite_wait() -> float:
    """Seconds a SQLite connection waits for another process's write (``AUTOTL_SQLITE_TIMEOUT``)."""
    return float(os.environ.get("AUTOTL_SQLITE_TIMEOUT", 60))


def sqlite_path(url: str) -> Optional[str]:
    """The file of a SQLite URL (any driver), or ``None`` (another database, SQLite in memory, or not a URL)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: the caller reports it
        return None
    db = parsed.database
    return (
        db
        if parsed.get_backend_name() == "sqlite"
        and db
        and db != ":memory:"
        and not db.startswith("file:")
        else None
    )


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


def check_database(storage_url: str, create: bool = False, accept: Sequence[str] = ()) -> None:
    """Refuse, in one line, a SQLite file that is damaged, empty (when reading) or another program's.

    Optuna creates its tables in whatever database it is given: opening a
    file of another program's would write into it, and opening an empty file
    to read a report would leave tables behind.  Checked read-only, first.
    ``create`` allows a new or empty file (a search starting); a file with any
    table of ``accept`` (autotl's lineage tables, for ``lineage``) is not
    foreign either.  Other databases (PostgreSQL, ...) are left to Optuna.
    """
    path = sqlite_path(storage_url)
    if path is None or (create and not os.path.exists(path)):
        return
    if not os.path.isfile(path):
        raise UsageError(
            f"no study database at {path}; run `autotl search` first, or pass the run folder of one"
        )
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=sqlite_wait())
        try:
            tables = {
                row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise UsageError(
            f"{path} is damaged or not a SQLite database ({first_line(exc)}); restore it from a copy, "
            "or pass another --out"
        ) from None
    if not tables:
        if create:
            return
        raise UsageError(
            f"{path} is an empty database: no study was ever saved in it; run `autotl search` first"
        )
    if not all(t in tables for t in OPTUNA_TABLES) and not tables.intersection(accept):
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UsageError(
            f"{path} is another program's database (tables {shown}), not an Optuna study; autotl does not "
            "write into it: pass another --out"
        )


#: What losing the race to create a new storage's tables looks like (SQLite, PostgreSQL): try again.
_CREATION_RACE = (
    "already exists",
    "UNIQUE constraint failed",
    "duplicate key",
    "database is locked",
)


def _storage(storage_url: str, heartbeat: Optional[int]) -> Any:
    """Optuna's ``RDBStorage`` for ``storage_url``, with heartbeats (and retries of a dead worker's trial) if asked."""
    import time

    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if "://" not in storage_url:
        raise ValueError("not a URL")
    beats: dict[str, Any] = {}
    if heartbeat:
        beats = {
            "heartbeat_interval": heartbeat,
            "grace_period": 4 * heartbeat,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=3),
        }
    for attempt in range(
        5
    ):  # processes starting together race to create the tables: the loser retries
        try:
            return RDBStorage(storage_url, engine_kwargs=engine_kwargs(storage_url), **beats)
        except Exception as exc:
            if not any(s in str(exc) for s in _CREATION_RACE) or attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(
        optuna.logging.ERROR
    )  # autotl says what failed, once, in its own words
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(
    storage_url: str,
    study_name: str,
    *,
    directions: Sequence[Direction] = ("maximize",),
    sampler: Any = None,
    pruner: Any = None,
    heartbeat: Optional[int] = None,
) -> Any:
    """Create or resume the study ``study_name``; a storage that cannot be opened is a one-line UsageError.

    With ``heartbeat`` (seconds), a worker's running trial sends heartbeats;
    one silent for four of them is failed and queued again (Optuna's
    ``RetryHeartbeatStaleTrialCallback``), so a killed worker loses nothing.
    A study created with other directions is refused.
    """
    import optuna

    _quiet_optuna()
    check_database(storage_url, create=True)
    with _one_line(storage_url, study_name):
        study = optuna.create_study(
            storage=_storage(storage_url, heartbeat),
            study_name=study_name,
            directions=list(directions),
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    have = [d.name.lower() for d in study.directions]
    if have != list(directions):
        raise UsageError(
            f"study {study_name!r} in {safe_url(storage_url)} optimises {have}, not {list(directions)}; "
            "pass another --out (or --study-name) for other objectives"
        )
    return study


def load_study(storage_url: str, study_name: str) -> Any:
    """An existing study, read-only in spirit (reports, exports): nothing is created, nothing sampled.

    A SQLite file that is not Optuna's is refused before Optuna opens it (it
    would add its tables to another program's database).
    """
    import optuna

    _quiet_optuna()
    check_database(storage_url)
    with _one_line(storage_url, study_name):
        return optuna.load_study(storage=_storage(storage_url, None), study_name=study_name)


def study_names(storage_url: str) -> list[str]:
    """Every study's name in the storage ([] when it cannot be read)."""
    import optuna

    try:
        check_database(storage_url)
        return list(optuna.study.get_all_study_names(storage_url))
    except Exception:
        return []


def trial_seconds(trial: Any, now: Optional[Any] = None) -> Optional[float]:
    """A finished trial's duration, a running one's time so far (until ``now``); None before it starts."""
    import datetime as _dt

    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or now or _dt.datetime.now()
    return float((end - trial.datetime_start).total_seconds())


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class _one_line:
    """Turn whatever opening a storage raises into one UsageError that says what to do."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.url, self.name = storage_url, study_name

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]:
        if (
            exc is None
            or isinstance(exc, (AutotlError, KeyboardInterrupt))
            or not isinstance(exc, Exception)
        ):
            return False
        url = safe_url(self.url)
        if isinstance(exc, KeyError):
            names = study_names(self.url)
            there = f" (it holds {', '.join(map(repr, names))})" if names else ""
            raise UsageError(
                f"no study {self.name!r} in {url}{there}; check --study-name or run `autotl search` first"
            ) from None
        if isinstance(exc, ModuleNotFoundError):
            raise UsageError(
                f"storage {url} needs the Python package {exc.name!r}; install it "
                "(for PostgreSQL: pip install 'autotl[postgres]')"
            ) from None
        raise UsageError(
            f"cannot open storage {url!r} ({first_line(exc)}); pass a working Optuna storage URL "
            "such as sqlite:///study.db or postgresql://user:pass@host/db"
        ) from None


_engine_lock = threading.Lock()
_engines: dict[str, Any] = {}
_created: set[tuple[str, int]] = set()


def sql_engine(storage_url: str) -> Any:
    """One SQLAlchemy engine per URL per process, for autotl's own tables beside the study's."""
    from sqlalchemy import create_engine

    if "://" not in str(storage_url):
        raise UsageError(
            f"storage {storage_url!r} is not a URL; pass e.g. sqlite:///runs/x/study.db or postgresql://user:pass@host/db"
        )
    with _engine_lock:
        if storage_url not in _engines:
            try:
                _engines[storage_url] = create_engine(storage_url, **engine_kwargs(storage_url))
            except ModuleNotFoundError as exc:
                raise UsageError(
                    f"storage {safe_url(storage_url)} needs the Python package {exc.name!r}; install it"
                ) from None
            except Exception as exc:
                raise UsageError(
                    f"cannot open storage {safe_url(storage_url)!r} ({first_line(exc)})"
                ) from None
        return _engines[storage_url]


def create_tables(storage_url: str, metadata: Any) -> Any:
    """The engine of ``storage_url`` with ``metadata``'s tables in place (once per process); safe when
    several workers create them at once."""
    from sqlalchemy.exc import DBAPIError

    engine = sql_engine(storage_url)
    if (storage_url, id(metadata)) in _created:
        return engine
    for attempt in range(5):
        try:
            metadata.create_all(engine, checkfirst=True)
            break
        except DBAPIError:  # another worker created a table between our check and our CREATE
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    _created.add((storage_url, id(metadata)))
    return engine
