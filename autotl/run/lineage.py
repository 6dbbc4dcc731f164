"""Lineage in SQL: which trial, backbone, weights and data made a model file.

Two tables live in the study's own database (the Optuna storage URL: SQLite in
the run folder by default, PostgreSQL when many workers share a study):

* ``autotl_artifacts``: one row per model file written (a trial's model, the
  copied best model, an export) with the SHA-256 of its bytes;
* ``autotl_lineage``: for each artifact, the backbone and plugin, the weights'
  origin and SHA-256, the data set's fingerprint and source, the
  hyperparameters, metrics and phase times, and the software versions;
* ``autotl_data_exclusions``: the files a search left out of its data
  (``--exclude``, :mod:`autotl.data.exclude`), their list's SHA-256 and its
  source, by the data fingerprint they produce, so a model's lineage names them;
* ``autotl_deployments``: written by the Java inference service
  (``serving/java``) when it starts with ``--storage`` (model SHA-256, URL,
  host, port, machine, service version, start time; stop time on a clean
  shutdown), read by :func:`list_deployments`.

A model is found by the hash of its bytes, so a copied or renamed file still
answers ``autotl lineage MODEL_FILE``.  The tables are created with
``MetaData.create_all`` (it checks first); a worker that loses a creation race
with another one simply checks again.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from autotl.backbones.weights import sha256_file
from autotl.errors import UsageError, first_line
from autotl.run.folder import RunFolder
from autotl.run.storage import create_tables, engine_kwargs, safe_url, sql_engine, sqlite_path
from autotl.scoring.objective import trial_metrics

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = [
    "ARTIFACTS_TABLE",
    "LINEAGE_TABLE",
    "KINDS",
    "record_model",
    "find_model",
    "list_models",
    "default_storage_for",
    "describe",
    "library_versions",
    "lineage_of",
    "DEPLOYMENTS_TABLE",
    "list_deployments",
    "EXCLUSIONS_TABLE",
    "record_exclusions",
    "exclusions_of",
    "describe_deployment",
]

ARTIFACTS_TABLE = "autotl_artifacts"
LINEAGE_TABLE = "autotl_lineage"
DEPLOYMENTS_TABLE = "autotl_deployments"
EXCLUSIONS_TABLE = "autotl_data_exclusions"
ENSEMBLE_KIND = "ensemble_export"  # one row per member trial, same file
KINDS = ("trial_weights", "trial_model", "best_model", "export", "ensemble_export")
LIBRARIES = (
    "tensorflow",
    "keras",
    "optuna",
    "numpy",
    "pluggy",
    "scikit-learn",
    "sqlalchemy",
    "pillow",
)

_schema: Any = None
_deployments: Any = None


def _exclusions_table(md: Any) -> None:
    """The exclusion lists a search trained without (``--exclude``), one row per data fingerprint."""
    from sqlalchemy import JSON, Column, DateTime, Integer, String, Table, Text

    Table(
        EXCLUSIONS_TABLE,
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("data_fingerprint", String(64), nullable=False, unique=True),
        Column("list_sha256", String(64), nullable=False),
        Column("source", Text),
        Column("count", Integer, nullable=False),
        Column("files", JSON, nullable=False),
        Column("created", DateTime(timezone=True), nullable=False),
    )


def _tables() -> Any:
    """The MetaData with both tables, built once (SQLAlchemy is imported lazily)."""
    global _schema
    if _schema is None:
        from sqlalchemy import (
            JSON,
            BigInteger,
            Column,
            DateTime,
            ForeignKey,
            Integer,
            MetaData,
            String,
            Table,
            Text,
        )

        md = MetaData()
        Table(
            ARTIFACTS_TABLE,
            md,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("kind", String(32), nullable=False),
            Column("path", Text, nullable=False),
            Column("sha256", String(64), nullable=False, index=True),
            Column("size", BigInteger),
            Column("trial_number", Integer),
            Column("study_name", String(512)),
            Column("created", DateTime(timezone=True), nullable=False),
        )
        Table(
            LINEAGE_TABLE,
            md,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column(
                "artifact_id",
                Integer,
                ForeignKey(f"{ARTIFACTS_TABLE}.id", ondelete="CASCADE"),
                nullable=False,
                unique=True,
            ),
            Column("backbone", String(255)),
            Column("plugin", String(255)),
            Column("weights_origin", Text),
            Column("weights_sha256", String(64)),
            Column("data_fingerprint", String(64)),
            Column("data_source", Text),
            Column("params", JSON),
            Column("metrics", JSON),
            Column("seconds", JSON),
            Column("autotl_version", String(64)),
            Column("versions", JSON),
        )
        _exclusions_table(md)
        _schema = md
    return _schema


def _engine(storage_url: str) -> Any:
    return sql_engine(storage_url)


def _ensure_tables(storage_url: str) -> Any:
    """Create the tables if absent; safe when several workers do it at once."""
    return create_tables(storage_url, _tables())


def _missing_sqlite(storage_url: str) -> bool:
    path = sqlite_path(storage_url)
    return path is not None and not Path(path).exists()


def _has_tables(engine: Any) -> bool:
    from sqlalchemy import inspect

    insp = inspect(engine)
    return insp.has_table(ARTIFACTS_TABLE) and insp.has_table(LINEAGE_TABLE)


def library_versions() -> dict[str, str]:
    """Versions of autotl's main libraries (and Python) in this process's environment."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Read once a process: a lineage row is written after every trial."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and tuples become plain values."""
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


def _study_data(storage_url: str, study_name: str) -> dict[str, Any]:
    """The study's "data" user attribute (Dataset.summary()), or {} if it cannot be read.

    Only for callers that do not pass ``data`` to :func:`record_model`; autotl's own pass it.
    """
    storage = None
    try:
        from optuna.storages import RDBStorage

        storage = RDBStorage(storage_url, engine_kwargs=engine_kwargs(storage_url))
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
        return dict(attrs.get("data") or {})
    except Exception:
        return {}
    finally:
        if storage is not None:
            storage.engine.dispose()


def record_model(
    storage_url: str,
    study_name: str,
    trial: FrozenTrial,
    model_path: str | os.PathLike[str],
    kind: str = "trial_model",
    data: Optional[dict[str, Any]] = None,
) -> int:
    """Record a model file written by ``trial`` (an Optuna FrozenTrial or Trial, or anything with
    ``number``, ``params``, ``user_attrs`` and optionally ``value``); return the artifact id.

    ``data`` is the data set's ``summary()``; without it the study's "data" user attribute is read.
    Recording the same file (same bytes, path and kind) twice returns the first id.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(model_path).resolve()
    if not path.is_file():
        raise UsageError(f"cannot record lineage of {path}: no such file")
    artifact = {
        "kind": kind,
        "path": str(path),
        "sha256": sha256_file(path),
        "trial_number": getattr(trial, "number", None),
        "study_name": study_name,
    }
    lineage = _lineage_row(
        trial, data if data is not None else _study_data(storage_url, study_name)
    )
    engine = _ensure_tables(storage_url)
    with engine.begin() as conn:
        existing = _recorded(conn, artifact)
        if existing is not None:
            return existing
        art, lin = (_tables().tables[name] for name in (ARTIFACTS_TABLE, LINEAGE_TABLE))
        values = {
            **artifact,
            "size": path.stat().st_size,
            "created": _dt.datetime.now(_dt.timezone.utc),
        }
        artifact_id = conn.execute(art.insert().values(**values)).inserted_primary_key[0]
        conn.execute(lin.insert().values(artifact_id=artifact_id, **lineage))
    return int(artifact_id)


def _lineage_row(trial: FrozenTrial, data: Optional[dict[str, Any]]) -> dict[str, Any]:
    """What made a trial's model: backbone, plugin, weights, data, parameters, scores, times, versions."""
    from autotl._version import __version__

    attrs = dict(getattr(trial, "user_attrs", {}) or {})
    params = dict(getattr(trial, "params", {}) or {})
    history = attrs.get("history") or {}
    metrics = {
        **trial_metrics(trial),
        "head_stable_epoch": attrs.get("head_stable_epoch"),
        "gate": attrs.get("gate"),
        "phase2_kept": attrs.get("phase2_kept"),
        "cut": attrs.get("cut"),
        "unfrozen_layers": attrs.get("unfrozen_layers"),
        "epochs": {phase: len((h or {}).get("val_loss", [])) for phase, h in history.items()},
    }
    seconds = {**(attrs.get("seconds") or {}), "total": attrs.get("seconds_total")}
    return {
        "backbone": params.get("backbone"),
        "plugin": attrs.get("plugin"),
        "weights_origin": attrs.get("weights_origin"),
        "weights_sha256": attrs.get("weights_sha256"),
        "data_fingerprint": (data or {}).get("fingerprint"),
        "data_source": (data or {}).get("source"),
        "params": _jsonable(params),
        "metrics": _jsonable(metrics),
        "seconds": _jsonable(seconds),
        "autotl_version": __version__,
        "versions": library_versions(),
    }


def _recorded(conn: Any, artifact: dict[str, Any]) -> Optional[int]:
    """The id of the same file (bytes, path, kind, study and trial) recorded before, if it was."""
    from sqlalchemy import select

    art = _tables().tables[ARTIFACTS_TABLE]
    number = artifact["trial_number"]
    found = conn.execute(
        select(art.c.id)
        .where(
            art.c.sha256 == artifact["sha256"],
            art.c.path == artifact["path"],
            art.c.kind == artifact["kind"],
            art.c.study_name == artifact["study_name"],
            # an ensemble's file is recorded once per member trial
            art.c.trial_number == number if number is not None else art.c.trial_number.is_(None),
        )
        .order_by(art.c.id)
    ).first()
    return None if found is None else int(found[0])


def record_exclusions(storage_url: str, data: dict[str, Any]) -> None:
    """Record the files a search's data left out (``data`` is ``Dataset.summary()``), once per data fingerprint."""
    from sqlalchemy import select

    excluded = data.get("exclusions")
    if not excluded:
        return
    engine = _ensure_tables(storage_url)
    table = _tables().tables[EXCLUSIONS_TABLE]
    with engine.begin() as conn:
        if conn.execute(
            select(table.c.id).where(table.c.data_fingerprint == data["fingerprint"])
        ).first():
            return
        conn.execute(
            table.insert().values(
                data_fingerprint=data["fingerprint"],
                list_sha256=excluded["sha256"],
                source=excluded.get("source"),
                count=len(excluded["files"]),
                files=list(excluded["files"]),
                created=_dt.datetime.now(_dt.timezone.utc),
            )
        )


def exclusions_of(storage_url: str, fingerprint: Optional[str]) -> Optional[dict[str, Any]]:
    """The files left out of the data with this fingerprint, their list's hash and source; None if none were."""
    from sqlalchemy import inspect, select

    if not fingerprint or _missing_sqlite(storage_url):
        return None
    engine = _engine(storage_url)
    if not inspect(engine).has_table(EXCLUSIONS_TABLE):
        return None
    table = _tables().tables[EXCLUSIONS_TABLE]
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.data_fingerprint == fingerprint)).first()
    if row is None:
        return None
    found = dict(row._mapping)
    return {k: found[k] for k in ("list_sha256", "source", "count", "files")}


def _row(r: Any) -> dict[str, Any]:
    """One joined artifact + lineage row as a plain dict (the artifact's ``id`` as ``artifact_id``)."""
    row = r._asdict()
    created = row["created"]
    if created is not None and created.tzinfo is None:  # SQLite returns naive datetimes
        created = created.replace(tzinfo=_dt.timezone.utc)
    return {
        "artifact_id": row.pop("id"),
        **row,
        "created": created.isoformat() if created else None,
    }


def _query(storage_url: str, where: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    if _missing_sqlite(storage_url):  # reading must not leave an empty database file behind
        return []
    engine = _engine(storage_url)
    try:
        if not _has_tables(engine):
            return []
        md = _tables()
        art, lin = md.tables[ARTIFACTS_TABLE], md.tables[LINEAGE_TABLE]
        stmt = (
            select(
                art,
                lin.c.backbone,
                lin.c.plugin,
                lin.c.weights_origin,
                lin.c.weights_sha256,
                lin.c.data_fingerprint,
                lin.c.data_source,
                lin.c.params,
                lin.c.metrics,
                lin.c.seconds,
                lin.c.autotl_version,
                lin.c.versions,
            )
            .join(lin, lin.c.artifact_id == art.c.id)
            .where(where(art))
            .order_by(art.c.id.desc())
        )
        with engine.connect() as conn:
            return [_row(r) for r in conn.execute(stmt)]
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"cannot read lineage from {safe_url(storage_url)} ({first_line(exc)})"
        ) from None


def find_model(storage_url: str, model_path: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
    """The lineage record of a model file, found by the SHA-256 of its bytes; None if unknown.

    When several records have the same bytes (a trial's model and its copy as the best model),
    the one recorded at this path wins, else the newest; ``same_bytes`` lists them all.
    """
    path = Path(model_path)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    sha = sha256_file(path)
    rows = _query(storage_url, lambda art: art.c.sha256 == sha)
    if not rows:
        return None
    here = str(path.resolve())
    best = next((r for r in rows if r["path"] == here), rows[0])
    members = [
        {
            k: r[k]
            for k in ("trial_number", "backbone", "plugin", "weights_origin", "weights_sha256")
        }
        for r in reversed(rows)
        if r["kind"] == ENSEMBLE_KIND and r["path"] == best["path"]
    ]
    return {
        **best,
        "members": members,  # an ensemble's member trials (their backbones and weights), else []
        "same_bytes": [
            {
                "artifact_id": r["artifact_id"],
                "kind": r["kind"],
                "path": r["path"],
                "trial_number": r["trial_number"],
                "study_name": r["study_name"],
            }
            for r in rows
        ],
    }


def list_models(storage_url: str, study_name: Optional[str] = None) -> list[dict[str, Any]]:
    """Every recorded artifact (of one study, if named), newest first; [] when nothing was recorded."""
    return _query(
        storage_url,
        lambda art: (
            art.c.study_name == study_name if study_name is not None else art.c.id.isnot(None)
        ),
    )


def _deployments_table() -> Any:
    """``autotl_deployments`` as the Java service creates it (``serving/java``); times are ISO 8601 UTC text."""
    global _deployments
    if _deployments is None:
        from sqlalchemy import Column, Integer, MetaData, String, Table, Text

        _deployments = Table(
            DEPLOYMENTS_TABLE,
            MetaData(),
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("sha256", String(64), nullable=False, index=True),
            Column("model_path", Text, nullable=False),
            Column("model_name", String(255), nullable=False),
            Column("url", Text, nullable=False),
            Column("host", String(255), nullable=False),
            Column("port", Integer, nullable=False),
            Column("machine", String(255)),
            Column("pid", Integer),
            Column("service", String(255), nullable=False),
            Column("started", String(40), nullable=False),
            Column("stopped", String(40)),
        )
    return _deployments


def list_deployments(storage_url: str, sha256: str) -> list[dict[str, Any]]:
    """Where the model file with this SHA-256 was served, newest first; [] when no deployment was recorded.

    ``stopped`` is None while the service runs, and for one that was killed without a clean shutdown.
    """
    from sqlalchemy import inspect, select

    if _missing_sqlite(storage_url):
        return []
    engine = _engine(storage_url)
    try:
        if not inspect(engine).has_table(DEPLOYMENTS_TABLE):
            return []
        table = _deployments_table()
        with engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    select(table).where(table.c.sha256 == sha256).order_by(table.c.id.desc())
                )
            ]
    except Exception as exc:
        raise UsageError(
            f"cannot read deployments from {safe_url(storage_url)} ({first_line(exc)})"
        ) from None


def describe_deployment(d: dict[str, Any]) -> str:
    """One line of ``autotl lineage`` per deployment."""
    where = f"deployed as {d['model_name']} at {d['url']} on {d.get('machine') or '?'} by {d['service']} (pid {d.get('pid')})"
    return (
        f"  {where} from {d['started']} to {d['stopped']}"
        if d.get("stopped")
        else f"  {where} since {d['started']}"
    )


def default_storage_for(model_path: str | os.PathLike[str]) -> str:
    """``sqlite:///.../study.db`` beside the model file, or up to three folders up (run/trials/0003/model.keras,
    run/export/savedmodel/saved_model.pb, run/versions/3/savedmodel/saved_model.pb)."""
    path = Path(model_path).resolve()
    for folder in list(path.parents)[:4]:
        if RunFolder(folder).study_db.is_file():
            return RunFolder(folder).default_storage_url()
    raise UsageError(
        f"no {RunFolder.STUDY_DB} beside {path} or in the folders above it; pass --storage URL"
    )


def lineage_of(
    model_path: str | os.PathLike[str], storage_url: Optional[str] = None
) -> dict[str, Any]:
    """The lineage record of a model file (see :func:`find_model`); a one-line UsageError when there is none."""
    from autotl.run.storage import check_database

    path = Path(model_path)
    if path.is_dir():
        raise UsageError(
            f"{path} is a folder; pass a model file (a .keras file, or a SavedModel's saved_model.pb, "
            "a .tflite file) that autotl wrote"
        )
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    storage = storage_url or default_storage_for(path)
    check_database(storage, accept=(ARTIFACTS_TABLE,))
    record = find_model(storage, path)
    if record is None:
        raise UsageError(
            f"no lineage recorded for {path} (sha256 {sha256_file(path)[:12]}) in {safe_url(storage)}; "
            "was it made by another study?"
        )
    return {
        **record,
        "exclusions": exclusions_of(storage, record.get("data_fingerprint")),
        "deployments": list_deployments(storage, record["sha256"]),
    }


def _weights(record: dict[str, Any]) -> str:
    weights = record.get("weights_origin") or "?"
    if record.get("weights_sha256"):
        weights += f" sha256 {record['weights_sha256'][:12]}"
    return weights


def describe(record: dict[str, Any], shown_path: str) -> str:
    """The one-line answer of ``autotl lineage``."""
    if record.get("members"):
        return _describe_ensemble(record, shown_path)
    m = record.get("metrics") or {}
    acc = m.get("val_accuracy")
    data = (record.get("data_fingerprint") or "?")[:12]
    parts = [
        f"{shown_path}: {record['kind']} of trial {record['trial_number']} in study {record['study_name']!r}",
        f"backbone {record.get('backbone')} (plugin {record.get('plugin')})",
        f"weights {_weights(record)}",
        f"data {data} from {record.get('data_source') or '?'}{_excluded(record)}",
        f"val_accuracy {acc:.4f}" if isinstance(acc, (int, float)) else "val_accuracy ?",
        f"autotl {record.get('autotl_version')}",
        f"recorded {record.get('created')}",
    ]
    return "; ".join(parts)


def _excluded(record: dict[str, Any]) -> str:
    """`` excluding N files (list sha256 ...)`` when the search left files out of its data."""
    found = record.get("exclusions")
    if not found:
        return ""
    return f" excluding {found['count']} files (list sha256 {found['list_sha256'][:12]}, {found.get('source')})"


def _describe_ensemble(record: dict[str, Any], shown_path: str) -> str:
    """An ensemble's answer: every member trial with its backbone and weights."""
    members = record["members"]
    numbers = ", ".join(str(m["trial_number"]) for m in members)
    each = ", ".join(
        f"trial {m['trial_number']}: {m.get('backbone')} (plugin {m.get('plugin')}, weights {_weights(m)})"
        for m in members
    )
    data = (record.get("data_fingerprint") or "?")[:12]
    return "; ".join(
        [
            f"{shown_path}: ensemble export of trials {numbers} in study {record['study_name']!r}",
            each,
            f"data {data} from {record.get('data_source') or '?'}{_excluded(record)}",
            f"autotl {record.get('autotl_version')}",
            f"recorded {record.get('created')}",
        ]
    )
