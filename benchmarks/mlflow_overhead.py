"""What MLflow logging adds to a search: the same 20-trial search with and without ``--mlflow``, in one run.

A real ``mlflow server`` (SQLite backend, local artifact folder) is started on
127.0.0.1.  The feature cache is built first by a one-trial search and shared
(``cache_dir``), so neither timed search pays for it; then the searches run in
the order ``plain, mlflow, plain, mlflow`` (each in a fresh run folder, the same
seed and space), so a change in the machine's load hits both kinds alike.  The
time spent inside MLflow calls is also measured directly (each trial's logging
as it finishes, and the sync at the end that registers the best model).

    AUTOTL_WEIGHTS_DIR=../shared/weights python benchmarks/mlflow_overhead.py --trials 20

Writes ``--out/mlflow_overhead.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        uri = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.5)
            yield uri
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class Timer:
    """Seconds spent in the MLflow logger's calls (instrumentation for this benchmark only)."""

    def __init__(self) -> None:
        from autotl.integrations import mlflow as module

        self.seconds: dict[str, float] = {"trial": 0.0, "sync": 0.0}
        self.calls: dict[str, int] = {"trial": 0, "sync": 0}
        for name in self.seconds:
            original = getattr(module.StudyLogger, name)
            setattr(module.StudyLogger, name, self._timed(name, original))

    def _timed(self, name: str, original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return wrapper

    def take(self) -> dict[str, Any]:
        taken = {"seconds": dict(self.seconds), "calls": dict(self.calls)}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)
        return taken


def one_search(out: Path, cache: Path, trials: int, uri: str | None) -> float:
    import autotl

    start = time.perf_counter()
    autotl.search(
        sample="digits",
        out=out,
        space="fast",
        trials=trials,
        cache_dir=cache,
        mlflow=uri,
        report=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-mlflow"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cache = args.out / "cache"
    timer = Timer()
    record: dict[str, Any] = {
        "trials": args.trials,
        "load_average": os.getloadavg(),
        "searches": [],
    }
    with mlflow_server(args.out / "mlflow") as uri:
        one_search(args.out / "warm", cache, 1, None)  # builds the feature cache both kinds share
        for repeat in range(args.repeats):
            for kind in ("plain", "mlflow"):
                seconds = one_search(
                    args.out / f"{kind}{repeat}",
                    cache,
                    args.trials,
                    uri if kind == "mlflow" else None,
                )
                record["searches"].append(
                    {"kind": kind, "wall_seconds": seconds, "in_mlflow": timer.take()}
                )
                print(f"{kind} search {repeat}: {seconds:.1f} s", flush=True)
    record["load_average_after"] = os.getloadavg()
    (args.out / "mlflow_overhead.json").write_text(json.dumps(record, indent=2))
    print(table(record))


def table(record: dict[str, Any]) -> str:
    plain = [s["wall_seconds"] for s in record["searches"] if s["kind"] == "plain"]
    logged = [s for s in record["searches"] if s["kind"] == "mlflow"]
    with_ml = [s["wall_seconds"] for s in logged]
    spent = [s["in_mlflow"] for s in logged]
    per_trial = [m["seconds"]["trial"] / max(1, m["calls"]["trial"]) for m in spent]
    sync = [m["seconds"]["sync"] for m in spent]
    share = [(m["seconds"]["trial"] + m["seconds"]["sync"]) / w for m, w in zip(spent, with_ml)]
    return "\n".join(
        [
            f"{record['trials']} trials, digits, space fast; load average {record['load_average'][0]:.1f} "
            f"before, {record['load_average_after'][0]:.1f} after",
            "",
            "| | without MLflow | with `--mlflow` | ratio |",
            "|---|---:|---:|---:|",
            f"| search wall time (each run) | {', '.join(f'{s:.0f} s' for s in plain)} | "
            f"{', '.join(f'{s:.0f} s' for s in with_ml)} | "
            f"{statistics.median(with_ml) / statistics.median(plain):.3f} |",
            f"| in MLflow calls: per trial, as it finishes | | {statistics.median(per_trial):.2f} s | |",
            f"| in MLflow calls: the end (best model logged and registered) | | {statistics.median(sync):.1f} s | |",
            f"| share of the search spent in MLflow calls | | {', '.join(f'{x:.1%}' for x in share)} | |",
        ]
    )


if __name__ == "__main__":
    main()
