"""The Java inference service (serving/java), built and run for real, natively and in a Docker container.

One real search (MobileNet 0.25, ImageNet weights, on ../shared's hymenoptera) and one
``autotl export`` are shared by the module. The service is built with ``make -C serving/java``,
started on a loopback port, and checked against the Python SavedModel on the real validation
images (within 1e-4), under load (8 clients x 250 requests), with bad input of every kind, through
SIGTERM, and with its deployments recorded in the study's SQL lineage (SQLite and PostgreSQL). The
same prediction, load and bad-input checks run against the container image when a Docker daemon is
running (``.ci/run`` starts one). Properties are asserted, never timings; the measured latencies are
printed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from helpers import HYMENOPTERA, ROOT, SHARED_WEIGHTS, needs_shared, run_cli

SERVING = ROOT / "serving" / "java"
SERVE = SERVING / "serve"
TOLERANCE = 1e-4
LOAD_CLIENTS, LOAD_REQUESTS = 8, 250
IMAGE = f"autotl-serving:test-{os.getpid()}"

pytestmark = [
    needs_shared,
    pytest.mark.slow,  # builds the service, searches and exports a real model: `make test-fast` skips it
    pytest.mark.skipif(
        shutil.which("javac") is None or shutil.which("gcc") is None,
        reason="needs a JDK 17 and gcc (.ci/run has them)",
    ),
]


# --------------------------------------------------------------------------- the model, built service, reference


def report(config: pytest.Config, line: str) -> None:
    """Print a measurement to the terminal even while pytest captures output."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line, flush=True)


@pytest.fixture(scope="session")
def built(request) -> Path:
    """``make -C serving/java``, as docs/guide/serving.md says."""
    start = time.perf_counter()
    proc = subprocess.run(["make", "-C", str(SERVING)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (SERVING / "build" / "autotl-serving.jar").is_file() and (
        SERVING / "build" / "lib" / "libautotl_tf.so"
    ).is_file()
    report(request.config, f"make -C serving/java: {time.perf_counter() - start:.1f} s")
    return SERVING


@pytest.fixture(scope="session")
def run_and_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real one-trial search on hymenoptera with MobileNet 0.25, exported as a SavedModel inside the run folder,
    as version 1 of the base folder RUN/versions (``autotl export --version next``)."""
    run = tmp_path_factory.mktemp("serving") / "run"
    proc = run_cli(
        "search",
        str(HYMENOPTERA),
        "--space",
        "fast",
        "--backbone",
        "mobilenet-0.25",
        "--trials",
        "1",
        "--out",
        str(run),
        "--weights-dir",
        str(SHARED_WEIGHTS),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(
        "export",
        str(run),
        "--format",
        "savedmodel",
        "--out",
        str(run / "versions"),
        "--version",
        "next",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "versions").iterdir()) == ["1"]
    return run, run / "versions" / "1"


@pytest.fixture(scope="session")
def export_dir(run_and_export) -> Path:
    return run_and_export[1]


@pytest.fixture(scope="session")
def val_files() -> list[Path]:
    return sorted(p for p in (HYMENOPTERA / "val").rglob("*") if p.is_file())


@dataclass
class Reference:
    """What the Python SavedModel answers for each validation file (serving_bytes), and the signatures themselves."""

    labels: list[str]
    files: list[Path]
    data: list[bytes]
    probs: np.ndarray
    loaded: Any = field(repr=False)

    def pixels(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self.loaded.signatures["serving_default"](images=tf.constant(images))[
            "probabilities"
        ].numpy()


@pytest.fixture(scope="session")
def reference(export_dir: Path, val_files: list[Path]) -> Reference:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir / "savedmodel"))
    data = [p.read_bytes() for p in val_files]
    sig = loaded.signatures["serving_bytes"]
    probs = np.concatenate(
        [
            sig(image_bytes=tf.constant(data[s : s + 16]))["probabilities"].numpy()
            for s in range(0, len(data), 16)
        ]
    )
    labels = (export_dir / "labels.txt").read_text().split()
    return Reference(labels, val_files, data, probs, loaded)


# --------------------------------------------------------------------------- HTTP on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    body: bytes
    version: Optional[str] = None  # the X-Model-Version header: the model version that answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Optional[dict] = None,
    timeout: float = 120,
    chunked: bool = False,
) -> Reply:
    """One request to 127.0.0.1:port on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = conn.getresponse()
        return Reply(r.status, r.read(), r.getheader("X-Model-Version"))
    finally:
        conn.close()


def post_json(port: int, path: str, payload: Any) -> Reply:
    return http_request(
        port, "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )


def wait_healthy(port: int, alive: Callable[[], Optional[str]], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        problem = alive()
        if problem:
            raise AssertionError(problem)
        try:
            if http_request(port, "GET", "/healthz", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the service on port {port} did not become healthy")


@dataclass
class Service:
    """A running service: where it listens, and how to read its log and stop it."""

    kind: str
    port: int
    log: Callable[[], str]
    terminate: Callable[[], int]  # SIGTERM; returns the exit status


def start_native(
    model: Path, log_file: Path, *args: str, env: Optional[dict] = None
) -> tuple[Service, subprocess.Popen]:
    port = free_port()
    out = log_file.open("w")
    proc = subprocess.Popen(
        [str(SERVE), str(model), "--port", str(port), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )

    def alive() -> Optional[str]:
        return (
            None
            if proc.poll() is None
            else f"the service exited ({proc.returncode}):\n{log_file.read_text()[-3000:]}"
        )

    def terminate() -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=120)

    try:
        wait_healthy(port, alive)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Service("native", port, log_file.read_text, terminate), proc


@contextlib.contextmanager
def running_native(model: Path, log_file: Path, *args: str) -> Iterator[Service]:
    """``start_native`` for the length of a ``with`` block: killed after it if still running."""
    service, proc = start_native(model, log_file, *args)
    try:
        yield service
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def native(
    built: Path, export_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_native(export_dir, tmp_path_factory.mktemp("native") / "serve.log") as service:
        yield service


# --------------------------------------------------------------------------- Docker


def docker_problem() -> Optional[str]:
    """Why no container can run here, or None."""
    if shutil.which("docker") is None:
        return "the docker client is not installed (.ci/run installs docker.io)"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return (
            "the Docker daemon is not running or cannot start here (docker info: "
            f"{(info.stderr or info.stdout).strip().splitlines()[-1:]}); .ci/run starts it with dockerd --bridge=none --iptables=false"
        )
    return None


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def image(request, built: Path, export_dir: Path) -> Iterator[str]:
    """The container image with the export copied in (``make -C serving/java image MODEL=...``)."""
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    start = time.perf_counter()
    proc = subprocess.run(
        ["make", "-C", str(SERVING), "image", f"MODEL={export_dir}", f"IMAGE={IMAGE}"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = int(docker("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    report(
        request.config,
        f"make -C serving/java image: {time.perf_counter() - start:.1f} s; {IMAGE}: {size / 1e6:.0f} MB",
    )
    try:
        yield IMAGE
    finally:
        docker("image", "rm", "-f", IMAGE, check=False)


@contextlib.contextmanager
def start_container(image: str, *run_args: str, cmd: tuple[str, ...] = ()) -> Iterator[Service]:
    """The image run with the host's network (the only kind here), listening on a loopback port."""
    port = free_port()
    name = f"autotl-serving-test-{os.getpid()}-{port}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        *run_args,
        image,
        *(cmd or ("/model",)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )

    def log() -> str:
        return docker("logs", name, check=False).stdout + docker("logs", name, check=False).stderr

    def alive() -> Optional[str]:
        state = docker(
            "inspect", name, "--format", "{{.State.Running}}", check=False
        ).stdout.strip()
        return None if state == "true" else f"the container stopped:\n{log()[-3000:]}"

    def terminate() -> int:
        docker("stop", "--time", "60", name, timeout=120)  # SIGTERM, then SIGKILL after 60 s
        return int(docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip())

    try:
        wait_healthy(port, alive)
        yield Service("container", port, log, terminate)
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Service]:
    with start_container(image) as service:
        yield service


@pytest.fixture(scope="module", params=["native", "container"])
def service(request) -> Service:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- checks shared by both


def classify(port: int, data: bytes) -> Reply:
    return http_request(
        port, "POST", "/v1/classify", data, {"Content-Type": "application/octet-stream"}
    )


def assert_answers(port: int, reference: Reference, i: int = 0) -> None:
    """The service is up and still right: health, then one real prediction."""
    health = http_request(port, "GET", "/healthz")
    assert health.json.get("status") == "ok", (health.status, health.body)
    r = classify(port, reference.data[i])
    assert r.status == 200, r.body[:500]
    assert (
        np.abs(
            np.array([r.json["probabilities"][c] for c in reference.labels]) - reference.probs[i]
        ).max()
        <= TOLERANCE
    )


def test_predictions_equal_the_python_savedmodel(service: Service, reference: Reference) -> None:
    port = service.port
    # /v1/classify on every validation file's raw bytes
    for i, data in enumerate(reference.data):
        r = classify(port, data)
        assert r.status == 200, (reference.files[i], r.body[:500])
        got = np.array([r.json["probabilities"][c] for c in reference.labels])
        assert np.abs(got - reference.probs[i]).max() <= TOLERANCE, reference.files[i]
        assert r.json["label"] == reference.labels[int(np.argmax(reference.probs[i]))]
        assert r.json["probability"] == pytest.approx(
            float(reference.probs[i].max()), abs=TOLERANCE
        )
    # TF Serving's row format with {"b64": ...}, in batches, with and without the signature name
    for start in range(0, len(reference.data), 16):
        chunk = reference.data[start : start + 16]
        bare = {"instances": [{"b64": base64.b64encode(d).decode()} for d in chunk]}
        named = {
            "signature_name": "serving_bytes",
            "instances": [{"image_bytes": {"b64": base64.b64encode(d).decode()}} for d in chunk],
        }
        for payload in (bare, named):
            r = post_json(port, "/v1/models/default:predict", payload)
            assert r.status == 200, r.body[:500]
            preds = r.json["predictions"]
            assert len(preds) == len(chunk)
            got = np.array([p["probabilities"] for p in preds])
            assert np.abs(got - reference.probs[start : start + len(chunk)]).max() <= TOLERANCE
            assert [p["classes"] for p in preds] == [
                reference.labels[k]
                for k in np.argmax(reference.probs[start : start + len(chunk)], 1)
            ]
    # the columnar format
    r = post_json(
        port,
        "/v1/models/default:predict",
        {
            "signature_name": "serving_bytes",
            "inputs": {
                "image_bytes": [{"b64": base64.b64encode(d).decode()} for d in reference.data[:4]]
            },
        },
    )
    assert r.status == 200, r.body[:500]
    assert (
        np.abs(np.array(r.json["outputs"]["probabilities"]) - reference.probs[:4]).max()
        <= TOLERANCE
    )
    # decoded pixels (serving_default): nested uint8 lists, one image and a batch of two of one size
    from PIL import Image

    for i in (0, len(reference.data) // 2, len(reference.data) - 1):
        with Image.open(io.BytesIO(reference.data[i])) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        for payload, batch in (
            ({"instances": [pixels.tolist()]}, pixels[None]),
            (
                {
                    "signature_name": "serving_default",
                    "instances": [{"images": pixels[:64, :80].tolist()}] * 2,
                },
                np.stack([pixels[:64, :80]] * 2),
            ),
            ({"inputs": {"images": pixels[None, :50, :60].tolist()}}, pixels[None, :50, :60]),
        ):
            r = post_json(port, "/v1/models/default:predict", payload)
            assert r.status == 200, r.body[:500]
            got = (
                np.array([p["probabilities"] for p in r.json["predictions"]])
                if "predictions" in r.json
                else np.array(r.json["outputs"]["probabilities"])
            )
            assert np.abs(got - reference.pixels(batch)).max() <= TOLERANCE


def test_metadata_names_the_model_its_hash_and_lineage(service: Service, export_dir: Path) -> None:
    port = service.port
    meta = http_request(port, "GET", "/v1/models/default/metadata").json
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "serving_bytes"}
    assert sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert [
        d["size"] for d in sigs["serving_default"]["inputs"]["images"]["tensor_shape"]["dim"]
    ] == ["-1", "-1", "-1", "3"]
    assert sigs["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert meta["labels"] == (export_dir / "labels.txt").read_text().split()
    assert (
        meta["sha256"]
        == hashlib.sha256((export_dir / "savedmodel" / "saved_model.pb").read_bytes()).hexdigest()
    )
    assert meta["lineage"]["export_parity"]["passed"] is True
    assert meta["lineage"]["export_parity"]["trial"] == 0
    status = http_request(port, "GET", "/v1/models/default").json
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_load_eight_clients(request, service: Service, reference: Reference) -> None:
    """8 clients x 250 requests on keep-alive connections, alternating /v1/classify and :predict with one b64 image."""
    port = service.port
    n = len(reference.data)
    encoded = [
        json.dumps({"instances": [{"b64": base64.b64encode(d).decode()}]}).encode()
        for d in reference.data
    ]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine: list[float] = []
        try:
            for k in range(LOAD_REQUESTS):
                i = (c * LOAD_REQUESTS + k) % n
                path, body = (
                    ("/v1/classify", reference.data[i])
                    if k % 2 == 0
                    else ("/v1/models/default:predict", encoded[i])
                )
                t0 = time.perf_counter()
                conn.request("POST", path, body=body)
                r = conn.getresponse()
                payload = r.read()
                mine.append(time.perf_counter() - t0)
                if r.status != 200:
                    failures.append(f"{path} {r.status} {payload[:200]!r}")
                    continue
                answer = json.loads(payload)
                got = (
                    np.array([answer["probabilities"][lb] for lb in reference.labels])
                    if k % 2 == 0
                    else np.array(answer["predictions"][0]["probabilities"])
                )
                if np.abs(got - reference.probs[i]).max() > TOLERANCE:
                    failures.append(f"{path} image {i}: {got} != {reference.probs[i]}")
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(LOAD_CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    wall = time.perf_counter() - start
    assert not any(t.is_alive() for t in threads)
    assert failures == [], failures[:5]
    assert len(latencies) == LOAD_CLIENTS * LOAD_REQUESTS
    ms = np.array(latencies) * 1000
    line = (
        f"load ({service.kind}): {LOAD_CLIENTS} clients x {LOAD_REQUESTS} requests, 0 errors; p50 {np.percentile(ms, 50):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, {len(ms) / wall:.1f} requests/s ({os.cpu_count()} CPUs)"
    )
    report(request.config, line)
    health = http_request(port, "GET", "/healthz")
    assert health.json.get("status") == "ok", (health.status, health.body)


# --------------------------------------------------------------------------- bad input


def png_header_image(width: int, height: int) -> bytes:
    """A real, decodable 1-bit grey PNG of width x height (all black): tiny on disk, huge decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def huge_images() -> dict[str, bytes]:
    """12000 x 12000 images, as PNG (1-bit) and as JPEG (grey): both open in Pillow."""
    from PIL import Image

    png = png_header_image(12000, 12000)
    buf = io.BytesIO()
    Image.new("L", (12000, 12000), 128).save(buf, format="JPEG", quality=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # that is the point of them
        for data in (png, buf.getvalue()):
            with Image.open(io.BytesIO(data)) as im:
                assert im.size == (12000, 12000)
    return {"png": png, "jpeg": buf.getvalue()}


def b64_predict(data: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()


HUNDRED_MB = 100 * 1024 * 1024


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    block = b"\x00" * size
    for _ in range(total // size):
        yield block


#: name -> (method, path, body or a function of (reference, huge) making it, chunked, expected status)
BAD: dict[str, tuple[str, str, Any, bool, int]] = {
    "classify empty body": ("POST", "/v1/classify", b"", False, 400),
    "predict empty body": ("POST", "/v1/models/default:predict", b"", False, 400),
    "classify non-image bytes": (
        "POST",
        "/v1/classify",
        b"this is not an image, just text " * 40,
        False,
        400,
    ),
    "predict non-image b64": (
        "POST",
        "/v1/models/default:predict",
        b64_predict(b"GIF89 no" + os.urandom(3000)),
        False,
        400,
    ),
    "classify truncated JPEG": (
        "POST",
        "/v1/classify",
        lambda ref, huge: ref.data[0][: len(ref.data[0]) // 2],
        False,
        400,
    ),
    "predict truncated JPEG": (
        "POST",
        "/v1/models/default:predict",
        lambda ref, huge: b64_predict(ref.data[1][: len(ref.data[1]) // 3]),
        False,
        400,
    ),
    "classify JPEG cut in its header": (
        "POST",
        "/v1/classify",
        lambda ref, huge: ref.data[2][:40],
        False,
        400,
    ),
    "classify 12000x12000 PNG": ("POST", "/v1/classify", lambda ref, huge: huge["png"], False, 413),
    "classify 12000x12000 JPEG": (
        "POST",
        "/v1/classify",
        lambda ref, huge: huge["jpeg"],
        False,
        413,
    ),
    "predict 12000x12000 PNG": (
        "POST",
        "/v1/models/default:predict",
        lambda ref, huge: b64_predict(huge["png"]),
        False,
        413,
    ),
    "classify 100 MB body": (
        "POST",
        "/v1/classify",
        lambda ref, huge: b"\xff\xd8\xff" + b"\x00" * (HUNDRED_MB - 3),
        False,
        413,
    ),
    "predict 100 MB body": (
        "POST",
        "/v1/models/default:predict",
        lambda ref, huge: b"[" + b" " * (HUNDRED_MB - 1),
        False,
        413,
    ),
    "classify 100 MB chunked body": (
        "POST",
        "/v1/classify",
        lambda ref, huge: chunks(HUNDRED_MB),
        True,
        413,
    ),
    "malformed JSON: not JSON": ("POST", "/v1/models/default:predict", b"instances=1", False, 400),
    "malformed JSON: cut short": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [{"b64": "aGVsbG8',
        False,
        400,
    ),
    "malformed JSON: trailing comma": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [1,]}',
        False,
        400,
    ),
    "malformed JSON: 100000 levels deep": (
        "POST",
        "/v1/models/default:predict",
        b"[" * 100000 + b"]" * 100000,
        False,
        400,
    ),
    "malformed JSON: invalid UTF-8": (
        "POST",
        "/v1/models/default:predict",
        b'{"signature_name": "\xff\xfe"}',
        False,
        400,
    ),
    "malformed JSON: duplicate key": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [], "instances": []}',
        False,
        400,
    ),
    "malformed JSON: garbage after": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[1,2,3]]]]} {}',
        False,
        400,
    ),
    "JSON array, not object": ("POST", "/v1/models/default:predict", b"[1, 2, 3]", False, 400),
    "both instances and inputs": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[1,2,3]]]], "inputs": [[[[1,2,3]]]]}',
        False,
        400,
    ),
    "unknown field": (
        "POST",
        "/v1/models/default:predict",
        b'{"instancez": [[[[1,2,3]]]]}',
        False,
        400,
    ),
    "unknown signature": (
        "POST",
        "/v1/models/default:predict",
        b'{"signature_name": "nope", "instances": [[[[1,2,3]]]]}',
        False,
        400,
    ),
    "empty instances": ("POST", "/v1/models/default:predict", b'{"instances": []}', False, 400),
    "shape: 4 channels": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[1,2,3,4],[5,6,7,8]]]]}',
        False,
        400,
    ),
    "shape: ragged rows": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[1,2,3],[4,5,6]],[[7,8,9]]]]}',
        False,
        400,
    ),
    "shape: 2-D image": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[1,2,3],[4,5,6]]]}',
        False,
        400,
    ),
    "shape: flat numbers": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [1, 2, 3]}',
        False,
        400,
    ),
    "shape: instances of two sizes": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[1,2,3]]], [[[1,2,3],[4,5,6]]]]}',
        False,
        400,
    ),
    "shape: columnar without batch": (
        "POST",
        "/v1/models/default:predict",
        b'{"inputs": {"images": [[[1,2,3]]]}}',
        False,
        400,
    ),
    "shape: empty image": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[]]]}',
        False,
        400,
    ),
    "value: 256": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[256,0,0]]]]}',
        False,
        400,
    ),
    "value: negative": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[-1,0,0]]]]}',
        False,
        400,
    ),
    "value: fraction": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[[0.5,0,0]]]]}',
        False,
        400,
    ),
    "value: strings for pixels": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [[[["a","b","c"]]]]}',
        False,
        400,
    ),
    "value: bad base64": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [{"b64": "***"}]}',
        False,
        400,
    ),
    "value: b64 not a string": (
        "POST",
        "/v1/models/default:predict",
        b'{"instances": [{"b64": 12}]}',
        False,
        400,
    ),
    "wrong input name": (
        "POST",
        "/v1/models/default:predict",
        b'{"signature_name": "serving_default", "instances": [{"pixels": [[[1,2,3]]]}]}',
        False,
        400,
    ),
    "unknown model": (
        "POST",
        "/v1/models/other:predict",
        b'{"instances": [[[[1,2,3]]]]}',
        False,
        404,
    ),
    "unknown verb": (
        "POST",
        "/v1/models/default:classify",
        b'{"instances": [[[[1,2,3]]]]}',
        False,
        404,
    ),
    "unknown path": ("GET", "/v2/anything", None, False, 404),
    "GET on predict": ("GET", "/v1/models/default:predict", None, False, 405),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_json_4xx_and_the_service_answers_after(
    case: str, service: Service, reference: Reference, huge_images
) -> None:
    method, path, body, chunked, status = BAD[case]
    if callable(body):
        body = body(reference, huge_images)
    r = http_request(
        service.port,
        method,
        path,
        body,
        {"Content-Type": "application/octet-stream"},
        chunked=chunked,
    )
    assert r.status == status, (r.status, r.body[:500])
    error = r.json["error"]
    assert isinstance(error, str) and error
    assert_answers(service.port, reference)


def test_tf_serving_client_works_unchanged(service: Service, reference: Reference) -> None:
    """examples/serving/client.py, written for TensorFlow Serving, in both of its modes."""
    files = [str(reference.files[i]) for i in (0, 77, len(reference.files) - 1)]
    url = f"http://127.0.0.1:{service.port}"
    for mode in ((), ("--pixels",)):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "serving" / "client.py"),
                "--url",
                url,
                "--model",
                "default",
                *mode,
                *files,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line.split("\t") for line in proc.stdout.splitlines()]
        assert [line[0] for line in lines] == files
        if not mode:  # the files' own bytes: exactly what the Python SavedModel saw
            for (_, label, prob), i in zip(lines, (0, 77, len(reference.files) - 1)):
                assert label == reference.labels[int(np.argmax(reference.probs[i]))]
                assert float(prob) == pytest.approx(float(reference.probs[i].max()), abs=1e-3)


def test_a_full_queue_is_answered_503_and_the_service_carries_on(
    built: Path, export_dir: Path, reference: Reference, tmp_path: Path
) -> None:
    service, proc = start_native(
        export_dir, tmp_path / "serve.log", "--threads", "1", "--queue", "1"
    )
    try:
        batch = b64_batch(reference, 48)
        replies: list[Reply] = []

        def client() -> None:
            replies.append(
                http_request(service.port, "POST", "/v1/models/default:predict", batch, timeout=300)
            )

        clients = [threading.Thread(target=client) for _ in range(12)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=600)
        assert len(replies) == 12
        assert {r.status for r in replies} <= {200, 503}
        refused = [r for r in replies if r.status == 503]
        assert refused and all("overloaded" in r.json["error"] for r in refused)
        for r in replies:
            if r.status == 200:
                assert (
                    np.abs(
                        np.array([p["probabilities"] for p in r.json["predictions"]])
                        - reference.probs[:48]
                    ).max()
                    <= TOLERANCE
                )
        # With one worker and a queue of one, even a closing connection (the server reads its end of
        # stream as an exchange) can fill the pool for a moment: until the burst is over, an answer
        # may still be that JSON 503, and nothing else.
        end = time.monotonic() + 120
        for path, body in (("/healthz", None), ("/v1/classify", reference.data[0])):
            while (
                r := http_request(service.port, "POST" if body else "GET", path, body)
            ).status == 503:
                assert (
                    "overloaded" in r.json["error"]
                    and proc.poll() is None
                    and time.monotonic() < end
                ), r.body
                time.sleep(0.2)
            assert r.status == 200, r.body
        assert (
            np.abs(
                np.array([r.json["probabilities"][c] for c in reference.labels])
                - reference.probs[0]
            ).max()
            <= TOLERANCE
        )
    finally:
        proc.kill()
        proc.wait()


def test_a_client_that_never_finishes_its_request_is_cut_off(
    built: Path, export_dir: Path, reference: Reference, tmp_path: Path
) -> None:
    """Slow clients cannot hold the workers: a request must arrive within maxReqTime (60 s; 2 s here)."""
    service, proc = start_native(
        export_dir,
        tmp_path / "serve.log",
        "--threads",
        "2",
        env={"JAVA_OPTS": "-Dsun.net.httpserver.maxReqTime=2"},
    )
    try:
        stalled = []
        for _ in range(4):  # twice as many as there are workers
            s = socket.create_connection(("127.0.0.1", service.port), timeout=60)
            s.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                + reference.data[0][:1000]
            )
            stalled.append(s)
        for s in stalled:
            try:
                rest = s.recv(
                    65536
                )  # the server gives up on it: an error answer, or the connection closed
            except ConnectionResetError:
                rest = b""
            assert rest == b"" or rest.startswith(b"HTTP/1.1 400"), rest[:200]
            s.close()
        assert_answers(service.port, reference)
    finally:
        proc.kill()
        proc.wait()


def b64_batch(reference: Reference, n: int) -> bytes:
    return json.dumps(
        {"instances": [{"b64": base64.b64encode(d).decode()} for d in reference.data[:n]]}
    ).encode()


# --------------------------------------------------------------------------- shutdown


def test_sigterm_drains_requests_in_flight_and_exits_0(
    built: Path, export_dir: Path, reference: Reference, tmp_path: Path
) -> None:
    service, proc = start_native(export_dir, tmp_path / "serve.log", "--threads", "8")
    try:
        assert_drains(service, reference)
        assert "stopped after" in service.log()
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_drains(service: Service, reference: Reference) -> None:
    """Six heavy requests in flight, then SIGTERM: every one is answered in full, the exit status is 0, the port closes."""
    batch = b64_batch(reference, 48)
    replies: list[Reply] = []
    errors: list[str] = []

    def client() -> None:
        try:
            replies.append(
                http_request(service.port, "POST", "/v1/models/default:predict", batch, timeout=300)
            )
        except Exception as exc:
            errors.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(6)]
    for t in clients:
        t.start()
    # probe on one kept-alive connection: a closed one would count as an exchange of its own for a moment
    probe = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    end = time.monotonic() + 120
    in_flight = 0
    while in_flight < 7 and time.monotonic() < end:  # all six, and this probe
        probe.request("GET", "/healthz")
        in_flight = json.loads(probe.getresponse().read())["in_flight"]
        time.sleep(0.01)
    assert in_flight == 7, f"only {in_flight - 1} of the 6 requests were in flight together"
    status = service.terminate()
    probe.close()
    for t in clients:
        t.join(timeout=300)
    assert errors == [] and len(replies) == 6, errors
    for r in replies:
        assert r.status == 200, r.body[:300]
        got = np.array([p["probabilities"] for p in r.json["predictions"]])
        assert np.abs(got - reference.probs[:48]).max() <= TOLERANCE
    assert status == 0
    with pytest.raises(OSError):
        http_request(service.port, "GET", "/healthz", timeout=5)


def test_container_drains_on_docker_stop_and_exits_0(image: str, reference: Reference) -> None:
    with start_container(image) as service:
        assert_drains(service, reference)


def test_container_serves_a_mounted_model(
    request, image: str, export_dir: Path, reference: Reference
) -> None:
    # as root inside: pytest's temporary folders are private to their owner, the image's default user is nobody
    with start_container(
        image, "--user", "0:0", "-v", f"{export_dir}:/mounted:ro", cmd=("/mounted",)
    ) as service:
        assert_answers(service.port, reference, 3)
        assert (
            http_request(service.port, "GET", "/v1/models/default/metadata").json["model_path"]
            == "/mounted/savedmodel"
        )
    inside = docker(
        "run", "--rm", "--entrypoint", "/opt/autotl-serving/jre/bin/java", image, "--list-modules"
    ).stdout.split()
    assert {m.split("@")[0] for m in inside} <= {"java.base", "jdk.httpserver"}, (
        inside
    )  # a jlink'd runtime of what the jar uses
    gone = docker(
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "command -v python3 java javac || true",
    ).stdout.split()
    assert gone == [], gone
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())
    report(
        request.config,
        f"container image {image}: {size / 1e6:.0f} MB; Java modules: {' '.join(inside)}",
    )


def test_container_serves_a_mounted_base_folder_of_versions(
    image: str, export_dir: Path, flip_version: Path, reference: Reference, flip_probs: np.ndarray
) -> None:
    """The container on a base folder of versions (mounted read-only), with batching and its metrics."""
    with start_container(
        image,
        "--user",
        "0:0",
        "-v",
        f"{export_dir.parent}:/models:ro",
        cmd=("/models", "--version-policy", "all", "--enable-batching"),
    ) as service:
        status = http_request(service.port, "GET", "/v1/models/default").json
        assert [(v["version"], v["state"]) for v in status["model_version_status"]] == [
            ("2", "AVAILABLE"),
            ("1", "AVAILABLE"),
        ]
        for version, want in (("1", reference.probs), ("2", flip_probs)):
            r = post_json(
                service.port,
                f"/v1/models/default/versions/{version}:predict",
                b64_instances(reference.data[:3]),
            )
            assert (r.status, r.version) == (200, version), r.body[:300]
            assert np.abs(probabilities(r) - want[:3]).max() <= TOLERANCE
        m = metrics(service.port)
        assert m['autotl_serving_model_version{model="default"}'] == 2
        assert m['autotl_serving_predictions_total{model="default",version="1"}'] == 1


# --------------------------------------------------------------------------- lineage of deployments


def lineage_cli(model_file: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("lineage", str(model_file), *args)


def test_deployment_is_recorded_in_sqlite_lineage(
    built: Path, run_and_export, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, inspect

    from autotl.run.lineage import DEPLOYMENTS_TABLE, find_model, list_deployments
    from autotl.run.lineage import _deployments_table as python_table

    run, export = run_and_export
    graph = export / "savedmodel" / "saved_model.pb"
    storage = f"sqlite:///{run / 'study.db'}"
    before = list_deployments(storage, find_model(storage, graph)["sha256"])
    service, proc = start_native(export, tmp_path / "serve.log", "--storage", storage)
    try:
        url = f"http://127.0.0.1:{service.port}/v1/models/default"
        shown = lineage_cli(graph)  # finds run/study.db from the file's folders, as for any export
        assert shown.returncode == 0, shown.stderr
        assert f"deployed as default at {url}" in shown.stdout and " since " in shown.stdout
        record = json.loads(lineage_cli(graph, "--json").stdout)
        latest = record["deployments"][0]
        assert len(record["deployments"]) == len(before) + 1
        assert (
            latest["sha256"] == record["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
        )
        assert (latest["url"], latest["host"], latest["port"], latest["stopped"]) == (
            url + "/versions/1",
            "127.0.0.1",
            service.port,
            None,
        )
        assert latest["service"].startswith("autotl-serving-java ") and latest["pid"] == proc.pid
        # and the service found the export's lineage record by the same hash
        meta = http_request(service.port, "GET", "/v1/models/default/metadata").json
        assert meta["deployment"]["url"] == url + "/versions/1"
        assert [
            (r["kind"], r["trial_number"], r["backbone"]) for r in meta["lineage"]["records"]
        ] == [("export", 0, "mobilenet-0.25")]
        assert service.terminate() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = json.loads(lineage_cli(graph, "--json").stdout)["deployments"][0]
    assert stopped["stopped"] is not None and stopped["stopped"] >= stopped["started"]
    assert " to " in lineage_cli(graph).stdout
    # the table the Java service created is the one autotl reads
    columns = {c["name"] for c in inspect(create_engine(storage)).get_columns(DEPLOYMENTS_TABLE)}
    assert columns == {c.name for c in python_table().columns}


def test_deployment_is_recorded_in_postgresql_lineage(
    built: Path, run_and_export, postgres_url: str, tmp_path: Path
) -> None:
    from autotl.run.lineage import find_model, list_deployments, record_model

    _, export = run_and_export
    graph = export / "savedmodel" / "saved_model.pb"
    trial = types.SimpleNamespace(
        number=0, params={"backbone": "mobilenet-0.25"}, user_attrs={}, value=None
    )
    record_model(
        postgres_url,
        "serving-test",
        trial,
        graph,
        "export",
        data={"source": str(HYMENOPTERA), "fingerprint": "f" * 64},
    )
    sha = find_model(postgres_url, graph)["sha256"]
    service, proc = start_native(
        export, tmp_path / "serve.log", "--storage", postgres_url, "--name", "bees"
    )
    try:
        shown = lineage_cli(graph, "--storage", postgres_url)
        assert shown.returncode == 0, shown.stderr
        assert f"deployed as bees at http://127.0.0.1:{service.port}/v1/models/bees" in shown.stdout
        meta = http_request(service.port, "GET", "/v1/models/bees/metadata").json
        assert meta["lineage"]["records"][0]["study_name"] == "serving-test"
        assert service.terminate() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    latest = list_deployments(postgres_url, sha)[0]
    assert latest["model_name"] == "bees" and latest["stopped"] is not None


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((), "MODEL_DIR (or BASE_DIR) is missing"),
        (("{export}", "--version-policy", "newest"), "--version-policy newest: use latest"),
        (("{export}", "--version-policy", "all"), "needs a BASE_DIR of version folders"),
        (("{export}", "--label", "stable"), "--label stable: use NAME=VERSION"),
        (("{export}", "--enable-batching=maybe"), "--enable-batching takes true or false"),
        (("{export}/savedmodel/variables",), "neither saved_model.pb"),
        (("/no/such/folder",), "does not exist"),
        (("{export}", "--storage", "sqlite:////no/such/study.db"), "no such database file"),
        (("{export}", "--storage", "mysql://u@h/db"), "only sqlite:// and postgresql://"),
        (("{export}", "--port", "http"), "--port takes a whole number"),
        (("{export}", "--name", "a/b"), "--name a/b"),
    ],
)
def test_command_line_mistakes_exit_2_with_one_line(
    built: Path, export_dir: Path, args: tuple[str, ...], fragment: str
) -> None:
    proc = subprocess.run(
        [str(SERVE), *(a.format(export=export_dir) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr.splitlines()[0], proc.stderr


# --------------------------------------------------------------------------- versions, hot reload, batching, metrics


@pytest.fixture(scope="session")
def flip_version(run_and_export) -> Path:
    """Version 2: the same trial exported with flip test-time augmentation built in, a real model whose
    answers differ from version 1's (``autotl export --tta flip --version next``)."""
    run, first = run_and_export
    proc = run_cli(
        "export",
        str(run),
        "--format",
        "savedmodel",
        "--tta",
        "flip",
        "--out",
        str(first.parent),
        "--version",
        "next",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in first.parent.iterdir()) == ["1", "2"]
    return first.parent / "2"


@pytest.fixture(scope="session")
def flip_probs(flip_version: Path, reference: Reference) -> np.ndarray:
    """What the Python SavedModel of version 2 answers for each validation file."""
    import tensorflow as tf

    sig = tf.saved_model.load(str(flip_version / "savedmodel")).signatures["serving_bytes"]
    probs = np.concatenate(
        [
            sig(image_bytes=tf.constant(reference.data[s : s + 16]))["probabilities"].numpy()
            for s in range(0, len(reference.data), 16)
        ]
    )
    assert np.abs(probs - reference.probs).max() > 1e-3  # the two versions can be told apart
    return probs


def install_version(base: Path, number: int, source: Path) -> Path:
    """Put a version folder in place as ``autotl export --version`` does: staged hidden, renamed in one step."""
    staging = base / f".{number}.partial-{os.getpid()}"
    shutil.copytree(source, staging, copy_function=os.link)
    target = base / str(number)
    os.rename(staging, target)
    return target


def broken_version(base: Path, number: int) -> Path:
    """A version folder whose graph is not a SavedModel."""
    staging = base / f".{number}.partial-{os.getpid()}"
    (staging / "savedmodel").mkdir(parents=True)
    (staging / "savedmodel" / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(staging, base / str(number))
    return base / str(number)


def b64_instances(data: list[bytes]) -> dict:
    return {"instances": [{"b64": base64.b64encode(d).decode()} for d in data]}


def probabilities(r: Reply) -> np.ndarray:
    """The probabilities of a :predict (row format) or /v1/classify answer."""
    answer = r.json
    if "predictions" in answer:
        return np.array([p["probabilities"] for p in answer["predictions"]])
    return np.array([[answer["probabilities"][c] for c in sorted(answer["probabilities"])]])


def metrics(port: int) -> dict[str, float]:
    """The service's Prometheus text, sample by sample (name{labels} -> value)."""
    r = http_request(port, "GET", "/monitoring/prometheus/metrics")
    assert r.status == 200, r.body[:300]
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def versioned(
    built: Path, export_dir: Path, flip_version: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A base folder with versions 1 and 2, both served (policy all), labelled, with batching on."""
    base = tmp_path_factory.mktemp("versioned") / "models"
    base.mkdir()
    install_version(base, 1, export_dir)
    install_version(base, 2, flip_version)
    with running_native(
        base,
        base.parent / "serve.log",
        "--version-policy",
        "all",
        "--label",
        "stable=1",
        "--label",
        "canary=2",
        "--enable-batching",
        "--batch-timeout-micros",
        "20000",
        "--max-batch",
        "16",
    ) as service:
        yield service


def test_versions_and_labels_the_tf_serving_way(
    versioned: Service, reference: Reference, flip_probs: np.ndarray
) -> None:
    port = versioned.port
    status = http_request(port, "GET", "/v1/models/default").json["model_version_status"]
    assert [(v["version"], v["state"], v["status"]["error_code"]) for v in status] == [
        ("2", "AVAILABLE", "OK"),
        ("1", "AVAILABLE", "OK"),
    ]
    one = http_request(port, "GET", "/v1/models/default/versions/1").json["model_version_status"]
    assert [v["version"] for v in one] == ["1"]
    payload = b64_instances(reference.data[:4])
    for where, version, want in (
        ("/versions/1", "1", reference.probs),
        ("/versions/2", "2", flip_probs),
        ("/labels/stable", "1", reference.probs),
        ("/labels/canary", "2", flip_probs),
        ("", "2", flip_probs),  # no version: the newest
    ):
        r = post_json(port, f"/v1/models/default{where}:predict", payload)
        assert (r.status, r.version) == (200, version), (where, r.body[:300])
        assert np.abs(probabilities(r) - want[:4]).max() <= TOLERANCE, where
        meta = http_request(port, "GET", f"/v1/models/default{where}/metadata").json
        assert meta["model_spec"]["version"] == version
    r = classify(port, reference.data[5])
    assert r.json["model_version"] == "2" and r.version == "2"
    assert np.abs(probabilities(r) - flip_probs[5]).max() <= TOLERANCE
    for path, status_code, fragment in (
        ("/v1/models/default/versions/3:predict", 404, "version 3"),
        ("/v1/models/default/labels/nope:predict", 404, 'no label "nope"'),
        ("/v1/models/default/versions/x:predict", 404, "whole numbers"),
    ):
        r = post_json(port, path, payload)
        assert r.status == status_code and fragment in r.json["error"], (path, r.body[:300])
    assert http_request(port, "GET", "/v1/models/default/versions/9").status == 404


def test_batched_answers_equal_unbatched_ones(
    versioned: Service, native: Service, reference: Reference
) -> None:
    """16 clients at once through the batching service: each answer equals the unbatched service's within 1e-5."""
    from PIL import Image

    with Image.open(io.BytesIO(reference.data[0])) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    requests = [b64_instances([reference.data[i]]) for i in range(12)]
    requests += [
        {"instances": [pixels[:64, :80].tolist()]},
        {"instances": [pixels[:50, :60].tolist()]},
    ] * 2
    unbatched = []
    for payload in requests:  # one at a time, batching off: one TensorFlow run each
        r = post_json(native.port, "/v1/models/default:predict", payload)
        assert r.status == 200, r.body[:300]
        unbatched.append(probabilities(r))
    before = metrics(versioned.port)
    go = threading.Barrier(len(requests))
    batched: dict[int, Reply] = {}

    def client(k: int) -> None:
        go.wait(timeout=60)
        batched[k] = post_json(versioned.port, "/v1/models/default/versions/1:predict", requests[k])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(batched) == len(requests)
    for k, want in enumerate(unbatched):
        assert batched[k].status == 200, batched[k].body[:300]
        assert np.abs(probabilities(batched[k]) - want).max() <= 1e-5, k
    after = metrics(versioned.port)
    runs = after["autotl_serving_batch_size_count"] - before["autotl_serving_batch_size_count"]
    images = after["autotl_serving_batch_size_sum"] - before["autotl_serving_batch_size_sum"]
    assert images == len(requests) and runs < len(requests), (
        runs,
        images,
    )  # some requests shared a run
    assert (
        after['autotl_serving_batch_size_bucket{le="16"}']
        == after["autotl_serving_batch_size_count"]
    )


@contextlib.contextmanager
def prometheus_scraping(target: int, folder: Path) -> Iterator[Callable[[str], list[dict]]]:
    """A real Prometheus server on 127.0.0.1 scraping the service on port ``target`` every second; yields a
    function that runs a query through its HTTP API."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("needs Debian's prometheus package (.ci/run installs it)")
    port = free_port()
    (folder / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: autotl\n"
        "    metrics_path: /monitoring/prometheus/metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
    )
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def query(expr: str) -> list[dict]:
        from urllib.parse import urlencode

        assert proc.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
        r = http_request(port, "GET", "/api/v1/query?" + urlencode({"query": expr}), timeout=10)
        assert r.status == 200, r.body[:300]
        return r.json["data"]["result"]

    try:
        yield query
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_prometheus_scrapes_the_service(
    versioned: Service, reference: Reference, tmp_path: Path
) -> None:
    """A real Prometheus server scrapes the service on 127.0.0.1; the values are read back from its query API."""
    for i in range(5):
        assert classify(versioned.port, reference.data[i]).status == 200
    want = metrics(versioned.port)[
        'autotl_serving_requests_total{endpoint="classify",status="200"}'
    ]
    assert want >= 5
    with prometheus_scraping(versioned.port, tmp_path) as query:
        end = time.monotonic() + 120
        seen: list[dict] = []
        while not (seen and float(seen[0]["value"][1]) >= want) and time.monotonic() < end:
            time.sleep(0.5)
            with contextlib.suppress(OSError):  # Prometheus still starting
                seen = query('autotl_serving_requests_total{endpoint="classify",status="200"}')
        assert seen and float(seen[0]["value"][1]) >= want, seen
        assert [float(r["value"][1]) for r in query('up{job="autotl"}')] == [1.0]
        assert [float(r["value"][1]) for r in query("autotl_serving_model_version")] == [2.0]
        states = query("autotl_serving_model_version_state")
        assert {(r["metric"]["version"], r["metric"]["state"]) for r in states} == {
            ("1", "AVAILABLE"),
            ("2", "AVAILABLE"),
        }
        count = query('autotl_serving_request_duration_seconds_count{endpoint="classify"}')
        assert float(count[0]["value"][1]) >= 5
        loads = query("autotl_serving_model_load_seconds")
        assert {r["metric"]["version"] for r in loads} == {"1", "2"}
        assert all(float(r["value"][1]) > 0 for r in loads)
        assert float(query("process_resident_memory_bytes")[0]["value"][1]) > 1e8


class Traffic:
    """LOAD_CLIENTS clients on keep-alive connections, alternating /v1/classify and :predict, until stopped
    (bounded in requests and time); each answer is checked against the reference of the version that gave it."""

    def __init__(self, port: int, reference: Reference, want: dict[str, np.ndarray]) -> None:
        self.port, self.reference, self.want = port, reference, want
        self.failures: list[str] = []
        self.seen: list[list[str]] = [[] for _ in range(LOAD_CLIENTS)]
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(c,)) for c in range(LOAD_CLIENTS)
        ]
        for t in self.threads:
            t.start()

    def client(self, c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data, end = self.reference.data, time.monotonic() + 600
        try:
            for k in range(2000):  # bounded: stop() ends it long before
                if self.stopped.is_set() or time.monotonic() > end:
                    break
                i = (c * 31 + k) % len(data)
                path, body = (
                    ("/v1/classify", data[i])
                    if k % 2 == 0
                    else ("/v1/models/default:predict", json.dumps(b64_instances([data[i]])))
                )
                conn.request("POST", path, body=body)
                r = conn.getresponse()
                self.check(c, path, i, Reply(r.status, r.read(), r.getheader("X-Model-Version")))
        except Exception as exc:
            self.failures.append(repr(exc))
        finally:
            conn.close()

    def check(self, c: int, path: str, i: int, reply: Reply) -> None:
        if reply.status != 200 or reply.version not in self.want:
            self.failures.append(f"{path} {reply.status} {reply.version} {reply.body[:200]!r}")
        elif np.abs(probabilities(reply)[0] - self.want[reply.version][i]).max() > TOLERANCE:
            self.failures.append(f"{path} image {i}: not version {reply.version}'s answer")
        else:
            self.seen[c].append(reply.version)

    def stop(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in self.threads)

    def count(self, version: str) -> int:
        return sum(s.count(version) for s in self.seen)


def wait_for_states(
    service: Service, proc: subprocess.Popen, states: list[tuple[str, str]]
) -> None:
    """Until GET /v1/models/default lists exactly these (version, state) pairs, newest first."""

    def now() -> list[tuple[str, str]]:
        answer = http_request(service.port, "GET", "/v1/models/default").json
        return [(v["version"], v["state"]) for v in answer["model_version_status"]]

    end = time.monotonic() + 180
    while now() != states:
        assert time.monotonic() < end and proc.poll() is None, (now(), service.log()[-2000:])
        time.sleep(0.2)


def test_hot_reload_under_load_then_a_broken_version(
    request,
    built: Path,
    run_and_export,
    flip_version: Path,
    reference: Reference,
    flip_probs: np.ndarray,
    tmp_path: Path,
) -> None:
    """8 clients on keep-alive connections while version 2 appears, then a broken version 3: no request fails,
    each answer is its version's, a client never goes back to version 1, and each version has its deployment row."""
    run, first = run_and_export
    shutil.copy(run / "study.db", tmp_path / "study.db")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    base = tmp_path / "models"
    base.mkdir()
    install_version(base, 1, first)
    service, proc = start_native(base, tmp_path / "serve.log", "--storage", storage)
    traffic = Traffic(service.port, reference, {"1": reference.probs, "2": flip_probs})
    try:
        time.sleep(3)
        install_version(base, 2, flip_version)
        wait_for_states(service, proc, [("2", "AVAILABLE"), ("1", "END")])
        time.sleep(2)
        broken_version(base, 3)
        wait_for_states(service, proc, [("3", "END"), ("2", "AVAILABLE"), ("1", "END")])
        time.sleep(2)
        traffic.stop()
        assert traffic.failures == [], traffic.failures[:5]
        for (
            versions
        ) in traffic.seen:  # a client never goes back to the old version once it has seen the new
            assert versions == sorted(versions), versions
        assert traffic.count("1") > 0 and traffic.count("2") > 0
        assert_reloads_shown(service, proc, base, storage)
        report(
            request.config,
            f"hot reload under {LOAD_CLIENTS} clients: {traffic.count('1') + traffic.count('2')} requests, "
            f"0 failed; version 1 answered {traffic.count('1')}, version 2 {traffic.count('2')}; "
            "broken version 3 refused",
        )
    finally:
        traffic.stopped.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_reloads_shown(
    service: Service, proc: subprocess.Popen, base: Path, storage: str
) -> None:
    """The reload and the refusal in the status, the log, the metrics and the lineage; then a clean stop."""
    from autotl.run.lineage import list_deployments

    broken = http_request(service.port, "GET", "/v1/models/default/versions/3").json
    assert broken["model_version_status"][0]["status"]["error_code"] == "UNKNOWN"
    assert 'version 3 of "default" refused' in service.log()
    m = metrics(service.port)
    assert m['autotl_serving_model_version{model="default"}'] == 2
    assert m['autotl_serving_predictions_total{model="default",version="1"}'] > 0
    assert m['autotl_serving_predictions_total{model="default",version="2"}'] > 0
    assert m['autotl_serving_model_loads_total{model="default",result="failed"}'] == 1
    assert m['autotl_serving_model_unloads_total{model="default"}'] == 1
    url = f"http://127.0.0.1:{service.port}/v1/models/default/versions/"
    graph = "savedmodel/saved_model.pb"
    sha = {v: hashlib.sha256((base / v / graph).read_bytes()).hexdigest() for v in "12"}
    rows = {v: [d for d in list_deployments(storage, sha[v]) if d["url"] == url + v] for v in "12"}
    assert len(rows["1"]) == 1 and rows["1"][0]["stopped"] is not None  # unloaded
    assert len(rows["2"]) == 1 and rows["2"][0]["stopped"] is None  # serving
    assert service.terminate() == 0 and proc.poll() == 0
    assert list_deployments(storage, sha["2"])[0]["stopped"] is not None


def test_export_version_mistakes_exit_2_and_change_nothing(run_and_export) -> None:
    run, first = run_and_export
    before = sorted(p.name for p in first.parent.iterdir())
    for args, fragment in (
        (("--version", "1"), "version 1 exists already"),
        (("--version", "0"), "--version takes a whole number"),
        (("--version", "next", "--out", str(first)), "is an export itself"),
    ):
        out = () if "--out" in args else ("--out", str(first.parent))
        proc = run_cli("export", str(run), "--format", "savedmodel", *out, *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert fragment in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert sorted(p.name for p in first.parent.iterdir()) == before
