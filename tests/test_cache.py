"""The cache's decoding thread: order kept, errors raised where the batch is taken, stopped early on failure."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from autotl.cache import FeatureCache, _Prefetch
from autotl.errors import UsageError
from autotl.model import build_base
from autotl.weights import ResolvedWeights

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
    from autotl.data import load_folder

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
