"""The cache's decoding thread: order kept, errors raised where the batch is taken, stopped early on failure."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from autotl.backbones.weights import ResolvedWeights
from autotl.errors import UsageError
from autotl.training.cache import FeatureCache, _Prefetch
from autotl.training.model import build_base

RANDOM = ResolvedWeights(None, None, "random")


def test_prefetch_keeps_order_and_ends() -> None:
    stream = _Prefetch(iter(range(50)), depth=2)
    assert list(stream) == list(range(50))
    with pytest.raises(StopIteration):
        next(stream)  # and stays ended
    stream.close()


def test_prefetch_raises_the_threads_error_where_the_item_is_taken() -> None:
    def items():
        yield 1
        yield 2
        raise UsageError("image x can no longer be decoded")

    stream = _Prefetch(items(), depth=4)
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(UsageError, match="can no longer be decoded"):
        next(stream)
    stream.close()


def test_prefetch_close_stops_an_endless_producer() -> None:
    made = itertools.count()
    stream = _Prefetch(made, depth=3)
    assert next(stream) == 0
    stream.close()
    assert not stream._thread.is_alive()
    assert next(made) < 10  # it stopped near the queue's depth, not at the end of time


def test_a_file_broken_after_the_scan_fails_the_build_and_leaves_nothing(
    registry, image_folder: Path, tmp_path: Path
) -> None:
    from autotl.data.dataset import load_folder

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    dataset = load_folder(data)
    Path(dataset.val.paths[-1]).write_bytes(
        b""
    )  # the last batch: the build is well under way when it fails
    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(UsageError, match="can no longer be decoded"):
        cache.get(spec, lambda: base, RANDOM, dataset, None, batch_size=4)
    assert not [
        p for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"
    ]  # no entry, no temporary folder
    for path in dataset.val.paths:  # the same scan, the file restored: the build now completes
        shutil.copyfile(image_folder / Path(path).relative_to(data), path)
    assert cache.get(spec, lambda: base, RANDOM, dataset, None, batch_size=4).built


def test_float16_entries_hold_the_float32_activations_to_their_precision(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    import numpy as np

    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    half = FeatureCache(tmp_path / "16").get(spec, lambda: base, RANDOM, tiny_dataset, "block2_out")
    full = FeatureCache(tmp_path / "32", dtype="float32").get(
        spec, lambda: base, RANDOM, tiny_dataset, "block2_out"
    )
    assert half.key != full.key and half.train.dtype == np.float16
    a, b = np.asarray(half.train, np.float32), np.asarray(full.train)
    assert full.train.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=2**-10, atol=1e-6)  # float16's rounding, nothing more
    assert half.train.nbytes * 2 == full.train.nbytes
    assert half.stats["images"] == len(tiny_dataset.train) + len(tiny_dataset.val)
    assert half.stats["images_per_second"] > 0 and 0 < half.stats["forward_seconds"]


def test_rows_are_read_in_any_order_without_a_memory_map(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    import numpy as np

    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    entry = FeatureCache(tmp_path).get(spec, lambda: base, RANDOM, tiny_dataset, "block1_out")
    everything = np.load(tmp_path / entry.key / "train.npy")  # a plain .npy file
    order = np.array([5, 0, 6, 7, 1, 5, 2])
    np.testing.assert_array_equal(entry.train.take(order), everything[order])
    np.testing.assert_array_equal(entry.train.rows(3, 9), everything[3:9])


def test_an_entry_that_does_not_fit_the_budget_is_refused_or_left_out(
    registry, tiny_dataset, tmp_path: Path
) -> None:
    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    rows = len(tiny_dataset.train) + len(tiny_dataset.val)
    pooled = FeatureCache(tmp_path / "probe").entry_bytes(base, None, rows)
    warned: list[str] = []
    tight = FeatureCache(tmp_path / "tight", budget=pooled + 1000, warn=warned.append)
    entry = tight.get(
        spec, lambda: base, RANDOM, tiny_dataset, None, prefetch=lambda b: ["block2_out"]
    )
    assert entry.built and "not caching the activations at block2_out" in warned[0]
    assert "--cache-budget" in warned[0]
    assert not (
        tmp_path
        / "tight"
        / tight.key(spec, "random", (32, 32), tiny_dataset.fingerprint, "block2_out", seed=0)
    ).exists()
    assert tight.get(spec, lambda: base, RANDOM, tiny_dataset, "block2_out", required=False) is None
    with pytest.raises(
        UsageError,
        match=r"no space left for the feature cache: the activations at block2_out .* need .* --cache-budget",
    ) as info:
        tight.get(spec, lambda: base, RANDOM, tiny_dataset, "block2_out")
    assert "\n" not in str(info.value)
    assert not [p for p in (tmp_path / "tight").iterdir() if ".tmp" in p.name]


def test_mixed_precision_forward_pass_on_the_cpu(registry, tiny_dataset, tmp_path: Path) -> None:
    """The GPU option's code path, run on the CPU: float16 computation, its own entries, close features."""
    import numpy as np

    from autotl.training.cache import MIXED_TOLERANCE, device

    spec = registry.backbone("tiny")
    base = build_base(spec, RANDOM)
    exact = FeatureCache(tmp_path, dtype="float32").get(
        spec, lambda: base, RANDOM, tiny_dataset, None
    )
    mixed = FeatureCache(tmp_path, dtype="float32", mixed_precision=True).get(
        spec, lambda: base, RANDOM, tiny_dataset, None
    )
    assert mixed.key != exact.key and mixed.built
    assert mixed.stats["device"] == device()
    a, b = np.asarray(mixed.val), np.asarray(exact.val)
    assert np.abs(a - b).max() <= MIXED_TOLERANCE * max(1.0, float(np.abs(b).max()))
    assert not np.array_equal(a, b)  # it really computed in float16
    assert base.dtype_policy.name == "float32"  # the search's own base is untouched
