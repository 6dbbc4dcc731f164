"""The Java inference service (serving/java) under load: batching on against off, a hot reload and a broken
version under 8 clients, and its memory over 10 reloads.

    make serving
    python benchmarks/serving.py --v1 BASE/1 --v2 BASE/2 [--rounds 2] [--out serving.json]

``--v1`` and ``--v2`` are two ``autotl export`` folders of different models (for example one trial exported
with ``--version next`` and again with ``--tta flip --version next``). Every service listens on 127.0.0.1.

1. **Batching.** Two services on ``--v1``, one with ``--enable-batching`` and one without, started side by
   side; then, for 1, 8 and 32 concurrent clients on keep-alive connections, each sending one validation
   JPEG at a time to ``/v1/classify``, the two are loaded in turn (off, on, off, on, ... for ``--rounds``
   rounds), so both see the same machine load. Throughput, p50 and p99 of each round.
2. **Hot reload.** A service on a base folder holding ``--v1`` as version 1 (``--poll-seconds 1``); 8 clients
   send requests (alternating /v1/classify and :predict) while ``--v2`` is put in place as version 2 (staged
   hidden, then renamed, as ``autotl export --version`` does), and then a broken version 3. Every answer's
   status and version (the ``X-Model-Version`` header) is kept.
3. **Memory.** A service on a base folder, 10 reloads (versions 2..11, alternately ``--v2`` and ``--v1``),
   each waited for until the version before it is unloaded and then sent 20 requests; the service's RSS
   (``process_resident_memory_bytes`` from its metrics) after the first load and after each reload.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
SERVE = HERE.parent / "serving" / "java" / "serve"
SHARED = Path(os.environ.get("AUTOTL_SHARED", HERE.parent.parent / "shared"))
CLIENTS = (1, 8, 32)
REQUESTS = {1: 150, 8: 50, 32: 20}  # per client, per round


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``serving/java/serve`` on a loopback port."""

    def __init__(self, model: Path, log: Path, *args: str, env: Optional[dict] = None) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [str(SERVE), str(model), "--port", str(self.port), *args],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited:\n{log.read_text()[-3000:]}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the service did not become healthy")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/monitoring/prometheus/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def states(self) -> list[tuple[str, str]]:
        status = json.loads(self.get("/v1/models/default")[1])["model_version_status"]
        return [(v["version"], v["state"]) for v in status]

    def wait_for(self, versions: list[tuple[str, str]], timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while self.states()[: len(versions)] != versions:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit(f"expected {versions}, got {self.states()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def images() -> list[bytes]:
    files = sorted(p for p in (SHARED / "data" / "hymenoptera" / "val").rglob("*") if p.is_file())
    return [p.read_bytes() for p in files]


def load(
    port: int,
    clients: int,
    per_client: int,
    data: list[bytes],
    alternate: bool = False,
    stop: Optional[threading.Event] = None,
) -> dict[str, Any]:
    """``clients`` threads on keep-alive connections, ``per_client`` requests each (fewer once ``stop`` is set);
    returns latencies, statuses and versions answered."""
    results: list[list[tuple[float, float, int, Optional[str]]]] = [[] for _ in range(clients)]
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(d).decode()}]}) for d in data]
    go = threading.Barrier(clients)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        go.wait()
        for k in range(per_client):
            if stop is not None and stop.is_set():
                break
            i = (c * 37 + k) % len(data)
            predict = alternate and k % 2 == 1
            path = "/v1/models/default:predict" if predict else "/v1/classify"
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=bodies[i] if predict else data[i])
                r = conn.getresponse()
                r.read()
                status, version = r.status, r.getheader("X-Model-Version")
            except OSError:
                status, version = 0, None
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            results[c].append((t0, time.perf_counter() - t0, status, version))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    ms = np.array([r[1] for r in flat]) * 1000
    return {
        "requests": len(flat),
        "failed": sum(r[2] != 200 for r in flat),
        "per_second": len(flat) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rows": flat,
    }


def batching(v1: Path, tmp: Path, data: list[bytes], rounds: int) -> dict[str, Any]:
    servers = {
        "off": Server(v1, tmp / "off.log"),
        "on": Server(v1, tmp / "on.log", "--enable-batching"),
    }
    out: dict[str, Any] = {}
    try:
        for clients in CLIENTS:
            for mode in servers:
                load(servers[mode].port, clients, 5, data)  # warm the connections and the JIT
            for r in range(rounds):
                for mode, server in servers.items():
                    res = load(server.port, clients, REQUESTS[clients], data)
                    res.pop("rows")
                    out.setdefault(f"{clients}", {}).setdefault(mode, []).append(res)
                    print(
                        f"{clients:>2} clients, batching {mode:>3}, round {r + 1}: {res['per_second']:6.1f} req/s, "
                        f"p50 {res['p50_ms']:6.1f} ms, p99 {res['p99_ms']:6.1f} ms, {res['failed']} failed",
                        flush=True,
                    )
        out["batches"] = {
            mode: {
                "runs": s.metrics()["autotl_serving_batch_size_count"],
                "images": s.metrics()["autotl_serving_batch_size_sum"],
            }
            for mode, s in servers.items()
        }
    finally:
        for s in servers.values():
            s.stop()
    return out


def install(base: Path, number: int, source: Path) -> None:
    """Stage hidden, then rename into place: what ``autotl export --version`` does."""
    staging = base / f".{number}.partial-{os.getpid()}"
    shutil.copytree(source, staging, copy_function=os.link)
    os.rename(staging, base / str(number))


def reload_under_load(v1: Path, v2: Path, tmp: Path, data: list[bytes]) -> dict[str, Any]:
    base = tmp / "reload"
    base.mkdir()
    install(base, 1, v1)
    server = Server(base, tmp / "reload.log", "--poll-seconds", "1")
    events: dict[str, float] = {}
    result: dict[str, Any] = {}
    stop = threading.Event()

    def background() -> None:
        result.update(load(server.port, 8, 5000, data, alternate=True, stop=stop))

    try:
        loader = threading.Thread(target=background)
        loader.start()
        time.sleep(3)
        events["v2 installed"] = time.perf_counter()
        install(base, 2, v2)
        server.wait_for([("2", "AVAILABLE"), ("1", "END")])
        events["v1 unloaded"] = time.perf_counter()
        time.sleep(2)
        broken = base / f".3.partial-{os.getpid()}"
        (broken / "savedmodel").mkdir(parents=True)
        (broken / "savedmodel" / "saved_model.pb").write_bytes(b"not a SavedModel")
        events["v3 (broken) installed"] = time.perf_counter()
        os.rename(broken, base / "3")
        server.wait_for([("3", "END"), ("2", "AVAILABLE")])
        events["v3 refused"] = time.perf_counter()
        time.sleep(3)
        stop.set()
        loader.join()
        metrics = server.metrics()
    finally:
        server.stop()
    rows = sorted(result.pop("rows"))
    switch = next(t for t, _, _, v in rows if v == "2")
    result["versions"] = {v: sum(r[3] == v for r in rows) for v in ("1", "2")}
    result["after_v3"] = sum(1 for r in rows if r[0] >= events["v3 (broken) installed"])
    result["failed_after_v3"] = sum(
        1 for r in rows if r[0] >= events["v3 (broken) installed"] and r[2] != 200
    )
    result["first_v2_answer_after_install_s"] = switch - events["v2 installed"]
    result["events_s"] = {k: v - events["v2 installed"] for k, v in events.items()}
    result["metrics"] = {k: v for k, v in metrics.items() if "model_" in k and "bucket" not in k}
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=1), flush=True)
    return result


def memory(v1: Path, v2: Path, tmp: Path, data: list[bytes], reloads: int = 10) -> dict[str, Any]:
    base = tmp / "memory"
    base.mkdir()
    install(base, 1, v1)
    # a Java heap of fixed size, touched whole at start: the resident memory's changes are then TensorFlow's
    heap_opts = "-Xms256m -Xmx256m -XX:+AlwaysPreTouch"
    server = Server(base, tmp / "memory.log", "--poll-seconds", "1", env={"JAVA_OPTS": heap_opts})
    rss, heap = [], []

    def measure(what: str) -> None:
        load(server.port, 4, 5, data)
        m = server.metrics()
        rss.append(m["process_resident_memory_bytes"])
        heap.append(m["jvm_heap_committed_bytes"])
        print(
            f"{what}: RSS {rss[-1] / 2**20:.0f} MiB (Java heap {heap[-1] / 2**20:.0f} MiB)",
            flush=True,
        )

    try:
        measure("version 1 loaded")
        for n in range(2, reloads + 2):
            install(base, n, v2 if n % 2 == 0 else v1)
            server.wait_for([(str(n), "AVAILABLE"), (str(n - 1), "END")])
            measure(f"after reload {n - 1}")
    finally:
        server.stop()
    size = sum(f.stat().st_size for f in (v1 / "savedmodel").rglob("*") if f.is_file())
    return {"rss_bytes": rss, "heap_committed_bytes": heap, "model_bytes_on_disk": size}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--v1", type=Path, required=True)
    p.add_argument("--v2", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("serving-benchmark.json"))
    p.add_argument("--only", default="batching,reload,memory")
    args = p.parse_args()
    data = images()
    print(f"load average before: {os.getloadavg()}", flush=True)
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        if "batching" in args.only:
            out["batching"] = batching(args.v1, Path(tmp), data, args.rounds)
        if "reload" in args.only:
            out["reload"] = reload_under_load(args.v1, args.v2, Path(tmp), data)
        if "memory" in args.only:
            out["memory"] = memory(args.v1, args.v2, Path(tmp), data)
    out["load_after"] = os.getloadavg()
    print(f"load average after: {os.getloadavg()}", flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
