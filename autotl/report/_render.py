"""The record rendered: one self-contained HTML page, and Markdown with its plots as files."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from typing import Any, Optional

from autotl.report._common import REPORT_FILES, _epoch1, _fmt, _fmt_seconds

LEADER_COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("trial", "number", lambda r: str(r["number"])),
    ("state", "state", lambda r: r["state"]),
    ("backbone", "backbone", lambda r: _fmt(r["backbone"])),
    ("head", "head_width", lambda r: _fmt(r["head_width"])),
    ("dropout", "dropout", lambda r: _fmt(r["dropout"], ".2f")),
    ("unfreeze", "unfreeze_blocks", lambda r: _fmt(r["unfreeze_blocks"])),
    ("fine-tune lr", "finetune_lr", lambda r: _fmt(r["finetune_lr"], ".1e")),
    ("head stable", "head_stable_epoch", lambda r: _fmt(_epoch1(r["head_stable_epoch"]))),
    ("epochs p1", "epochs_phase1", lambda r: _fmt(r["epochs_phase1"])),
    ("epochs p2", "epochs_phase2", lambda r: _fmt(r["epochs_phase2"])),
    ("val acc", "val_accuracy", lambda r: _fmt(r["val_accuracy"], ".4f")),
    ("val loss", "val_loss", lambda r: _fmt(r["val_loss"], ".4f")),
    ("time", "seconds", lambda r: _fmt_seconds(r["seconds"])),
    ("note", "note", lambda r: r["note"] or ""),
]


LEADER_NOTE = (
    "Best first. Epochs are counted from 1; 'head stable' is the phase-1 epoch with the head's best validation loss "
    "('-' when it never plateaued, so phase 2 did not run); 'epochs p1/p2' are the epochs each phase ran."
)


def _sections(record: dict[str, Any]) -> dict[str, Any]:
    """Text pieces shared by the HTML and Markdown renderings."""
    s = record["summary"]
    d = s["data"]
    best = s["best"]
    facts: list[tuple[str, str]] = [
        (
            "study",
            f"{s['study_name']}"
            + (
                f" ({record['engine']} engine)"
                if record.get("engine", "optuna") != "optuna"
                else ""
            )
            + f" in {record['storage']}",
        ),
        ("data", f"{d['source'] or 'unknown'}" + (f" ({d['split']})" if d.get("split") else "")),
        (
            "classes",
            f"{len(d['class_names'])}: {', '.join(d['class_names'])}"
            if d["class_names"]
            else "unknown",
        ),
        (
            "images",
            f"{_fmt(d['train_images'])} train / {_fmt(d['val_images'])} val"
            + (f", {d['skipped']} file(s) skipped" if d.get("skipped") else ""),
        ),
        (
            "trials",
            ", ".join(f"{n} {state}" for state, n in sorted(s["states"].items())) or "none yet",
        ),
        (
            "time",
            f"{_fmt_seconds(s['seconds_in_trials'])} in trials, {_fmt_seconds(s['seconds_wall'])} from first start to last finish",
        ),
    ]
    if s.get("skipped_backbones"):  # why a backbone was left out (its checks, weights, or failures)
        facts.append(
            ("skipped backbones", "; ".join(f"{k}: {v}" for k, v in s["skipped_backbones"].items()))
        )
    if best:
        ci = best["ci95"]
        ci_text = (
            f" (95% CI {ci[0]:.4f}-{ci[1]:.4f}; {best['ci_method']})"
            if ci
            else f" ({best['ci_method']})"
        )
        facts.insert(
            0,
            (
                "best trial",
                f"trial {best['number']}: val accuracy {best['val_accuracy']:.4f}{ci_text}, val loss {_fmt(best['val_loss'], '.4f')}",
            ),
        )
        settings = ", ".join(
            f"{k}={_fmt(v, '.3g') if isinstance(v, float) else v}"
            for k, v in sorted(best["params"].items())
        )
        facts.insert(
            1,
            (
                "best settings",
                f"{settings}; head stable at epoch {_fmt(_epoch1(best['head_stable_epoch']))}, "
                f"{_fmt(best['epochs_phase1'])} + {_fmt(best['epochs_phase2'])} epochs, fine-tuning: {best['gate'] or '-'}",
            ),
        )
    else:
        facts.insert(0, ("best trial", "none: no trial has completed yet"))
    if record.get("engines"):
        facts.append(
            (
                "engines",
                "; ".join(
                    f"{e['engine']}: best {_fmt((e['best'] or {}).get('val_accuracy'), '.4f')} in {e['complete']} complete trials"
                    for e in record["engines"]["studies"]
                )
                + " (section 7)",
            )
        )
    counts_rows = []
    counts = d.get("counts") or {}
    for c in d["class_names"]:
        counts_rows.append(
            [c, _fmt((counts.get("train") or {}).get(c)), _fmt((counts.get("val") or {}).get(c))]
        )
    return {"facts": facts, "counts": counts_rows}


ENGINE_HEADERS = [
    "engine",
    "study",
    "trials",
    "complete",
    "failed",
    "best val acc",
    "95% CI",
    "mean",
    "median",
    "time in trials",
]


def _engine_rows(engines: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in engines["studies"]:
        best = s["best"] or {}
        ci = best.get("ci95")
        rows.append(
            [
                f"{s['engine']}" + (f" ({s['tuner']})" if s.get("tuner") else ""),
                s["study_name"] + (" (this report)" if s["reported"] else ""),
                str(s["trials"]),
                str(s["complete"]),
                str(s["failed"]),
                f"{best['val_accuracy']:.4f} (trial {best['number']})" if best else "-",
                f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "-",
                _fmt(s["mean_val_accuracy"], ".4f"),
                _fmt(s["median_val_accuracy"], ".4f"),
                _fmt_seconds(s["seconds_in_trials"]),
            ]
        )
    return rows


def _per_class_rows(ev: dict[str, Any]) -> list[list[str]]:
    return [
        [
            p["class"],
            f"{p['precision']:.3f}",
            f"{p['recall']:.3f}",
            f"{p['f1']:.3f}",
            str(p["support"]),
        ]
        for p in ev["per_class"]
    ]


def _lineage_rows(lin: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("autotl", lin["autotl_version"]),
        ("plugins", "; ".join(f"{k}: {v}" for k, v in lin["plugins"].items()) or "-"),
        ("data fingerprint", lin["data_fingerprint"] or "-"),
        ("data source", lin["data_source"] or "-"),
        ("seeds", ", ".join(f"{k} {v}" for k, v in lin["seeds"].items())),
        ("weights", str(lin.get("weights") or "-")),
        ("libraries (report)", ", ".join(f"{k} {v}" for k, v in lin["library_versions"].items())),
    ]
    if lin.get("library_versions_at_search"):
        rows.append(
            (
                "libraries (search)",
                ", ".join(f"{k} {v}" for k, v in lin["library_versions_at_search"].items()),
            )
        )
    rows.append(("command", lin["command"] or "- (not recorded)"))
    if lin.get("run_created"):
        rows.append(("run created", lin["run_created"]))
    return rows


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.5em;margin:.4em 0 .1em}h2{font-size:1.2em;border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1em;margin:1.2em 0 .4em}
.sub{color:#57606a;margin:0 0 1em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0;background:#fff}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f3f6}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#e6f4ea;font-weight:600}
tr.failed td{color:#8c1d18}tr.running td{color:#0550ae;font-style:italic}tr.pruned td{color:#6e7781}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:.5em 0}
dl.facts dt{font-weight:600;color:#57606a}dl.facts dd{margin:0}
img.plot{max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure.thumb{margin:0;padding:4px;border:1px solid #d0d7de;background:#fff;width:92px;text-align:center;font-size:11px}
figure.thumb img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated}
.note{color:#57606a;font-style:italic}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
"""


def _h(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _html_table(
    headers: list[str],
    rows: list[list[str]],
    classes: Optional[list[str]] = None,
    numeric: Optional[set[int]] = None,
) -> str:
    numeric = numeric or set()
    out = ["<table><thead><tr>", *(f"<th>{_h(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_h(classes[i])}"' if classes and classes[i] else ""
        cells = "".join(
            f'<td class="num">{_h(c)}</td>' if j in numeric else f"<td>{_h(c)}</td>"
            for j, c in enumerate(row)
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(figs: dict[str, bytes], name: str, alt: str, cls: str = "plot") -> str:
    data = base64.b64encode(figs[name]).decode("ascii")
    return f'<img class="{cls}" alt="{_h(alt)}" src="data:image/png;base64,{data}">'


def render_html(record: dict[str, Any], figs: dict[str, bytes], thumbs: dict[str, bytes]) -> str:
    sec = _sections(record)
    s = record["summary"]
    best_no = (s["best"] or {}).get("number")
    p: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # the page may load nothing from anywhere: only its own inline style and data: images
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autotl report: {_h(s['data']['source'] or s['study_name'])}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>autotl report: {_h(s['data']['source'] or s['study_name'])}</h1>",
        f'<p class="sub">generated {_h(record["generated"])} from {_h(record["run_dir"])}</p>',
        '<h2 id="summary">1. Summary</h2>',
        '<dl class="facts">',
        *(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in sec["facts"]),
        "</dl>",
    ]
    if sec["counts"]:
        p.append(_html_table(["class", "train", "val"], sec["counts"], numeric={1, 2}))

    p.append('<h2 id="leaderboard">2. Leaderboard</h2>')
    rows = record["leaderboard"]
    classes = ["best" if r["number"] == best_no else r["state"] for r in rows]
    p.append(
        _html_table(
            [c[0] for c in LEADER_COLUMNS],
            [[f(r) for _, _, f in LEADER_COLUMNS] for r in rows],
            classes,
            numeric=set(range(3, 13)) | {0},
        )
    )
    p.append(f'<p class="note">{_h(LEADER_NOTE)}</p>')

    p.append('<h2 id="curves">3. Learning curves</h2>')
    if record["curves"]:
        p.append(
            '<p class="note">Phase 1 trains the head on the frozen base; the shaded part after the dashed line is phase 2 (fine-tuning). '
            "The dotted line marks the epoch where the head's validation loss was best.</p>"
        )
        p.append(_img(figs, "curves_best.png", "validation curves of the best trials"))
        for c in record["curves"]:
            p.append(f"<h3>trial {c['number']}</h3>")
            p.append(
                _img(
                    figs,
                    f"curve_trial_{c['number']:04d}.png",
                    f"learning curves of trial {c['number']}",
                )
            )
    else:
        p.append('<p class="note">no complete trial has learning curves yet</p>')

    p.append('<h2 id="search">4. The search</h2>')
    search = record["search"]
    if "history.png" in figs:
        p.append(_img(figs, "history.png", "optimisation history"))
    imp = search["importances"]
    p.append("<h3>parameter importances</h3>")
    if imp.get("values"):
        p.append(_img(figs, "importances.png", "parameter importances"))
    p.append(f'<p class="note">{_h(imp["note"])}</p>')
    if search["by_backbone"]:
        p.append("<h3>accuracy by backbone, unfreeze depth and fine-tune rate</h3>")
        p.append(
            _html_table(
                ["backbone", "complete trials", "mean val acc", "best val acc"],
                [
                    [k, str(v["n"]), f"{v['mean']:.4f}", f"{v['max']:.4f}"]
                    for k, v in sorted(search["by_backbone"].items())
                ],
                numeric={1, 2, 3},
            )
        )
    if "params.png" in figs:
        p.append(
            _img(figs, "params.png", "accuracy by backbone, unfreeze depth and fine-tune rate")
        )

    p.append('<h2 id="evaluation">5. Best model on the validation set</h2>')
    ev = record["evaluation"]
    if ev.get("skipped"):
        p.append(f'<p class="note">skipped: {_h(ev["skipped"])}</p>')
    else:
        ci = ev["ci95"]
        which = (
            f"trial {ev['model_trial']}" if ev.get("model_trial") is not None else "trial unknown"
        )
        p.append(
            f"<p>{_h(ev['model'])} ({_h(which)}) on {ev['images']} validation images: accuracy <b>{ev['accuracy']:.4f}</b>"
            + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
            + f", {ev['misclassified_total']} misclassified.</p>"
        )
        if "confusion.png" in figs:
            p.append(_img(figs, "confusion.png", "confusion matrix"))
        p.append(
            _html_table(
                ["class", "precision", "recall", "f1", "support"],
                _per_class_rows(ev),
                numeric={1, 2, 3, 4},
            )
        )
        if ev["misclassified"]:
            shown = len(ev["misclassified"])
            p.append(
                f'<h3>misclassified images ({shown} of {ev["misclassified_total"]}, most confident first)</h3><div class="grid">'
            )
            for m in ev["misclassified"]:
                name = m["thumbnail"].split("/")[-1]
                p.append(
                    f'<figure class="thumb" title="{_h(m["file"])}">{_img(thumbs, name, m["file"], "")}'
                    f"<figcaption>true <b>{_h(m['true'])}</b><br>pred {_h(m['predicted'])} ({m['confidence']:.2f})</figcaption></figure>"
                )
            p.append("</div>")

    p.append('<h2 id="lineage">6. Lineage</h2>')
    lin = record["lineage"]
    p.append(
        '<dl class="facts">'
        + "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in _lineage_rows(lin))
        + "</dl>"
    )
    p.append("<h3>weights per trial</h3>")
    p.append(
        _html_table(
            ["trial", "backbone", "plugin", "weights", "weights sha256"],
            [
                [
                    str(t["number"]),
                    _fmt(t["backbone"]),
                    _fmt(t["plugin"]),
                    _fmt(t["weights_origin"]),
                    _fmt(t["weights_sha256"]),
                ]
                for t in lin["trials"]
            ],
            numeric={0},
        )
    )
    if lin["recorded_models"]:
        p.append("<h3>recorded model files</h3>")
        p.append(
            _html_table(
                ["id", "kind", "trial", "sha256", "path", "created"],
                [
                    [
                        str(m["artifact_id"]),
                        m["kind"],
                        _fmt(m["trial_number"]),
                        (m["sha256"] or "")[:16],
                        m["path"],
                        _fmt(m["created"]),
                    ]
                    for m in lin["recorded_models"]
                ],
            )
        )
    if lin.get("space"):
        p.append(
            "<details><summary>search space</summary><pre>"
            + _h(json.dumps(lin["space"], indent=2))
            + "</pre></details>"
        )
    if record.get("engines"):
        p.append('<h2 id="engines">7. Engines compared</h2>')
        p.append(
            _html_table(ENGINE_HEADERS, _engine_rows(record["engines"]), numeric=set(range(2, 10)))
        )
        if "engines.png" in figs:
            p.append(_img(figs, "engines.png", "optimisation history by engine"))
        p.append(f'<p class="note">{_h(record["engines"]["note"])}</p>')
    p.append("</main></body></html>")
    return "\n".join(p) + "\n"


def _md_cell(text: Any) -> str:
    return str("" if text is None else text).replace("|", "\\|").replace("\n", " ")


def _md_table(
    headers: list[str], rows: list[list[str]], right: Optional[set[int]] = None
) -> list[str]:
    right = right or set()
    out = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|",
    ]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(record: dict[str, Any], figs: dict[str, bytes]) -> str:
    sec = _sections(record)
    s = record["summary"]
    md: list[str] = [
        f"# autotl report: {s['data']['source'] or s['study_name']}",
        "",
        f"_generated {record['generated']} from {record['run_dir']}_",
        "",
        "## 1. Summary",
        "",
    ]
    md += [f"- **{k}**: {_md_cell(v)}" for k, v in sec["facts"]]
    if sec["counts"]:
        md += ["", *_md_table(["class", "train", "val"], sec["counts"], {1, 2})]
    md += ["", "## 2. Leaderboard", ""]
    md += _md_table(
        [c[0] for c in LEADER_COLUMNS],
        [[f(r) for _, _, f in LEADER_COLUMNS] for r in record["leaderboard"]],
        set(range(3, 13)) | {0},
    )
    md += ["", f"_{LEADER_NOTE}_"]
    md += ["", "## 3. Learning curves", ""]
    if record["curves"]:
        md += [
            "Phase 1 trains the head on the frozen base; the shaded part after the dashed line is phase 2 (fine-tuning).",
            "",
            f"![validation curves of the best trials]({REPORT_FILES}/curves_best.png)",
            "",
        ]
        md += [
            f"![trial {c['number']}]({REPORT_FILES}/curve_trial_{c['number']:04d}.png)"
            for c in record["curves"]
        ]
    else:
        md += ["_no complete trial has learning curves yet_"]
    md += ["", "## 4. The search", ""]
    search = record["search"]
    if "history.png" in figs:
        md += [f"![optimisation history]({REPORT_FILES}/history.png)", ""]
    imp = search["importances"]
    md += ["### Parameter importances", ""]
    if imp.get("values"):
        md += _md_table(
            ["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in imp["values"].items()], {1}
        )
        md += ["", f"![parameter importances]({REPORT_FILES}/importances.png)"]
    md += ["", f"_{imp['note']}_", ""]
    if search["by_backbone"]:
        md += ["### Accuracy by backbone, unfreeze depth and fine-tune rate", ""]
        md += _md_table(
            ["backbone", "complete trials", "mean val acc", "best val acc"],
            [
                [k, str(v["n"]), f"{v['mean']:.4f}", f"{v['max']:.4f}"]
                for k, v in sorted(search["by_backbone"].items())
            ],
            {1, 2, 3},
        )
    if "params.png" in figs:
        md += ["", f"![accuracy by parameter]({REPORT_FILES}/params.png)"]
    md += ["", "## 5. Best model on the validation set", ""]
    ev = record["evaluation"]
    if ev.get("skipped"):
        md += [f"_skipped: {ev['skipped']}_"]
    else:
        ci = ev["ci95"]
        which = (
            f"trial {ev['model_trial']}" if ev.get("model_trial") is not None else "trial unknown"
        )
        md += [
            f"`{ev['model']}` ({which}) on {ev['images']} validation images: accuracy **{ev['accuracy']:.4f}**"
            + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
            + f", {ev['misclassified_total']} misclassified.",
            "",
        ]
        names = ev["class_names"]
        md += ["Confusion matrix (rows: true, columns: predicted):", ""]
        md += _md_table(
            ["true \\ predicted", *names],
            [[names[i], *map(str, row)] for i, row in enumerate(ev["confusion_matrix"])],
            set(range(1, len(names) + 1)),
        )
        md += [
            "",
            *_md_table(
                ["class", "precision", "recall", "f1", "support"], _per_class_rows(ev), {1, 2, 3, 4}
            ),
        ]
        if ev["misclassified"]:
            md += [
                "",
                f"### Misclassified images ({len(ev['misclassified'])} of {ev['misclassified_total']})",
                "",
            ]
            md += _md_table(
                ["image", "true", "predicted", "confidence", "file"],
                [
                    [
                        f"![]({m['thumbnail']})",
                        m["true"],
                        m["predicted"],
                        f"{m['confidence']:.2f}",
                        m["file"],
                    ]
                    for m in ev["misclassified"]
                ],
                {3},
            )
    md += ["", "## 6. Lineage", ""]
    lin = record["lineage"]
    md += [
        f"- **{k}**: {_md_cell(v) if k != 'command' else '`' + str(v) + '`'}"
        for k, v in _lineage_rows(lin)
    ]
    md += ["", "### Weights per trial", ""]
    md += _md_table(
        ["trial", "backbone", "plugin", "weights", "weights sha256"],
        [
            [
                str(t["number"]),
                _fmt(t["backbone"]),
                _fmt(t["plugin"]),
                _fmt(t["weights_origin"]),
                _fmt(t["weights_sha256"]),
            ]
            for t in lin["trials"]
        ],
        {0},
    )
    if lin["recorded_models"]:
        md += ["", "### Recorded model files", ""]
        md += _md_table(
            ["id", "kind", "trial", "sha256", "path"],
            [
                [
                    str(m["artifact_id"]),
                    m["kind"],
                    _fmt(m["trial_number"]),
                    (m["sha256"] or "")[:16],
                    m["path"],
                ]
                for m in lin["recorded_models"]
            ],
        )
    if record.get("engines"):
        md += [
            "",
            "## 7. Engines compared",
            "",
            *_md_table(ENGINE_HEADERS, _engine_rows(record["engines"]), set(range(2, 10))),
        ]
        if "engines.png" in figs:
            md += ["", f"![optimisation history by engine]({REPORT_FILES}/engines.png)"]
        md += ["", f"_{record['engines']['note']}_"]
    return "\n".join(md) + "\n"
