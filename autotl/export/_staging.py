"""The output folder: checked before any work, written beside it in a staging folder, swapped in whole.

An export writes everything into ``.<OUT>.partial-<pid>`` next to ``OUT`` and
only a verified export becomes ``OUT``, by renames, so ``OUT`` is at every
moment either absent, the previous complete export or the new one: a process
killed at any point (even by SIGKILL) leaves no half-written ``OUT``, only a
staging folder that the next export into ``OUT`` removes (its PID is dead).

With a version (``autotl export --out BASE --version N``, or ``next``), ``OUT``
is ``BASE/<N>/``, a new folder among the version folders a model server watches
(TF Serving's layout; ``serving/java`` reloads them): it is staged as
``BASE/.<N>.partial-<pid>`` (hidden, so no server loads it) and renamed into
place only if no ``BASE/<N>`` exists by then, so a served version is never
rewritten in place.

``OUT`` may be new, empty, or an earlier autotl export (it has autotl's
``parity.json``); an earlier export is replaced, the files autotl owns are
dropped and any other file in it is kept.  Any other folder is refused, so
nothing of the user's is lost.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from autotl.errors import UsageError
from autotl.export._common import PARITY_FILE

PARTIAL, PREVIOUS, UNVERIFIED = ".partial-", ".previous-", ".unverified"


def staging_dir(out: Path) -> Path:
    """This process's staging folder for ``out``."""
    return out.parent / f".{out.name}{PARTIAL}{os.getpid()}"


def unverified_dir(out: Path) -> Path:
    return out.parent / f"{out.name}{UNVERIFIED}"


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an export autotl wrote (its ``parity.json`` names autotl's version)."""
    try:
        parity = json.loads((folder / PARITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(parity, dict) and "autotl" in (parity.get("versions") or {})


def version_numbers(base: Path) -> list[int]:
    """The version folders of ``base`` (names that are whole numbers 1 or more), sorted."""
    if not base.is_dir():
        return []
    found = (p for p in base.iterdir() if p.name.isdigit() and p.is_dir())
    return sorted(n for n in (int(p.name) for p in found) if n >= 1)


def version_folder(base: Path, version: int | str) -> Path:
    """``base/<n>``: ``version`` a whole number (1 or more), or ``"next"`` (one more than the highest there, else 1).

    Refused in one line, with nothing created: ``base`` a file or itself an export, a bad number,
    or a version that exists already.
    """
    if base.is_symlink():
        base = base.resolve()
    if base.exists() and not base.is_dir():
        raise UsageError(
            f"--out {base} is a file; with --version pass the base folder of the versions"
        )
    if is_export(base):
        raise UsageError(
            f"--out {base} is an export itself, not a base folder of versions: pass its parent folder, or a new one"
        )
    existing = version_numbers(base)
    upcoming = (existing[-1] if existing else 0) + 1
    if str(version) == "next":
        number = upcoming
    elif isinstance(version, int) or str(version).isdigit():
        number = int(version)
    else:
        number = 0
    if number < 1:
        raise UsageError(f"--version takes a whole number (1 or more) or next, got {version}")
    if number in existing:
        raise UsageError(
            f"version {number} exists already in {base}: a version is never rewritten in place, since a server "
            f"may be serving it; pass --version next (it would be {upcoming})"
        )
    return base / str(number)


def check_out(out: Path) -> Path:
    """``out`` (a symlink resolved), or a one-line UsageError saying why an export cannot go there.

    Nothing is created or changed: a refused ``--out`` is left as it was.
    """
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir())
        if others and not is_export(out):
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UsageError(
                f"--out {out} is a folder of other files ({shown}), not an earlier autotl export; "
                "pass a new or empty folder (nothing was changed)"
            )
        _require_writable(out, f"--out {out}")
    parent = _nearest_existing(out.parent)
    if not parent.is_dir():
        raise UsageError(f"--out {out} cannot be made: {parent} is a file; pass another folder")
    _require_writable(parent, f"the folder of --out {out}" if parent == out.parent else str(parent))
    return out


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _require_writable(folder: Path, what: str) -> None:
    """Create (and drop) a nameless file in ``folder``: the only honest test, also under root or ACLs."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(
            f"{what} is not writable ({exc.strerror or exc}); pass a writable --out (nothing was changed)"
        ) from None


def remove_stale(out: Path) -> list[Path]:
    """Drop staging folders of ``out`` left by exports whose process is gone; return them.

    A previous export moved aside by an install that was killed half-way (only
    where folders cannot be swapped in one step) is put back when ``out`` is missing.
    """
    removed: list[Path] = []
    prefix = f".{out.name}"
    found = sorted(out.parent.iterdir()) if out.parent.is_dir() else []
    for path in (p for p in found if p.name.startswith(prefix)):
        stem, _, pid = path.name[len(prefix) :].rpartition("-")
        kind = stem + "-"
        if kind not in (PARTIAL, PREVIOUS) or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == PREVIOUS and not out.exists():
            os.replace(path, out)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def quarantine(staging: Path, out: Path) -> Path:
    """Keep a staging folder that failed verification as ``OUT.unverified`` (never as ``OUT``)."""
    failed = unverified_dir(out)
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(staging, failed)
    return failed


def install(staging: Path, out: Path, owned: Sequence[str], new_only: bool = False) -> None:
    """Make the verified ``staging`` folder ``out``; an earlier export there keeps its files autotl does not own.

    ``new_only`` (a version folder): ``out`` must not exist, even if another process made it meanwhile.
    """
    if new_only:
        if not _rename_new(staging, out):
            raise UsageError(
                f"{out} appeared while this export ran (another export?); nothing was changed"
            )
        return
    if not out.exists():
        os.replace(staging, out)
        return
    for entry in out.iterdir():
        if entry.name not in owned and not (staging / entry.name).exists():
            _carry(entry, staging / entry.name)
    if _exchange(staging, out):  # one atomic step: staging now holds the previous export
        shutil.rmtree(staging)
        return
    previous = out.parent / f".{out.name}{PREVIOUS}{os.getpid()}"
    os.replace(out, previous)  # killed here: the next export puts it back (remove_stale)
    os.replace(staging, out)
    shutil.rmtree(previous)


def _carry(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a user's file or folder into the new export, so the swap keeps it."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    return _renameat2(a, b, 2) is True


def _rename_new(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (``RENAME_NOREPLACE`` where Linux has it); False if it does."""
    done = _renameat2(src, dst, 1)
    if done is not None:
        return done
    if dst.exists():  # elsewhere: a short window remains between this check and the rename
        return False
    os.rename(src, dst)
    return True


def _renameat2(a: Path, b: Path, flags: int) -> Optional[bool]:
    """Linux ``renameat2``: True when done, False when ``b`` exists (``EEXIST``), None where it is not available."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl
        return None
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot do it
        return None
    if err in (errno.EEXIST, errno.ENOTEMPTY):
        return False
    raise OSError(err, os.strerror(err), str(b))
