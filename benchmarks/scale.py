"""The same search at 1,000, 10,000 and 100,000 images: is memory flat in the data's size?

Generates a deterministic synthetic labelled folder (10 classes of 160 px JPEGs
whose colour and stripe texture are the class: learnable by a frozen ImageNet
base), then, for each size N, in fresh processes:

1. the floor: the cache's forward pass alone (MobileNet 0.25, pooled output and
   the boundaries the space fine-tunes from) on random pixels, images/s;
2. the search, as a user runs it::

       autotl search DATA --space fast --backbone mobilenet-0.25 --trials 4 --out RUN

   its wall time and peak RSS (the search process; the decoding processes apart);
3. the same command again (a resume with nothing to do), its wall time.

and prints a table: N, wall, cache build s, build images/s against the floor,
peak RSS, cache bytes per image, no-op resume s.

    python benchmarks/scale.py --root /tmp/autotl-scale [--sizes 1000,10000,100000]
        [--weights-dir DIR] [--decode-workers N]

The images go under ``--root`` (never into the repository); the largest size is
generated once and the smaller ones are hard links to its first files per class.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
CLASSES = 10
SIDE = 160
BACKBONE = "mobilenet-0.25"


def _image(label: int, index: int) -> bytes:
    """One JPEG of class ``label``: its hue and stripe angle and frequency are the class, the rest is noise."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([label, index])
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    angle = np.pi * label / CLASSES + rng.normal(0, 0.05)
    freq = 0.05 + 0.02 * (label % 5) + rng.normal(0, 0.003)
    stripes = np.sin(
        (x * np.cos(angle) + y * np.sin(angle)) * freq * 2 * np.pi + rng.uniform(0, 6.3)
    )
    hue = np.array(
        [np.sin(label * 0.63) + 1.2, np.sin(label * 1.7 + 2) + 1.2, np.sin(label * 2.9 + 4) + 1.2]
    )
    base = 60 + 50 * hue[None, None, :] * (0.6 + 0.4 * stripes[:, :, None])
    noise = rng.normal(0, 18, (SIDE, SIDE, 3))
    pixels = np.clip(base + noise + rng.normal(0, 20, 3), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write(task: tuple[str, int, int, int]) -> None:
    folder, label, start, stop = task
    for i in range(start, stop):
        path = Path(folder) / f"class_{label}" / f"img_{i:06d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_image(label, i))
            os.replace(tmp, path)


def generate(root: Path, n: int, workers: int) -> Path:
    """``root/full``: ``n`` images, ``n / CLASSES`` per class (done once; rerunning finishes a partial folder)."""
    from concurrent.futures import ProcessPoolExecutor

    folder = root / "full"
    per = n // CLASSES
    done = folder / f".complete-{n}"
    if done.exists():
        return folder
    for k in range(CLASSES):
        (folder / f"class_{k}").mkdir(parents=True, exist_ok=True)
    tasks = [
        (str(folder), k, s, min(s + 500, per)) for k in range(CLASSES) for s in range(0, per, 500)
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, tasks))
    done.write_text(f"{time.perf_counter() - start:.1f} s\n")
    return folder


def subset(root: Path, full: Path, n: int) -> Path:
    """``root/nN``: hard links to the first ``n / CLASSES`` images of each class of ``full``."""
    folder, per = root / f"n{n}", n // CLASSES
    for k in range(CLASSES):
        (folder / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per):
            name = f"class_{k}/img_{i:06d}.jpg"
            if not (folder / name).exists():
                os.link(full / name, folder / name)
    return folder


def _hwm(pid: int) -> int:
    """Peak resident memory of ``pid`` so far, in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def run(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``, following the peak RSS of its process and of its children (the decoding processes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            for pid in [proc.pid, *_children(proc.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _hwm(pid))
            time.sleep(0.25)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    workers = [v for pid, v in peaks.items() if pid != proc.pid]
    return {
        "wall": wall,
        "peak_rss": peaks.get(proc.pid, 0),
        "workers_rss": max(workers, default=0),
        "output": output,
    }


FLOOR = """
import json, sys, time
import numpy as np
from autotl.training.cache import extractor
from autotl.training.model import build_base
from autotl.backbones.registry import get_registry
from autotl.engine.space import load_space, trial_params
from autotl.training.trainer import prefetch_cuts
from autotl.backbones.weights import WeightsSource, resolve_weights
import optuna
n, backbone = int(sys.argv[1]), sys.argv[2]
space, _ = load_space("fast")
spec = get_registry([]).backbone(backbone)
weights = resolve_weights(spec, WeightsSource.parse())
base = build_base(spec, weights)
p2 = space.phase2
params = trial_params(optuna.trial.FixedTrial({"backbone": backbone, "head_width": 64, "dropout": 0.0,
    "unfreeze_blocks": p2.unfreeze_blocks.high, "finetune_lr": p2.learning_rate.low}), space)
cuts = [None, *prefetch_cuts(spec, params, base)]
forward = extractor(spec, base, cuts, spec.input_size, dtype="float16")
bs = params.batch_size
batch = np.random.default_rng(0).uniform(0, 255, (bs, *spec.input_size, 3)).astype("float32")
forward(batch); forward(batch[:1])
start, done = time.perf_counter(), 0
while done < n:
    [np.asarray(r) for r in forward(batch[: min(bs, n - done)])[0]]
    done += min(bs, n - done)
print(json.dumps({"images": done, "seconds": time.perf_counter() - start, "cuts": [c or "pooled" for c in cuts]}))
"""


def floor(n: int, env: dict[str, str]) -> dict:
    """The forward pass alone, on ``n`` images' worth of random pixels in batches of the search's size."""
    proc = subprocess.run(
        [sys.executable, "-c", FLOOR, str(n), BACKBONE], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"floor failed: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "images_per_second": result["images"] / result["seconds"]}


def build_figures(out: Path) -> dict:
    """The cache build's figures, as the search recorded them on its first trial."""
    from autotl.run.storage import load_study

    study = load_study(f"sqlite:///{out / 'study.db'}", "autotl")
    first = min(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return (first.user_attrs.get("cache") or {}).get("phase1", {}).get("build", {})


def cache_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(n: int, root: Path, full: Path, args: argparse.Namespace, env: dict) -> dict:
    data = subset(root, full, n)
    out = root / "runs" / f"n{n}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    the_floor = floor(min(n, args.floor_images), env)
    cmd = [
        sys.executable,
        "-m",
        "autotl",
        "search",
        str(data),
        "--space",
        "fast",
        "--backbone",
        BACKBONE,
        "--trials",
        str(args.trials),
        "--out",
        str(out),
    ]
    if args.decode_workers is not None:
        cmd += ["--decode-workers", str(args.decode_workers)]
    load = os.getloadavg()[0]
    first = run(cmd, env)
    again = run(cmd, env)
    build = build_figures(out)
    size = cache_bytes(out / "cache")
    row = {
        "images": n,
        "wall_s": round(first["wall"], 1),
        "build_s": build.get("seconds"),
        "build_images_per_s": build.get("images_per_second"),
        "floor_images_per_s": round(the_floor["images_per_second"], 1),
        "build_vs_floor": round(
            build.get("images_per_second", 0) / the_floor["images_per_second"], 3
        ),
        "forward_share_of_build": round(
            build.get("forward_seconds", 0) / max(build.get("seconds", 1e-9), 1e-9), 3
        ),
        "peak_rss_mb": round(first["peak_rss"] / 2**20),
        "decode_worker_peak_rss_mb": round(first["workers_rss"] / 2**20),
        "cache_bytes_per_image": round(size / n),
        "noop_resume_s": round(again["wall"], 2),
        "noop_resume_peak_rss_mb": round(again["peak_rss"] / 2**20),
        "load_average_at_start": round(load, 2),
    }
    (out / "scale-row.json").write_text(json.dumps(row, indent=2))
    return row


def table(rows: list[dict]) -> str:
    head = "| images | wall | cache build | build img/s (floor img/s, ratio) | peak RSS | decode worker RSS | cache bytes/image | no-op resume |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['images']:,} | {r['wall_s']:,.0f} s | {r['build_s']:,.1f} s | "
            f"{r['build_images_per_s']:,.0f} ({r['floor_images_per_s']:,.0f}, {r['build_vs_floor']:.0%}) | "
            f"{r['peak_rss_mb']:,} MB | {r['decode_worker_peak_rss_mb']:,} MB | "
            f"{r['cache_bytes_per_image']:,} | {r['noop_resume_s']:.1f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", required=True, help="where the images and runs go (outside the repository)"
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--weights-dir", default=os.environ.get("AUTOTL_WEIGHTS_DIR"))
    parser.add_argument("--decode-workers", type=int)
    parser.add_argument(
        "--floor-images", type=int, default=2000, help="images the floor is timed on (at most N)"
    )
    args = parser.parse_args()
    root = Path(args.root).resolve()
    if HERE.parent in [root, *root.parents]:
        sys.exit("--root must be outside the repository (the images are generated data)")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    env = {**os.environ, "AUTOTL_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if args.weights_dir:
        env["AUTOTL_WEIGHTS_DIR"] = str(Path(args.weights_dir).resolve())
    started = time.perf_counter()
    full = generate(root, sizes[-1], os.cpu_count() or 1)
    print(
        f"images: {root} (generated in {(full / f'.complete-{sizes[-1]}').read_text().strip()})",
        flush=True,
    )
    rows = []
    for n in sizes:
        rows.append(measure(n, root, full, args, env))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    print(
        f"load average now: {os.getloadavg()}; benchmark took {time.perf_counter() - started:,.0f} s"
    )


if __name__ == "__main__":
    main()
