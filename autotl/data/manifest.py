"""The data set's manifest: every file read once, so a resume, a report or a second worker reads only what changed.

A scan must know, for every file, whether it decodes and the SHA-256 of its
bytes (the data fingerprint is exact over them).  Reading and decoding 100,000
files takes minutes; a manifest in the run folder remembers the answer per
file, with the file's size and modification time, so the next scan stats the
files (a fraction of a second) and reads only the added and changed ones::

    {"manifest": 1, "root": "/data/images", "max_side": 1024}
    {"path": "ants/0001.jpg", "size": 10234, "mtime_ns": 1700000000000000000,
     "sha256": "9f2c...", "class": "ants", "part": "", "split": "train", "reason": null,
     "width": 500, "height": 375, "mode": "JPEG RGB"}
    {"path": "bees/0042.jpg", ..., "sha256": "", "split": null, "reason": "truncated or corrupt: ..."}

One JSON object per line: ``grep -v '"reason": null' RUN_DIR/manifest.jsonl``
lists the files that were skipped and why.  ``part`` is the folder part (``train``/``val``
when DATA_DIR has them), ``split`` where the file went.  While a long first scan
runs, checked files are appended every few thousand, so an interrupted scan
resumes where it stopped; later lines win over earlier ones for the same path.
A file rewritten in place with the same size and modification time is not
noticed (touch it, or delete the manifest).  Format 2 added each picture's
width, height and ``"FORMAT MODE"`` as stored (data health's "tiny" and "odd
mode"); a format-1 manifest is read again in full once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from autotl.data.decoding import Checked, check_files, ordered

__all__ = ["FORMAT", "Entry", "Scan", "check", "write", "read"]

FORMAT = 2  # 2: width, height and mode of each picture
CHUNK = 64  # files per task of a decoding worker
JOURNAL_EVERY = 2000  # checked files appended to the manifest at least this often
Progress = Callable[[int, int], None]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One scan at a time per manifest (a second worker waits, then reuses the first one's work)."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Entry(NamedTuple):
    """One file as the manifest knows it (kept compact: a manifest may list millions)."""

    size: int
    mtime_ns: int
    sha256: str
    reason: Optional[str]
    cls: str
    part: str
    split: Optional[str]
    width: int = 0
    height: int = 0
    mode: str = ""


def read(path: Optional[Path]) -> dict[str, Entry]:
    """The manifest's entries by relative path (later lines win); ``{}`` when there is none or another format."""
    if path is None or not path.is_file():
        return {}
    entries: dict[str, Entry] = {}
    shared: dict[Any, Any] = {}  # class, part and split names: one string each, not one per file
    loads = json.JSONDecoder().decode
    with open(path, encoding="utf-8") as f:
        header = _parse(f.readline())
        if not header or header.get("manifest") != FORMAT:
            return {}
        for line in f:
            try:
                e = loads(line)
                entries[e["path"]] = Entry(
                    size=e["size"],
                    mtime_ns=e["mtime_ns"],
                    sha256=e["sha256"],
                    reason=e["reason"],
                    cls=shared.setdefault(e["class"], e["class"]),
                    part=shared.setdefault(e["part"], e["part"]),
                    split=shared.setdefault(e["split"], e["split"]),
                    width=e.get("width", 0),
                    height=e.get("height", 0),
                    mode=shared.setdefault(e.get("mode", ""), e.get("mode", "")),
                )
            except (ValueError, KeyError, TypeError):  # torn by a kill, or edited: read again
                continue
    return entries


def _parse(line: str) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(line)
    except ValueError:  # a line torn by a kill mid-write
        return None
    return value if isinstance(value, dict) else None


def _line(rel: str, c: Checked, cls: str, part: str, split: Optional[str] = None) -> str:
    entry = {
        "path": rel,
        "size": c.size,
        "mtime_ns": c.mtime_ns,
        "sha256": c.sha256,
        "class": cls,
        "part": part,
        "split": split,
        "reason": c.reason,
        "width": c.width,
        "height": c.height,
        "mode": c.mode,
    }
    return json.dumps(entry, ensure_ascii=False) + "\n"


@dataclass
class Scan:
    """What a scan found: a :class:`Checked` per file, and how it compares with the manifest."""

    checked: list[Checked]
    old_splits: list[Optional[str]]  # the split the manifest gave each file (None: new to it)
    unchanged: bool  # every file as the manifest lists it (the split apart), and none removed
    reread: int  # files read now (new, changed, or no manifest)


def check(
    files: Sequence[tuple[str, str, str, str]],
    manifest: Optional[Path],
    root: str,
    max_side: int,
    workers: int,
    progress: Optional[Progress] = None,
) -> Scan:
    """Check every ``(rel, path, class, part)`` in ``files``.

    A file whose size and modification time match its manifest entry is not
    read: its hash and verdict (a broken file's reason too) come from the
    manifest.  The others are read by ``workers`` decoding processes.
    """
    if manifest is None:
        return _check_all(
            files, None, root, max_side, workers=workers, progress=progress, previous={}
        )
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(manifest):
        previous = read(manifest)
        return _check_all(
            files, manifest, root, max_side, workers=workers, progress=progress, previous=previous
        )


def _check_all(
    files: Sequence[tuple[str, str, str, str]],
    manifest: Optional[Path],
    root: str,
    max_side: int,
    *,
    workers: int,
    progress: Optional[Progress],
    previous: dict[str, Entry],
) -> Scan:
    """Stat every file; reuse the manifest's answer where size and mtime match; read the rest in the pool.
    Entries are taken out of ``previous`` as they are used, so the two lists are never both whole."""
    result: list[Optional[Checked]] = [None] * len(files)
    old_splits: list[Optional[str]] = [None] * len(files)
    todo: list[int] = []
    same = True
    for i, (rel, full, cls, part) in enumerate(files):
        old = previous.pop(rel, None)
        if old is not None:
            try:
                st = os.stat(full)
            except OSError:
                st = None
            if st is not None and (st.st_size, st.st_mtime_ns) == (old.size, old.mtime_ns):
                result[i] = Checked(*old[:4], old.width, old.height, old.mode)
                old_splits[i] = old.split
                same = same and (old.cls, old.part) == (cls, part)
                continue
        todo.append(i)
    same = same and not previous and not todo
    previous.clear()
    total, done = len(todo), 0
    if progress is not None and total:
        progress(0, total)
    chunks = [todo[k : k + CHUNK] for k in range(0, total, CHUNK)]
    journal: list[str] = []
    last = time.monotonic()
    tasks = (([files[i][1] for i in chunk], max_side) for chunk in chunks)
    for chunk, answers in zip(chunks, ordered(check_files, tasks, workers)):
        for i, c in zip(chunk, answers):
            result[i] = c
            rel, _full, cls, part = files[i]
            journal.append(_line(rel, c, cls, part))
        done += len(chunk)
        if progress is not None:
            progress(done, total)
        if manifest is not None and (len(journal) >= JOURNAL_EVERY or time.monotonic() - last > 10):
            _append(manifest, root, max_side, journal)
            journal, last = [], time.monotonic()
    if manifest is not None and journal:
        _append(manifest, root, max_side, journal)
    return Scan(result, old_splits, same, total)  # type: ignore[arg-type]


def _header(root: str, max_side: int) -> str:
    return json.dumps({"manifest": FORMAT, "root": root, "max_side": max_side}) + "\n"


def _append(manifest: Path, root: str, max_side: int, lines: list[str]) -> None:
    """Add checked files to the manifest now, so an interrupted first scan is not lost."""
    fresh = not manifest.is_file() or manifest.stat().st_size == 0
    with open(manifest, "a", encoding="utf-8") as f:
        if fresh:
            f.write(_header(root, max_side))
        f.write("".join(lines))


def write(
    manifest: Path,
    root: str,
    max_side: int,
    files: Sequence[tuple[str, str, str, str]],
    scan: Scan,
    splits: Sequence[Optional[str]],
) -> bool:
    """Rewrite the manifest compactly (every file once, with the split it went to: ``splits[i]`` for
    ``files[i]``), unless it already says exactly that; whether it was written.  Removed files drop out."""
    if scan.unchanged and list(splits) == scan.old_splits:
        return False
    tmp = manifest.with_name(f".{manifest.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_header(root, max_side))
        for (rel, _full, cls, part), c, split in zip(files, scan.checked, splits):
            f.write(_line(rel, c, cls, part, split))
    with _locked(manifest):
        os.replace(tmp, manifest)
    return True
