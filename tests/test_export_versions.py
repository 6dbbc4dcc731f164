"""Version folders of ``autotl export --out BASE --version N|next``: which number, what is refused, and the
rename that never replaces a version another export put there meanwhile. Plain folders, no TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotl.errors import UsageError
from autotl.export._staging import install, staging_dir, version_folder, version_numbers


def an_export(folder: Path) -> Path:
    """A folder that looks like an earlier autotl export (its parity.json names autotl's version)."""
    folder.mkdir(parents=True)
    (folder / "parity.json").write_text(json.dumps({"versions": {"autotl": "0.1.0"}}))
    return folder


def test_next_is_one_more_than_the_highest_version(tmp_path: Path) -> None:
    base = tmp_path / "models"
    assert version_folder(base, "next") == base / "1"  # a new base folder
    for name in ("1", "3", ".7.partial-123", "9.unverified", "notes", "0"):
        (base / name).mkdir(parents=True)
    (base / "12").write_text("a file is not a version")
    assert version_numbers(base) == [1, 3]
    assert version_folder(base, "next") == base / "4"
    assert version_folder(base, 2) == base / "2"
    assert version_folder(base, "10") == base / "10"
    assert not (base / "4").exists() and not (base / "2").exists()  # nothing is created


@pytest.mark.parametrize(
    "version, fragment",
    [
        ("3", "version 3 exists already"),
        (3, "pass --version next (it would be 4)"),
        ("0", "--version takes a whole number (1 or more) or next, got 0"),
        ("-2", "got -2"),
        ("latest", "got latest"),
    ],
)
def test_bad_or_existing_versions_are_refused(tmp_path: Path, version, fragment: str) -> None:
    an_export(tmp_path / "3")
    with pytest.raises(UsageError) as err:
        version_folder(tmp_path, version)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_file_or_an_export_is_no_base_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        version_folder(tmp_path / "file", "next")
    with pytest.raises(UsageError, match="is an export itself"):
        version_folder(an_export(tmp_path / "deploy"), "next")


def test_a_version_is_renamed_into_place_only_if_still_absent(tmp_path: Path) -> None:
    target = version_folder(tmp_path, "next")
    staging = staging_dir(target)
    assert staging.name.startswith(".1.partial-")  # hidden: a server watching the base ignores it
    an_export(staging)
    install(staging, target, owned=["parity.json"], new_only=True)
    assert (target / "parity.json").is_file() and not staging.exists()
    # another export took version 2 while this one was staging it: refused, the other's files untouched
    second = tmp_path / "2"
    staging = staging_dir(second)
    an_export(staging)
    (an_export(second) / "mine").write_text("the other export's")
    with pytest.raises(UsageError, match="appeared while this export ran"):
        install(staging, second, owned=["parity.json"], new_only=True)
    assert (second / "mine").read_text() == "the other export's"
