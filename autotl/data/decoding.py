"""Decoding image files, in worker processes: the CPU-heavy part of reading a data set.

One file becomes upright RGB uint8 pixels or a short reason it cannot be used
(:func:`decode_image`).  A data set of 100,000 files is checked and decoded in
chunks by a pool of worker processes (``--decode-workers``, default: the
cores), with a bounded number of chunks in flight, so memory does not grow with
the number of files and the main process keeps its cores for TensorFlow.

The pool is started with ``spawn``: forking a process that runs TensorFlow is
unsafe.  Workers ignore Ctrl-C (the main process decides what it means) and
exit when the main process dies, since their task pipe closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Optional

import numpy as np

from autotl.errors import UsageError

__all__ = [
    "BadImage",
    "Checked",
    "decode_image",
    "check_files",
    "decode_files",
    "default_workers",
    "ordered",
]


class BadImage(Exception):
    """One file cannot be used; ``str()`` is the short reason."""


def decode_image(path: str | os.PathLike[str], max_side: int = 1024) -> np.ndarray:
    """Decode one file to a uint8 HxWx3 RGB array, or raise BadImage(reason)."""
    with warnings.catch_warnings():  # Pillow's EXIF/bomb warnings: the reason is what counts
        warnings.simplefilter("ignore")
        return _decode_bytes(_read(path), max_side)


def _read(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; a missing or special file (a FIFO would block) is a BadImage."""
    if not os.path.exists(path):
        raise BadImage("missing (broken link?)")
    if not os.path.isfile(path):
        raise BadImage("not a regular file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None


def _decode_bytes(data: bytes, max_side: int, facts: dict[str, Any] | None = None) -> np.ndarray:
    """Decode in memory (the bytes are hashed too, so a file is read once); ``facts`` receives the
    picture as stored (width, height, Pillow mode, format, frames), which data health reads."""
    from PIL import Image, UnidentifiedImageError

    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if not data:
        raise BadImage("zero bytes")
    stage = "truncated or corrupt"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "EPS":  # loading it would run Ghostscript on untrusted input
                raise BadImage("EPS is not decoded (it needs Ghostscript); convert it to PNG")
            if facts is not None:
                facts.update(
                    width=im.width,
                    height=im.height,
                    mode=f"{im.format or '?'} {im.mode}"
                    + (f" {im.n_frames} frames" if getattr(im, "n_frames", 1) > 1 else ""),
                )
            orientation = _orientation(im)
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale, still >= max_side, so a
            # 12000x12000 photo never exists at full size in memory.
            im.draft("RGB", (max_side, max_side))
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:
                raise BadImage(
                    f"too large: {im.width}x{im.height} pixels (limit {limit}); downscale it"
                )
            im.load()  # the full decode: this is where truncated files fail
            stage = f"cannot convert colour mode {im.mode}"
            return _to_rgb(im, max_side, orientation)
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except Image.DecompressionBombError:
        raise BadImage(f"too large: more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels") from None
    except (BadImage, MemoryError):
        raise
    except Exception as exc:  # Pillow raises many types on bad data
        raise BadImage(
            f"{stage}: {' '.join(str(exc).split())[:100] or type(exc).__name__}"
        ) from None


def _orientation(im: Any) -> int:
    """EXIF orientation (1..8); read before conversion, which drops TIFF tags."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # corrupt EXIF: show the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb(im: Any, max_side: int, orientation: int) -> np.ndarray:
    """Any Pillow mode -> upright RGB uint8, longest side <= max_side, alpha on white."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        im = _high_depth_to_l(im)
    elif "transparency" in im.info or mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):  # 1, P, CMYK, YCbCr, ...: resize needs real colours
        im = im.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # reduce() + Lanczos
    if orientation > 1:  # the table ImageOps.exif_transpose uses, applied after the downscale
        names = (
            "FLIP_LEFT_RIGHT ROTATE_180 FLIP_TOP_BOTTOM TRANSPOSE ROTATE_270 TRANSVERSE ROTATE_90"
        )
        im = im.transpose(getattr(Image.Transpose, names.split()[orientation - 2]))
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        background.alpha_composite(im)
        im = background
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _high_depth_to_l(im: Any) -> Any:
    """16-bit, 32-bit and float grayscale to 8 bits by scaling, not clipping."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        top = 65535.0
    elif im.mode == "F":
        finite = a[np.isfinite(a)]
        hi = float(finite.max()) if finite.size else 0.0
        top = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0
    else:  # "I" holds 16-bit PNG/TIFF data, or 8-bit values widened
        top = 65535.0 if a.size and int(a.max()) > 255 else 255.0
    out = np.empty(a.shape, dtype=np.uint8)
    for r in range(0, a.shape[0], 512):  # row blocks bound the float temporaries
        block = np.nan_to_num(a[r : r + 512].astype(np.float32), nan=0.0)
        out[r : r + 512] = np.rint(np.clip(block, 0.0, top) * (255.0 / top)).astype(np.uint8)
    return Image.fromarray(out)


class Checked(NamedTuple):
    """What the scan learns about one file: its stat key, the SHA-256 of its bytes, why it is unusable
    (or None), and the picture as stored: width, height and ``"FORMAT MODE"`` (e.g. ``"GIF P"``,
    ``"JPEG CMYK"``, with ``" N frames"`` when animated), which data health reads (``autotl.health``)."""

    size: int
    mtime_ns: int
    sha256: str
    reason: str | None
    width: int = 0
    height: int = 0
    mode: str = ""


def check_file(path: str, max_side: int) -> Checked:
    """Stat, read, hash and decode one file.  The stat comes first, so a file changed while it is
    read looks changed (a new size or mtime) to the next scan and is read again."""
    try:
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    facts: dict[str, Any] = {}
    try:
        data = _read(path)
        _decode_bytes(data, max_side, facts)
    except BadImage as exc:
        return Checked(size, mtime, "", str(exc), **facts)
    return Checked(size, mtime, hashlib.sha256(data).hexdigest(), None, **facts)


def check_files(paths: list[str], max_side: int) -> list[Checked]:
    """:func:`check_file` for a chunk of files (one task of a worker)."""
    return [check_file(p, max_side) for p in paths]


def decode_files(paths: list[str], max_side: int) -> list[np.ndarray | str]:
    """The pixels of each file of a chunk, or the reason it no longer decodes (one task of a worker process)."""
    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            out.append(_decode_bytes(_read(path), max_side))
        except BadImage as exc:
            out.append(str(exc))
    return out


def default_workers() -> int:
    """The cores this process may use: the default number of decoding processes."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Fewer files than this are decoded by threads in the search's process: starting processes (a spawn and
#: their imports, a second or more on a busy machine) costs more than a few hundred images take to decode.
THREADS_BELOW = 2000


def workers_for(files: int, asked: Optional[int] = None) -> int:
    """Decoding processes for ``files`` files: ``asked`` if given, else threads (0) for a few hundred,
    else one per core."""
    if asked is not None:
        return asked
    return 0 if files < THREADS_BELOW else default_workers()


_POOLS: dict[int, Any] = {}


def _start_worker(parent: int) -> None:
    """A worker process: Ctrl-C is the main process's to handle; Pillow's warnings are dropped (the reason counts);
    it exits when its parent is gone (killed with SIGKILL, say), rather than living on as an orphan
    that holds the parent's output pipes open."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")

    def watch() -> None:  # ``parent`` comes from the parent: it may be gone before this runs
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="autotl-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Start processes that do not run the caller's ``__main__`` again.

    ``spawn`` re-imports the main script in every new process, which runs a
    script's search again when it has no ``if __name__ == "__main__"`` guard.
    The workers need only this module, so they are shown an empty main module.
    """
    import sys
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _pool(workers: int) -> Any:
    """This process's executor for ``workers`` processes (0: threads in this process), started once and reused."""
    if workers not in _POOLS:
        import atexit
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        if workers <= 0:
            # threads share the warning filters: set once here, never per file (not thread-safe)
            warnings.filterwarnings("ignore", module=r"PIL\.")
            _POOLS[workers] = ThreadPoolExecutor(min(4, default_workers()), "autotl-decode")
        else:
            import multiprocessing

            pool = ProcessPoolExecutor(
                workers,
                multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
            with _without_main():  # every worker is started now, none later
                for started in [pool.submit(os.getpid) for _ in range(workers)]:
                    started.result()
            _POOLS[workers] = pool
        if len(_POOLS) == 1:
            atexit.register(shutdown)
    return _POOLS[workers]


def shutdown() -> None:
    """Stop every pool this process started (at exit, or to free the worker processes)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=False, cancel_futures=True)


def ordered(
    fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]], workers: int, depth: int | None = None
) -> Iterator[Any]:
    """``fn(*task)`` for every task, run by ``workers`` processes (0: threads here), results in task order.

    At most ``depth`` tasks are in flight (default: twice the workers), so a
    slow consumer holds a bounded number of results, whatever the number of
    tasks.  Closing the iterator early cancels what has not started.
    """
    from concurrent.futures.process import BrokenProcessPool

    depth = max(1, depth or 2 * max(workers, 1))
    pool = _pool(workers)
    pending: deque[Any] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        _POOLS.pop(workers, None)
        raise UsageError(
            "a decoding worker process died (killed, or out of memory on a huge image); "
            "rerun, or pass --decode-workers 0 to decode in this process"
        ) from None
    finally:
        for future in pending:
            future.cancel()
