"""Data health on small built data: each kind found, no false leakage, exclusions recorded, bad lists one line."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import COLOURS, SHARED_WEIGHTS, TINY_SPACE, needs_shared

from autotl.errors import UsageError

#: The cheapest real backbone: a random base's pooled features follow little but colour, too little to
#: tell one picture from another (checks on them found false near duplicates).
REAL = {"backbone": "mobilenet-0.25", "weights_dir": SHARED_WEIGHTS}
pytestmark = needs_shared


def _folder_digest(root: Path) -> str:
    """Every file's path and bytes under ``root``: equal before and after means nothing was changed."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def textured(folder: Path, per_class: int, seed: int) -> Path:
    """The colour classes, each picture with its own coarse pattern on top: alike within a class, never the same."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tint = rng.uniform(
                -45, 45, 3
            )  # the pooled features of a random base follow colour statistics
            coarse = np.kron(rng.normal(0, 40, (5, 5, 3)), np.ones((8, 8, 1)))
            pixels = np.asarray(colour) + tint + coarse + rng.normal(0, 10, (40, 40, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(
                folder / name / f"{name}_{i:03d}.png"
            )
    return folder


def planted(root: Path) -> Path:
    """train/ and val/ of the colour classes, with one of each problem planted (and known by name)."""
    from PIL import Image

    for part, n, seed in (("train", 14, 0), ("val", 6, 1)):
        textured(root / part, n, seed)
    train, val = root / "train", root / "val"
    shutil.copy(
        train / "red" / "red_000.png", train / "red" / "red_000_copy.png"
    )  # exact, in train
    shutil.copy(train / "blue" / "blue_001.png", val / "blue" / "leaked_blue_001.png")  # exact leak
    # the same pixels in other bytes (another compression level): a copy no hash finds, features do
    Image.open(train / "green" / "green_002.png").save(
        val / "green" / "reencoded.png", compress_level=1
    )
    for k in range(3):  # red pictures filed as blue: label issues
        shutil.move(train / "red" / f"red_{k + 5:03d}.png", train / "blue" / f"mislabelled_{k}.png")
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).convert("P").save(
        train / "green" / "odd.gif"
    )
    Image.fromarray(np.full((6, 6, 3), (40, 40, 200), np.uint8)).save(train / "blue" / "tiny.png")
    (train / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return root


@pytest.fixture(scope="session")
def checked(tmp_path_factory: pytest.TempPathFactory):
    """ONE doctor run on the planted folder (MobileNet 0.25's features): the data, its digest, the result."""
    import autotl

    root = planted(tmp_path_factory.mktemp("planted") / "data")
    before = _folder_digest(root)
    out = root.parent / "run"
    health = autotl.doctor(root, out=out, **REAL)
    return root, before, out, health


def test_each_kind_is_found_on_built_data(checked) -> None:
    health = checked[3]
    by_kind = {k: {(f.path, f.other) for f in health.of_kind(k)} for k in health.counts()}
    assert by_kind["exact_duplicate"] == {("train/red/red_000_copy.png", "train/red/red_000.png")}
    leaks = {f.path: f for f in health.of_kind("leakage")}
    # the copy in train is the one to leave out: the validation split stays as it is
    assert leaks["train/blue/blue_001.png"].other == "val/blue/leaked_blue_001.png"
    assert leaks["train/blue/blue_001.png"].detail == "exact"
    assert leaks["train/green/green_002.png"].other == "val/green/reencoded.png"
    assert leaks["train/green/green_002.png"].detail.startswith("cosine similarity")
    assert health.leakage_by_splits() == {"train/val": 2}
    assert health.leaked("val") == {"val/blue/leaked_blue_001.png", "val/green/reencoded.png"}
    labels = {f.path: f for f in health.of_kind("label_issue")}
    planted = [
        labels[p] for p in (f"train/blue/mislabelled_{k}.png" for k in range(3)) if p in labels
    ]
    assert len(planted) >= 2 and len(labels) <= 4  # red pictures filed as blue, few others
    assert all((f.label, f.suggested) == ("blue", "red") and 0.5 < f.score <= 1.0 for f in planted)
    assert {f.path for f in health.of_kind("unreadable")} == {"train/red/broken.png"}
    assert {f.path for f in health.of_kind("tiny")} == {"train/blue/tiny.png"}
    assert {f.path for f in health.of_kind("odd_mode")} == {"train/green/odd.gif"}
    assert "train/green/odd.gif" in {
        f.path for f in health.of_kind("outlier")
    }  # flat grey among noise
    assert health.backbone == "mobilenet-0.25" and health.images == {"train": 45, "val": 20}


def test_issues_csv_lists_every_finding_and_nothing_was_touched(checked) -> None:
    root, before, out, health = checked
    with open(out / "health" / "issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "path",
        "kind",
        "score",
        "other",
        "label",
        "suggested",
        "split",
        "other_split",
        "detail",
    ]
    assert len(rows) == len(health.findings)
    assert {(r["path"], r["kind"]) for r in rows} == {(f.path, f.kind) for f in health.findings}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    stored = json.loads((out / "health" / "health.json").read_text())
    assert stored["counts"] == health.counts() and stored["fingerprint"] == health.fingerprint
    assert (
        _folder_digest(root) == before
    )  # nothing in the data folder was changed, moved or deleted


def test_no_false_leakage_on_clean_data(tmp_path: Path) -> None:
    from autotl.backbones.registry import get_registry
    from autotl.backbones.weights import WeightsSource, resolve_weights
    from autotl.data.dataset import load_folder
    from autotl.health import duplicates_only, pooled_features, subject_of
    from autotl.training.cache import FeatureCache
    from autotl.training.model import build_base

    root = tmp_path / "clean"
    for part, n, seed in (("train", 14, 0), ("val", 6, 1)):
        textured(root / part, n, seed)
    dataset = load_folder(root)
    spec = get_registry([], autoload=False).backbone(REAL["backbone"])
    weights = resolve_weights(spec, WeightsSource.parse(str(SHARED_WEIGHTS)))
    features = pooled_features(
        dataset, spec, weights, FeatureCache(tmp_path / "cache"), lambda: build_base(spec, weights)
    )
    assert features.shape == (len(dataset.train) + len(dataset.val), 256)
    assert duplicates_only(subject_of(dataset, None), features) == []


def test_the_pair_rules(tmp_path: Path) -> None:
    """Pairs keep the copy in the more valuable split; near pairs are bounded by the median neighbour distance."""
    from autotl.data.decoding import Checked
    from autotl.health import Subject
    from autotl.health._duplicates import exact_duplicates, near_pairs
    from autotl.health._neighbours import nearest

    facts = [Checked(1, 1, h, None, 40, 40, "PNG RGB") for h in ("a", "a", "a", "b")]
    subject = Subject(
        "/d",
        ["x"],
        ["train/x/1.png", "test/x/2.png", "val/x/3.png", "train/x/4.png"],
        ["/d/1", "/d/2", "/d/3", "/d/4"],
        ["train", "test", "val", "train"],
        np.zeros(4, np.int64),
        facts,
        [],
        "f",
    )
    found = {(f.path, f.other, f.kind) for f in exact_duplicates(subject)}
    assert found == {
        ("train/x/1.png", "test/x/2.png", "leakage"),
        ("val/x/3.png", "test/x/2.png", "leakage"),
    }
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    x[7] = x[3] + 0.001  # a near copy of image 3
    pairs = list(near_pairs(nearest(x)))
    assert [(i, j) for i, j, _ in pairs] == [(3, 7)] and pairs[0][2] < 1e-3


@pytest.mark.parametrize("block", [7, 64, 2048])
def test_the_blockwise_neighbours_are_scikit_learns_exact_ones(block: int) -> None:
    """Any block size (smaller than k, uneven, larger than the data) gives the exact cosine neighbours,
    itself excluded, copies at distance 0, in float16 too; cleanlab's outlier scores read the graph."""
    from cleanlab.outlier import OutOfDistribution
    from sklearn.neighbors import NearestNeighbors

    from autotl.health._neighbours import nearest

    rng = np.random.default_rng(block)
    x = rng.gamma(1.0, 1.0, (300, 16)).astype(np.float32)
    x[5], x[9] = x[17], 2 * x[17]  # same direction: cosine distance 0
    want_d, want_i = NearestNeighbors(n_neighbors=10, metric="cosine").fit(x).kneighbors()
    graph = nearest(x, block=block)
    np.testing.assert_allclose(graph.distances, want_d, atol=1e-5)
    assert (graph.indices == want_i).mean() > 0.99  # the rest are ties in distance
    assert set(graph.indices[17, :2]) == {5, 9} and graph.distances[17, 1] < 1e-5
    assert not (graph.indices == np.arange(300)[:, None]).any()
    half = nearest(x.astype(np.float16), block=block)
    assert np.abs(half.distances - want_d).max() < 2e-3
    scores = OutOfDistribution(params={"knn": graph}).score(features=x)
    expected = OutOfDistribution().fit_score(features=x, verbose=False)
    assert np.corrcoef(scores, expected)[0, 1] > 0.99
    assert nearest(x[:2]).indices.tolist() == [[1], [0]]


def test_a_stored_graph_is_read_back_for_the_same_features_only(tmp_path: Path) -> None:
    from autotl.health._neighbours import nearest, stored_nearest

    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float16)
    graph = stored_nearest(x, tmp_path)
    np.testing.assert_array_equal(graph.indices, nearest(x).indices)
    (path,) = tmp_path.glob("*.npz")
    np.savez(path, distances=graph.distances + 1, indices=graph.indices)  # what is stored is read
    np.testing.assert_array_equal(stored_nearest(x, tmp_path).distances, graph.distances + 1)
    y = x.copy()
    y[3, 0] += 1
    assert (stored_nearest(y, tmp_path).distances < 1).all()  # other features: their own graph
    assert len(list(tmp_path.glob("*.npz"))) == 2
    stored_nearest(x.astype(np.float32), tmp_path)  # another dtype is other features too
    path.write_bytes(b"half-written")  # a damaged file is found again, not trusted
    np.testing.assert_array_equal(stored_nearest(x, tmp_path).distances, graph.distances)
    assert not list(tmp_path.glob(".*tmp*"))


def test_past_the_neighbour_limit_only_hashes_compare_and_a_note_says_so(tmp_path: Path) -> None:
    """More images than ``neighbour_limit``: no near duplicates nor outliers, exact copies still found, one note."""
    from autotl.data.decoding import Checked
    from autotl.health import Settings, Subject, find_findings

    rng = np.random.default_rng(0)
    n = 60
    x = rng.gamma(1.0, 1.0, (n, 64)).astype(np.float16)
    x[1] = x[0]  # the same features and bytes: an exact copy; a near copy with other bytes
    x[3] = x[2]
    hashes = [f"{i}" for i in range(n)]
    hashes[1] = hashes[0]
    subject = Subject(
        "/d", ["a", "b"], [f"train/a/{i}.png" for i in range(n)], [f"/d/{i}" for i in range(n)],
        ["train"] * n, np.arange(n) % 2, [Checked(1, 1, h, None, 40, 40, "PNG RGB") for h in hashes],
        [], "f",
    )  # fmt: skip
    kinds = {}
    for limit in (n, n - 1):
        notes: list[str] = []
        found = find_findings(subject, x, Settings(neighbour_limit=limit), {}, notes)
        kinds[limit] = ({(f.kind, f.path) for f in found if f.kind.endswith("duplicate")}, notes)
    assert kinds[n] == (
        {("exact_duplicate", "train/a/1.png"), ("near_duplicate", "train/a/3.png")},
        [],
    )
    assert kinds[n - 1][0] == {("exact_duplicate", "train/a/1.png")}
    assert len(kinds[n - 1][1]) == 1 and "60 images are over 59" in kinds[n - 1][1][0]
    # the note is on autotl doctor's page and in the report's section, not only in health.json
    from autotl.health import DataHealth
    from autotl.report._write import write_health_page

    found, notes = (
        find_findings(subject, x, Settings(neighbour_limit=n - 1), {}, []),
        kinds[n - 1][1],
    )
    health = DataHealth(found, "/d", "f", "tiny", {"train": n}, notes=notes)
    page = write_health_page(tmp_path / "doctor.html", health).read_text()
    assert "Near duplicates and outliers not searched: 60 images are over 59" in page


def test_exclusion_changes_the_fingerprint_and_is_applied_to_every_split(checked) -> None:
    from autotl.data.dataset import load_folder
    from autotl.data.exclude import apply_exclusions, read_exclusions

    root, _, out, health = checked
    dataset = load_folder(root)
    exclusion = read_exclusions(out / "health" / "issues.csv", str(root))
    assert set(exclusion.files) == {f.path for f in health.findings}
    trimmed = apply_exclusions(dataset, exclusion)
    assert trimmed.fingerprint != dataset.fingerprint
    kept = {p for part in (trimmed.train, trimmed.val) for p in part.paths}
    assert not kept & {str(root / f) for f in exclusion.files}
    summary = trimmed.summary()["exclusions"]
    assert summary["sha256"] == exclusion.sha256 and summary["files"] == list(exclusion.files)
    assert summary["removed"]["train"] + summary["removed"]["val"] == len(dataset.train) + len(
        dataset.val
    ) - len(trimmed.train) - len(trimmed.val)
    again = apply_exclusions(
        load_folder(root), read_exclusions(out / "health" / "issues.csv", str(root))
    )
    assert again.fingerprint == trimmed.fingerprint  # the same list, the same data


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("path\n../outside.png\n", "is outside the data folder"),
        (
            "path,kind\ntrain/red/red_001.png,label_issue,extra\n",
            "line 2: 3 fields where the header has 2",
        ),
        ("file\ntrain/red/red_001.png\n", "has no 'path' column"),
        ("path\ntrain/red/nothing_here.png\n", "is not a file of the data folder"),
        ('path\n""\n', "the path is empty"),
    ],
)
def test_bad_exclusion_lists_are_one_line(
    checked, tmp_path: Path, capsys, content: str, fragment: str
) -> None:
    from autotl.cli import main

    root = checked[0]
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code = main(
        [
            "search",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--exclude",
            str(bad),
            "--weights",
            "none",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("autotl: error: exclusion list"), err
    assert fragment in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run" / "study.db").exists()


def test_exclusion_is_refused_for_a_sample_and_an_unknown_file(tmp_path: Path, capsys) -> None:
    from autotl.cli import main

    listed = tmp_path / "x.csv"
    listed.write_text("path\na.png\n")
    assert (
        main(
            ["search", "--sample", "digits", "--exclude", str(listed), "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "a built-in sample (--sample) has none" in capsys.readouterr().err
    assert main(["doctor", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no /usr/bin/chromium")
def test_doctor_page_renders_pictures_in_headless_chromium(checked, tmp_path: Path) -> None:
    from test_report import _chromium

    page = checked[2] / "health" / "report.html"
    html = page.read_text()
    assert html.count('<div class="pair">') == 3 and "data:image/png;base64," in html
    assert "train/blue/mislabelled_0.png" in html and "<script" not in html.lower()
    shot = tmp_path / "doctor.png"
    console, requested = _chromium(page, shot, tmp_path)
    print(f"\nscreenshot of the doctor's page: {shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000 and console == [] and requested == []


@pytest.mark.slow
def test_a_search_warns_of_leakage_reports_it_and_trains_without_the_excluded_files(
    checked, tmp_path: Path
) -> None:
    """End to end on the planted data: the warning before trial 0, the report's section and score without
    the leaked images; then ``--exclude``: recorded in the study, run.json and the SQL lineage, folder intact."""
    import autotl
    from autotl.run.lineage import lineage_of

    root, before, doctor_out, _ = checked
    space = tmp_path / "space.yaml"
    space.write_text(
        TINY_SPACE.replace("trials: 2", "trials: 1").replace("[tiny]", f"[{REAL['backbone']}]")
    )
    real = {"weights_dir": SHARED_WEIGHTS}
    events: list[dict] = []
    run = autotl.search(
        root,
        out=tmp_path / "leaky",
        space=str(space),
        on_event=events.append,
        **real,
    )
    warned = [
        i for i, e in enumerate(events) if "leakage: 2 image(s) of val" in e.get("warning", "")
    ]
    first_trial = next(i for i, e in enumerate(events) if "finished" in e)
    assert len(warned) == 1 and warned[0] < first_trial
    record = json.loads(run.report_paths["json"].read_text())
    assert record["health"]["counts"]["leakage"] == 2
    assert record["health"]["backbone"] == REAL["backbone"]
    clean = record["evaluation"]["without_leaked"]
    assert clean["leaked"] == 2 and clean["images"] == record["evaluation"]["images"] - 2
    assert "Data health" in run.report_paths["md"].read_text()
    # the report's check read the graph the check before trial 0 found: one graph, not two
    assert len(list((tmp_path / "leaky" / "cache" / "neighbours").glob("*.npz"))) == 1

    issues = doctor_out / "health" / "issues.csv"
    events.clear()
    excluded = autotl.search(
        root,
        out=tmp_path / "clean",
        space=str(space),
        exclude=issues,
        on_event=events.append,
        **real,
    )
    assert not [e for e in events if "leakage" in e.get("warning", "")]
    recorded = excluded.study.user_attrs["data"]["exclusions"]
    listed = sorted({r["path"] for r in csv.DictReader(open(issues))})
    assert recorded["files"] == listed and recorded["source"] == str(issues.resolve())
    assert (
        excluded.study.user_attrs["data"]["fingerprint"]
        != run.study.user_attrs["data"]["fingerprint"]
    )
    assert (
        json.loads((tmp_path / "clean" / "run.json").read_text())["exclusions"]["sha256"]
        == recorded["sha256"]
    )
    lineage = lineage_of(excluded.folder.best_model())
    assert lineage["exclusions"]["list_sha256"] == recorded["sha256"]
    assert lineage["exclusions"]["files"] == listed
    assert _folder_digest(root) == before
    with pytest.raises(UsageError, match="holds a search on other data"):
        autotl.search(root, out=tmp_path / "clean", space=str(space), **real)
