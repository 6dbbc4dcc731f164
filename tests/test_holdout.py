"""The test split (a test/ folder or test_fraction of the training images) and the class-imbalance warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import COLOURS, write_images

from autotl.data.dataset import from_arrays, load_folder
from autotl.data.holdout import add_test_split, holdout_score, recommendation
from autotl.data.imbalance import imbalance_warning
from autotl.errors import UsageError


def names(images) -> set[str]:
    return {Path(p).name for p in images.paths}


def test_test_fraction_holds_out_training_images_only(image_folder: Path) -> None:
    plain = load_folder(image_folder, val_fraction=0.25, seed=0)
    ds = add_test_split(plain, str(image_folder), test_fraction=0.25, seed=0)
    # 16 per class: 4 validate, 12 train, of which 3 are held out as test
    assert ds.val.counts(3) == plain.val.counts(3) == [4, 4, 4]
    assert ds.train.counts(3) == [9, 9, 9] and ds.test.counts(3) == [3, 3, 3]
    assert names(ds.train) | names(ds.test) == names(plain.train)
    assert not names(ds.train) & names(ds.test) and not names(ds.test) & names(ds.val)
    assert ds.val.paths == plain.val.paths
    # the search's data changed, so its fingerprint (the cache key, the run folder's claim) did
    assert ds.fingerprint != plain.fingerprint and ds.test_fingerprint
    again = add_test_split(load_folder(image_folder, 0.25, 0), str(image_folder), 0.25, 0)
    assert again.test.paths == ds.test.paths and again.fingerprint == ds.fingerprint
    other = add_test_split(plain, str(image_folder), test_fraction=0.25, seed=1)
    assert other.test.paths != ds.test.paths
    summary = ds.summary()
    assert summary["counts"]["test"] == {"blue": 3, "green": 3, "red": 3}
    assert summary["test_split"].startswith("test_fraction=0.25")


def test_no_test_split_by_default(image_folder: Path) -> None:
    plain = load_folder(image_folder, val_fraction=0.25, seed=0)
    assert add_test_split(plain, str(image_folder)) is plain and plain.test is None
    assert "test" not in plain.summary()["counts"]


def test_in_memory_samples_are_carved_the_same_way() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], 20)
    ds = add_test_split(from_arrays(images, labels, ["a", "b"], "sample:x", 0.2, 0), None, 0.25, 0)
    assert ds.train.counts(2) == [12, 12] and ds.test.counts(2) == [4, 4]
    seen = {a.tobytes() for a in ds.train.arrays} | {a.tobytes() for a in ds.val.arrays}
    assert not seen & {a.tobytes() for a in ds.test.arrays}


def folders(root: Path, parts: dict[str, dict[str, tuple[int, int, int]]], n: int = 4) -> Path:
    for i, (part, classes) in enumerate(parts.items()):
        write_images(root / part, classes, n, seed=i)
    return root


def test_a_test_folder_beside_train_and_val_is_the_test_split(tmp_path: Path) -> None:
    two = {c: COLOURS[c] for c in ("red", "blue")}
    root = folders(tmp_path, {"train": two, "val": two, "test": {"red": COLOURS["red"]}})
    plain = load_folder(root)
    assert not any("test" in w for w in plain.warnings)
    ds = add_test_split(plain, str(root), test_fraction=0.3)
    assert ds.test.counts(2) == [0, 4]  # a subset of the classes is fine: blue, red
    assert all("/test/red/" in p for p in ds.test.paths)
    # the search's data is as it was: same fingerprint, same training images
    assert ds.fingerprint == plain.fingerprint and ds.train.paths == plain.train.paths
    assert ds.test_split == "folder test/"
    assert any("test_fraction 0.3 is not used" in w for w in ds.warnings)


def test_a_test_folder_with_a_class_train_lacks_is_one_line(tmp_path: Path) -> None:
    two = {c: COLOURS[c] for c in ("red", "blue")}
    root = folders(tmp_path, {"train": two, "val": two, "test": {**two, "green": COLOURS["green"]}})
    with pytest.raises(UsageError) as err:
        add_test_split(load_folder(root), str(root))
    message = str(err.value)
    assert "\n" not in message and "green" in message and "train/ lacks" in message


def test_a_test_folder_without_images_is_refused(tmp_path: Path) -> None:
    two = {c: COLOURS[c] for c in ("red", "blue")}
    root = folders(tmp_path, {"train": two, "val": two})
    (root / "test" / "red").mkdir(parents=True)
    (root / "test" / "red" / "notes.txt").write_text("not an image")
    with pytest.raises(UsageError, match="no usable image"):
        add_test_split(load_folder(root), str(root))


def test_bad_fraction_is_refused(image_folder: Path) -> None:
    with pytest.raises(UsageError, match="test_fraction"):
        add_test_split(load_folder(image_folder, 0.25, 0), None, 1.0)


def test_recommendation_only_when_every_class_could_spare_images(tmp_path: Path) -> None:
    small = load_folder(write_images(tmp_path / "small", COLOURS, 8), 0.25, 0)
    assert recommendation(small) is None
    rng = np.random.default_rng(0)
    big = from_arrays(
        rng.integers(0, 255, (300, 4, 4, 3), dtype=np.uint8),
        np.repeat([0, 1], 150),
        ["a", "b"],
        "sample:x",
        0.2,
        0,
    )
    advice = recommendation(big)
    assert advice and "test_fraction" in advice and "\n" not in advice
    assert recommendation(add_test_split(big, None, 0.2, 0)) is None


def test_holdout_score_has_its_wilson_interval() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    score = holdout_score(probs, [0, 1, 1, 1])
    assert score["images"] == 4 and score["correct"] == 3 and score["accuracy"] == 0.75
    lo, hi = score["ci95"]
    assert lo < 0.75 < hi and 0 <= lo and hi <= 1
    assert score["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)


def test_imbalance_warns_at_five_to_one_and_recommends_balanced_accuracy() -> None:
    rng = np.random.default_rng(0)

    def data(big: int, small: int):
        labels = np.repeat([0, 1], [big, small])
        images = rng.integers(0, 255, (len(labels), 4, 4, 3), dtype=np.uint8)
        return from_arrays(images, labels, ["cats", "dogs"], "sample:x", 0.2, 0)

    warning = imbalance_warning(data(50, 10), ["accuracy"])
    assert warning and "balanced_accuracy" in warning and "class_weight: balanced" in warning
    assert "'cats' has 40" in warning and "'dogs' 8" in warning
    assert imbalance_warning(data(40, 10), ["accuracy"]) is None  # 4x
    assert imbalance_warning(data(50, 10), ["balanced_accuracy"]) is None
    assert "class_weight" not in imbalance_warning(data(50, 10), ["accuracy"], "balanced")
