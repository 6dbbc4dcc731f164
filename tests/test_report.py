"""Study reports on one real tiny search: the record, its three renderings, a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import COLOURS, TINY_SPACE, write_images

from autotl.errors import UsageError
from autotl.scoring.objective import (
    best_trial,
)  # ties broken as autotl breaks them: accuracy, then val loss, then earlier

SPACE = TINY_SPACE
COMMAND = "autotl search colours --out run --trials 2"
CHROMIUM = Path("/usr/bin/chromium")


def noisy_labels(folder: Path) -> Path:
    """The colour classes, plus 3 images per class painted in the next class's colour: some
    validation images are then misclassified, so the report has errors to show."""
    write_images(folder, COLOURS, 14)
    names = list(COLOURS)
    for k, name in enumerate(names):
        other = names[(k + 1) % len(names)]
        odd = write_images(folder.parent / f"odd{k}", {other: COLOURS[other]}, 3, seed=10 + k)
        for f in sorted((odd / other).glob("*.png")):
            f.rename(folder / name / f"odd_{other}_{f.name}")
    return folder


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory, registry):
    """ONE real tiny search (2 trials); the search itself records each trial's layers and the best model."""
    from autotl.backbones.weights import WeightsSource
    from autotl.data.dataset import load_folder
    from autotl.engine.optuna_engine import SearchConfig, run_search
    from autotl.engine.space import load_space

    root = tmp_path_factory.mktemp("report")
    dataset = load_folder(noisy_labels(root / "colours"), val_fraction=0.25, seed=0)
    (root / "space.yaml").write_text(SPACE)
    space, _ = load_space(root / "space.yaml")
    cfg = SearchConfig(
        out=root / "run",
        space=space,
        trials=2,
        weights=WeightsSource("none"),
        record={"command": COMMAND},
    )
    study = run_search(cfg, registry, dataset)
    return cfg, study


@pytest.fixture(scope="session")
def report(searched):
    from autotl.report import write_report

    cfg, _ = searched
    paths = write_report(cfg.out)
    return paths, json.loads(paths["json"].read_text())


def test_wilson_interval() -> None:
    from autotl.report import (
        wilson_interval,
    )  # autotl.scoring.stats.wilson_interval(successes, n), as the model card uses it

    lo, hi = wilson_interval(0.5 * 10, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson_interval(1.0 * 12, 12)
    assert round(lo, 4) == 0.7575 and hi == 1.0
    assert wilson_interval(0.0, 5)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_three_files_and_the_record_matches_the_study(report, searched) -> None:
    paths, rec = report
    cfg, study = searched
    assert {k: p.name for k, p in paths.items()} == {
        "html": "report.html",
        "md": "report.md",
        "json": "report.json",
    }
    assert all(p.is_file() and p.parent == cfg.out for p in paths.values())
    assert sorted(r["number"] for r in rec["leaderboard"]) == [t.number for t in study.trials]
    best = rec["summary"]["best"]
    assert best["number"] == best_trial(study).number and best["val_accuracy"] == study.best_value
    lo, hi = best["ci95"]
    assert (
        0.0 <= lo <= best["val_accuracy"] <= hi <= 1.0 and hi - lo > 0.05
    )  # 12 val images: a wide interval
    data = rec["summary"]["data"]
    assert (
        data["val_images"] == 12
        and data["class_names"] == sorted(COLOURS)
        and data["counts"]["val"]["red"] == 4
    )
    for row in rec["leaderboard"]:
        assert (
            row["state"] == "complete" and row["backbone"] == "tiny" and row["epochs_phase1"] >= 1
        )
    curve = rec["curves"][0]
    assert curve["boundary"] == len(curve["phase1"]["val_loss"]) and set(curve["phase1"]) >= {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
    }
    imp = rec["search"]["importances"]
    assert rec["search"]["history"] and (
        imp["values"] or imp["note"].startswith("not enough trials")
    )
    # section 5 re-created the same validation split and scored the best model on it
    ev = rec["evaluation"]
    assert "skipped" not in ev, ev
    assert ev["split"]["fingerprint"] == data["fingerprint"] and ev["images"] == 12
    assert abs(ev["accuracy"] - study.best_value) <= 1 / 12 + 1e-9
    assert ev["model_trial"] == best_trial(study).number  # found through the lineage tables
    assert sum(map(sum, ev["confusion_matrix"])) == 12 and len(ev["per_class"]) == 3
    assert 1 <= ev["misclassified_total"] and len(ev["misclassified"]) == min(
        24, ev["misclassified_total"]
    )
    for m in ev["misclassified"]:
        assert m["true"] != m["predicted"] and (cfg.out / m["thumbnail"]).is_file()
    lin = rec["lineage"]
    assert lin["command"] == COMMAND and lin["data_fingerprint"] == data["fingerprint"]
    assert {"tensorflow", "keras", "optuna", "numpy", "pluggy"} <= set(lin["library_versions"])
    assert (
        "autotl_tiny" in lin["plugins"]
        and [t["plugin"] for t in lin["trials"]] == ["autotl_tiny"] * 2
    )
    assert {m["kind"] for m in lin["recorded_models"]} == {"trial_weights", "best_model"}
    for name, rel in rec["figures"].items():
        assert (cfg.out / rel).is_file(), name


def test_markdown_has_the_leaderboard_and_local_images(report, searched) -> None:
    paths, _rec = report
    md = paths["md"].read_text()
    for t in searched[1].trials:
        assert re.search(rf"^\| {t.number} \| complete \| tiny \| ", md, re.M), (
            f"no leaderboard row for trial {t.number}"
        )
    assert "95% CI" in md and "## 6. Lineage" in md and COMMAND in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images and all(
        not i.startswith(("http:", "https:", "/")) and (paths["md"].parent / i).is_file()
        for i in images
    )


def test_html_references_nothing_outside_itself(report) -> None:
    page = report[0]["html"].read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, re.I) + re.findall(
        r"url\(\s*['\"]?([^'\")]+)", page, re.I
    )
    assert refs, "expected inline images"
    assert not [r for r in refs if re.match(r"(https?:)?//", r, re.I)], "external reference"
    assert all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<script" not in page.lower() and "@import" not in page and "<link" not in page.lower()
    assert "Content-Security-Policy" in page


def _chromium(
    page: Path, shot: Path, tmp: Path, size: str = "1280,2000"
) -> tuple[list[str], list[str]]:
    """Open ``page`` headless; return (console lines, URLs the page itself requested)."""
    netlog = tmp / f"{shot.stem}.netlog.json"
    proc = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={size}",
            "--enable-logging=stderr",
            "--v=0",
            f"--log-net-log={netlog}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # the page's own requests carry its file:// site; Chromium's own (updates, time) do not
    requested = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start
        and "file://" in str(e["params"].get("network_isolation_key", ""))
        and not e["params"]["url"].startswith(("file:", "data:"))
    ]
    return console, requested


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"
)
def test_html_renders_in_headless_chromium_offline(report, tmp_path: Path) -> None:
    # the detector first: a page with a script error and two remote loads must be caught
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><img src="http://img.example.invalid/x.png"><link rel="stylesheet" href="https://css.example.invalid/a.css">'
        "<script>undefined_fn()</script>"
    )
    console, requested = _chromium(bad, tmp_path / "bad.png", tmp_path)
    assert any("Uncaught" in line for line in console) and len(requested) == 2, (console, requested)

    shot = tmp_path / "report.png"
    console, requested = _chromium(report[0]["html"], shot, tmp_path)
    print(f"\nscreenshot of report.html: {shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert console == [] and requested == []


def _widths(page: str, tmp: Path, width: int) -> dict[str, float]:
    """How wide ``page`` lays out in headless Chromium at ``width`` pixels: the page's scroll width, the
    viewport's, and the right edge of its widest table (measured by a script in a copy of the page
    whose policy lets that one script run)."""
    measure = (
        "<script>var t=[...document.querySelectorAll('table')].map(e=>e.getBoundingClientRect().right);"
        "document.title=JSON.stringify({scroll:document.documentElement.scrollWidth,"
        "viewport:document.documentElement.clientWidth,table:Math.max(0,...t)})</script>"
    )
    copy = tmp / "measured.html"
    copy.write_text(
        page.replace(
            "default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'"
        ).replace("</body>", measure + "</body>")
    )
    proc = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile-measure'}",
            f"--window-size={width},900",
            "--dump-dom",
            copy.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    found = re.search(r"<title>(\{.*?\})</title>", proc.stdout)
    assert found, proc.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"
)
def test_long_weight_paths_wrap_inside_the_page(synthetic_record, tmp_path: Path) -> None:
    """The lineage's per-trial weights table holds weight-file paths and hashes without spaces: they wrap,
    and no table pushes the page wider than the window."""
    from autotl.report import render_html

    folder = (
        "/srv/shared/models/keras-applications/imagenet/"
        + "mobilenet_v2_weights_tf_dim_ordering" * 3
    )
    record = json.loads(json.dumps(synthetic_record))
    for t in record["lineage"]["trials"]:
        t["weights_origin"] = f"{folder}/mobilenet_v2_1.0_224_no_top.h5"
        t["weights_sha256"] = "f" * 64
    page = render_html(record, {}, {})
    assert folder in page
    for width in (1280, 800):
        seen = _widths(page, tmp_path, width)
        assert seen["table"] > 0 and seen["scroll"] <= seen["viewport"], (width, seen)
        assert seen["table"] <= seen["viewport"], (width, seen)


def test_report_while_a_trial_is_running(searched, tmp_path: Path, capsys) -> None:
    import optuna

    from autotl.cli import main
    from autotl.engine.space import trial_params

    cfg, study = searched
    run = tmp_path / "run"
    shutil.copytree(cfg.out, run, ignore=shutil.ignore_patterns("cache", "report*"))
    live = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{run / 'study.db'}")
    failed = live.ask()
    trial_params(failed, cfg.space)
    failed.set_user_attr(
        "fail_reason", "training diverged at epoch 2 (loss nan); lower the learning rate"
    )
    live.tell(failed, state=optuna.trial.TrialState.FAIL)
    running = live.ask()  # a worker in the middle of phase 1: params and one epoch, nothing else
    trial_params(running, cfg.space)
    running.set_user_attr("plugin", "autotl_tiny")
    running.report(0.5, 0)

    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / "report.html"), str(run / "report.md"), str(run / "report.json")]
    rec = json.loads((run / "report.json").read_text())
    rows = {r["number"]: r for r in rec["leaderboard"]}
    assert (
        rows[running.number]["state"] == "running" and rows[running.number]["val_accuracy"] is None
    )
    assert rows[running.number]["epochs_phase1"] == 1 and rows[running.number]["backbone"] == "tiny"
    assert rows[failed.number]["state"] == "failed" and "diverged" in rows[failed.number]["note"]
    assert rec["summary"]["best"]["number"] == best_trial(study).number
    assert rec["summary"]["states"] == {"complete": 2, "failed": 1, "running": 1}
    md = (run / "report.md").read_text()
    assert re.search(rf"^\| {running.number} \| running \| tiny \| ", md, re.M)
    assert re.search(rf"^\| {failed.number} \| failed \| tiny \| .*diverged", md, re.M)


def test_usage_errors_are_one_line(tmp_path: Path, searched) -> None:
    from autotl.report import write_report

    with pytest.raises(UsageError, match="does not exist") as e1:
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no study in") as e2:
        write_report(tmp_path / "empty")
    with pytest.raises(UsageError, match="no study 'other'") as e3:
        write_report(searched[0].out, study_name="other")
    for e in (e1, e2, e3):
        assert "\n" not in str(e.value)


def synthetic_study(run: Path, n: int = 9):
    """A study written without training: complete trials with histories, a pruned one, no run.json."""
    import math

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    run.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{run / 'study.db'}", study_name="autotl", direction="maximize"
    )
    study.set_user_attr(
        "space",
        {
            "seed": 0,
            "val_fraction": 0.2,
            "phase1": {"epochs": 10},
            "phase2": {
                "unfreeze_blocks": {"low": 0, "high": 3},
                "learning_rate": {"low": 1e-6, "high": 1e-4, "log": True},
            },
        },
    )
    study.set_user_attr(
        "data",
        {
            "source": "sample:digits",
            "split": "stratified, val_fraction=0.2, seed=0",
            "class_names": ["0", "1"],
            "counts": {"train": {"0": 80, "1": 80}, "val": {"0": 20, "1": 20}},
            "skipped": 0,
            "fingerprint": "0" * 64,
        },
    )
    dists = {
        "backbone": CategoricalDistribution(["mobilenet_v2", "resnet50"]),
        "head_width": CategoricalDistribution([64, 128]),
        "dropout": FloatDistribution(0.0, 0.5),
        "unfreeze_blocks": IntDistribution(0, 3),
        "finetune_lr": FloatDistribution(1e-6, 1e-4, log=True),
    }
    for i in range(n):
        params = {
            "backbone": ["mobilenet_v2", "resnet50"][i % 2],
            "head_width": [64, 128][i // 2 % 2],
            "dropout": 0.05 * i,
            "unfreeze_blocks": i % 4,
            "finetune_lr": 10 ** (-6 + 2 * i / n),
        }
        acc = 0.6 + 0.03 * i + 0.1 * (i % 2)
        e1, e2 = 6 + i % 3, 3 if i % 4 else 0

        def curve(k, a, b):
            return [a + (b - a) * (1 - math.exp(-j / 2)) for j in range(k)]

        history = {
            "phase1": {
                "loss": curve(e1, 1.2, 0.4),
                "accuracy": curve(e1, 0.5, acc),
                "val_loss": curve(e1, 1.3, 0.5),
                "val_accuracy": curve(e1, 0.5, acc - 0.02),
            },
            "phase2": {
                "loss": curve(e2, 0.4, 0.3),
                "accuracy": curve(e2, acc, acc + 0.02),
                "val_loss": curve(e2, 0.5, 0.45),
                "val_accuracy": curve(e2, acc - 0.02, acc),
            }
            if e2
            else {},
        }
        attrs = {
            "history": history,
            "head_stable_epoch": e1 - 4,
            "gate": "passed" if e2 else "not asked: unfreeze_blocks is 0",
            "phase2_kept": bool(e2),
            "val_loss": 0.45,
            "seconds": {"phase1": 3.0, "phase2": 2.0},
            "seconds_total": 5.5,
            "plugin": "autotl_plugins.mobilenet_v2",
            "weights_origin": "random",
            "weights_sha256": None,
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=acc,
                user_attrs=attrs,
                intermediate_values={s: acc for s in range(e1 + e2)},
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            params=params,
            distributions=dists,
            value=0.4,
            user_attrs={"pruned_at": {"phase": 1, "step": 3}},
            intermediate_values={0: 0.3, 1: 0.35, 2: 0.38, 3: 0.4},
        )
    )
    return study


def test_a_bigger_study_without_models_or_run_json(tmp_path: Path) -> None:
    """Nine trials on two backbones (importances, top-6 curves), a pruned trial, no best model yet."""
    from autotl.report import write_report

    study = synthetic_study(tmp_path / "run")
    paths = write_report(tmp_path / "run")
    rec = json.loads(paths["json"].read_text())
    assert (
        rec["summary"]["best"]["number"] == best_trial(study).number
        and rec["summary"]["best"]["val_accuracy"] == study.best_value
    )
    assert rec["summary"]["data"]["val_images"] == 40
    imp = rec["search"]["importances"]["values"]
    assert imp and abs(sum(imp.values()) - 1) < 1e-6 and "backbone" in imp
    assert [c["number"] for c in rec["curves"]] == [r["number"] for r in rec["leaderboard"][:6]]
    assert rec["search"]["by_backbone"]["resnet50"]["max"] == study.best_value
    pruned = next(r for r in rec["leaderboard"] if r["state"] == "pruned")
    assert (pruned["epochs_phase1"], pruned["epochs_phase2"], pruned["val_accuracy"]) == (
        4,
        0,
        0.4,
    ) and "pruned in phase 1" in pruned["note"]
    assert rec["evaluation"]["skipped"].startswith("no best_model.keras")
    assert (
        rec["lineage"]["command"] is None
        and "autotl_plugins.mobilenet_v2" in rec["lineage"]["plugins"]
    )
    assert {"importances.png", "params.png", "history.png", "curves_best.png"} <= set(
        rec["figures"]
    )
    md = paths["md"].read_text()
    assert (
        "| backbone |" in md.replace("parameter", "backbone")
        and "_skipped: no best_model.keras" in md
    )
    page = paths["html"].read_text()
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)


# -- the report as an ordered list of sections, and the objective that drives it -----------------


@pytest.fixture(scope="module")
def synthetic_record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The record of the nine-trial synthetic study, built without evaluating a model."""
    from autotl.report import build_record

    run = tmp_path_factory.mktemp("sections") / "run"
    study = synthetic_study(run)
    study.set_user_attr("objectives", ["accuracy"])
    study.set_user_attr("sampler", "random")
    return build_record(run, study, f"sqlite:///{run / 'study.db'}", evaluate=False)


def _headings(md: str) -> list[str]:
    return re.findall(r"^## (.+)$", md, re.M)


def test_a_section_added_to_the_list_appears_in_both_renderings(synthetic_record) -> None:
    from autotl.report import SECTIONS, render_html, render_markdown
    from autotl.report._document import Column, Facts, Section, table

    def counts(record: dict) -> Section:
        """A new section: one function of the record; its strings come from the data, so escaped."""
        states = record["summary"]["states"]
        return Section(
            "counts",
            "Trial <states> & counts",
            (
                Facts((("study", f"{record['summary']['study_name']} <b>bold?</b>"),)),
                table(["state", Column("trials", True)], sorted(states.items())),
            ),
        )

    sections = [*SECTIONS, counts]
    md = render_markdown(synthetic_record, {}, sections)
    page = render_html(synthetic_record, {}, {}, sections)
    assert _headings(md)[-1] == "7. Trial \\<states> & counts"  # no engines: after lineage (6)
    assert "- **study**: autotl \\<b>bold?\\</b>" in md
    assert re.search(r"^\| complete \| 9 \|$", md, re.M) and "|---|---:|" in md
    assert '<h2 id="counts">7. Trial &lt;states&gt; &amp; counts</h2>' in page
    assert "<dd>autotl &lt;b&gt;bold?&lt;/b&gt;</dd>" in page and "<b>bold?" not in page
    assert '<td>complete</td><td class="num">9</td>' in page
    # first in the list, it is section 1 and every other section moves down one
    first = render_markdown(synthetic_record, {}, [counts, *SECTIONS])
    assert _headings(first)[:2] == ["1. Trial \\<states> & counts", "2. Summary"]


def test_a_record_without_an_optional_part_renders_without_it(synthetic_record) -> None:
    from autotl.report import render_html, render_markdown

    full = render_markdown(synthetic_record, {})
    assert _headings(full) == [
        "1. Summary",
        "2. Leaderboard",
        "3. Learning curves",
        "4. The search",
        "5. Best model on the validation set",
        "6. Lineage",
    ]
    assert "_skipped: not asked_" in full
    partial = {k: v for k, v in synthetic_record.items() if k not in ("evaluation", "curves")}
    md = render_markdown(partial, {})
    page = render_html(partial, {}, {})
    assert _headings(md) == ["1. Summary", "2. Leaderboard", "3. The search", "4. Lineage"]
    assert 'id="evaluation"' not in page and 'id="curves"' not in page
    assert '<h2 id="lineage">4. Lineage</h2>' in page
    # no figure was drawn: neither rendering refers to one
    assert "report_files/" not in md and "<img" not in page


def test_the_study_objective_names_the_scores_in_both_renderings(synthetic_record) -> None:
    from dataclasses import asdict

    from autotl.report import render_html, render_markdown
    from autotl.scoring.objective import OBJECTIVES

    rec = synthetic_record
    assert rec["objectives"] == [asdict(OBJECTIVES["accuracy"])] and rec["sampler"] == "random"
    best = rec["summary"]["best"]
    assert best["values"] == {"accuracy": best["val_accuracy"]}
    md, page = render_markdown(rec, {}), render_html(rec, {}, {})
    for text in (md, page):
        assert (
            f"trial {best['number']}: validation accuracy {best['val_accuracy']:.4f} (95% CI"
            in text
        )
        assert "validation accuracy (maximize)" in text and "higher is better" in text
    assert "| val acc | val loss |" in md and '<th class="num">val acc</th>' in page
    assert re.search(r"^- \*\*sampler\*\*: random$", md, re.M)

    # the labels come from the record's objectives, not from the renderers
    relabelled = {
        **rec,
        "objectives": [{**rec["objectives"][0], "label": "top-1 accuracy", "short": "top-1"}],
    }
    md, page = render_markdown(relabelled, {}), render_html(relabelled, {}, {})
    for text in (md, page):
        assert f"top-1 accuracy {best['val_accuracy']:.4f}" in text and "val acc" not in text
    assert "| top-1 | val loss |" in md and "| mean top-1 | best top-1 |" in md
    assert '<th class="num">top-1</th>' in page


def test_a_minimised_objective_ranks_and_labels_the_report(tmp_path: Path, monkeypatch) -> None:
    """A study that minimises validation loss: best, leaderboard, history and by-backbone follow it."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from autotl.report import build_record, render_html, render_markdown
    from autotl.scoring.objective import MINIMIZE, OBJECTIVES, Objective

    # a new objective is one entry in OBJECTIVES (autotl.scoring.objective's extension point)
    loss = Objective("loss", "val_loss", MINIMIZE, "validation loss", "val loss")
    monkeypatch.setitem(OBJECTIVES, "loss", loss)
    run = tmp_path / "run"
    run.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{run / 'study.db'}", study_name="autotl", direction="minimize"
    )
    study.set_user_attr("objectives", ["loss"])
    study.set_user_attr("data", {"source": "x", "counts": {"val": {"a": 10, "b": 10}}})
    scores = [(0.9, 0.50), (0.7, 0.20), (0.8, 0.35), (0.95, 0.60)]  # accuracy and loss disagree
    for i, (acc, val_loss) in enumerate(scores):
        study.add_trial(
            optuna.trial.create_trial(
                params={"backbone": "ab"[i % 2]},
                distributions={"backbone": CategoricalDistribution(["a", "b"])},
                value=val_loss,
                user_attrs={"metrics": {"val_accuracy": acc, "val_loss": val_loss}},
            )
        )
    rec = build_record(run, study, f"sqlite:///{run / 'study.db'}", evaluate=False)
    assert rec["objectives"][0]["direction"] == "minimize"
    assert [r["number"] for r in rec["leaderboard"]] == [1, 2, 0, 3]
    assert rec["summary"]["best"]["number"] == 1 and rec["summary"]["best"]["ci95"]
    assert [h["best_so_far"] for h in rec["search"]["history"]] == [0.5, 0.2, 0.2, 0.2]
    by = rec["search"]["by_backbone"]
    assert (by["a"]["best"], by["b"]["best"]) == (0.35, 0.2)
    md, page = render_markdown(rec, {}), render_html(rec, {}, {})
    for text in (md, page):
        assert "trial 1: validation loss 0.2000, val accuracy 0.7000 (95% CI" in text
        assert "validation loss (lower is better)" in text
    header = next(line for line in md.splitlines() if line.startswith("| trial | state |"))
    assert header.count("val loss") == 1 and "val acc" not in header  # no second loss column
    assert page.count('<th class="num">val loss</th>') == 1
