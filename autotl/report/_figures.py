"""The report's plots, drawn from the record (a bare Figure, saved through Agg: no pyplot, no GUI backend)."""

from __future__ import annotations

import io
import math
from typing import Any

from autotl.report._common import _score, objectives_of

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=90, layout="constrained")
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _series(curve: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    values = list(curve["phase1"].get(key, [])) + list(curve["phase2"].get(key, []))
    return list(range(1, len(values) + 1)), [v if v is not None else float("nan") for v in values]


def _mark_boundary(ax: Any, curve: dict[str, Any], label: bool) -> None:
    n1, n2 = curve["boundary"], len(curve["phase2"].get("val_loss", []))
    if n2:
        ax.axvspan(n1 + 0.5, n1 + n2 + 0.5, color="#f2e6c9", alpha=0.5, lw=0)
        ax.axvline(
            n1 + 0.5, color="#7f6000", ls="--", lw=1, label="phase 2 starts" if label else None
        )


def _fig_curve(curve: dict[str, Any], o: dict[str, Any]) -> bytes:
    fig = _figure(8.4, 2.9)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style, name in ((metric, "-", "train"), (f"val_{metric}", "--", "val")):
            x, y = _series(curve, key)
            if y:
                ax.plot(
                    x,
                    y,
                    style,
                    marker=".",
                    ms=4,
                    color=COLORS[0] if name == "train" else COLORS[1],
                    label=f"{name} {metric}",
                )
        _mark_boundary(ax, curve, metric == "loss")
        if curve.get("head_stable_epoch") is not None:
            ax.axvline(
                curve["head_stable_epoch"] + 1,
                color="#888",
                ls=":",
                lw=1,
                label="head stable" if metric == "loss" else None,
            )
        ax.set_xlabel("epoch (phase 1, then phase 2)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"trial {curve['number']} ({curve['backbone']}), "
        f"{o['label']} {_score(o, (curve.get('values') or {}).get(o['name']))}",
        fontsize=10,
    )
    return _png(fig)


def _fig_overlay(curves: list[dict[str, Any]]) -> bytes:
    fig = _figure(8.4, 3.1)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("val_accuracy", "val_loss")):
        for i, c in enumerate(curves):
            x, y = _series(c, key)
            color = COLORS[i % len(COLORS)]
            ax.plot(x, y, "-", marker=".", ms=3, color=color, label=f"trial {c['number']}")
            if c["phase2"].get(key) and c["boundary"] < len(y):
                ax.plot(
                    [c["boundary"] + 1],
                    [y[c["boundary"]]],
                    marker="D",
                    ms=6,
                    color=color,
                    mec="black",
                    mew=0.6,
                )
        ax.set_xlabel("epoch (diamond: first fine-tuning epoch)")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("best trials: validation curves overlaid", fontsize=10)
    return _png(fig)


def _fig_history(
    histories: list[tuple[str, list[dict[str, Any]]]], title: str, ylabel: str
) -> bytes:
    """Optimisation histories: complete trials as dots, pruned ones as crosses, the best so far as a step line.

    One history keeps two colours (dots, line); several are overlaid, one colour each, labelled by name.
    """
    fig = _figure(6.4, 3.0)
    ax = fig.subplots()
    several = len(histories) > 1
    numbers: list[int] = []
    for i, (name, history) in enumerate(histories):
        dots, line = (COLORS[i % len(COLORS)],) * 2 if several else (COLORS[0], COLORS[1])
        done = [h for h in history if h["state"] == "complete"]
        pruned = [h for h in history if h["state"] == "pruned"]
        ax.plot(
            [h["number"] for h in done],
            [h["value"] for h in done],
            "o",
            color=dots,
            alpha=0.5 if several else 1.0,
            label=None if several else "complete",
        )
        if pruned:
            ax.plot(
                [h["number"] for h in pruned],
                [h["value"] for h in pruned],
                "x",
                color="#999",
                label=None if several else "pruned (last reported)",
            )
        best = [(h["number"], h["best_so_far"]) for h in history if h["best_so_far"] is not None]
        if best:
            ax.step(
                [b[0] for b in best],
                [b[1] for b in best],
                where="post",
                color=line,
                label=f"{name}: best so far" if several else "best so far",
            )
        numbers += [h["number"] for h in history]
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if numbers:
        ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _fig_importances(values: dict[str, float]) -> bytes:
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig = _figure(6.4, 0.5 + 0.45 * len(items))
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS[0])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1e-9, max(v for _, v in items)) * 1.2)
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("parameter importances", fontsize=10)
    return _png(fig)


def _by_backbone_axis(ax: Any, search: dict[str, Any], o: dict[str, Any]) -> None:
    """Each backbone's complete trials as jittered dots, its best as a bar."""
    import numpy as np

    names = sorted(search["by_backbone"])
    for i, name in enumerate(names):
        b = search["by_backbone"][name]
        vals = b["values"]
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
        ax.plot(i + np.asarray(jitter), vals, "o", color=COLORS[i % len(COLORS)], alpha=0.8)
        ax.plot([i - 0.25, i + 0.25], [b.get("best", b["max"])] * 2, "-", color="black", lw=1)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_xlim(-0.6, max(0.6, len(names) - 0.4))
    ax.set_title("by backbone (bar: best)", fontsize=9)
    ax.set_ylabel(o["label"])


def _scatter_phase2(axes: Any, pts: list[dict[str, Any]]) -> None:
    """The score against unfreeze depth and fine-tune rate; grey squares where phase 2 did not run."""
    ran = [p for p in pts if p["phase2_ran"]]
    skipped = [p for p in pts if not p["phase2_ran"]]
    for group, marker, label in ((ran, "o", "phase 2 ran"), (skipped, "s", "phase 2 skipped")):
        color = COLORS[0] if marker == "o" else "#999"
        for ax, key in zip(axes, ("unfreeze_blocks", "finetune_lr")):
            shown = [p for p in group if p[key]] if key == "finetune_lr" else group
            xs = [p[key] for p in shown if p[key] is not None]
            ys = [p["value"] for p in shown if p[key] is not None]
            if xs:
                ax.plot(xs, ys, marker, ls="", color=color, label=label, alpha=0.8)


def _phase2_limits(axes: Any, search: dict[str, Any], pts: list[dict[str, Any]]) -> None:
    """The searched ranges on the x axes (at least a decade of fine-tune rate, so ticks are labelled)."""
    from matplotlib.ticker import MaxNLocator, NullFormatter

    ranges = search.get("ranges") or {}
    ub = [v for v in (ranges.get("unfreeze_blocks") or []) if v is not None] + [
        p["unfreeze_blocks"] for p in pts if p["unfreeze_blocks"] is not None
    ]
    if ub:
        axes[0].set_xlim(min(ub) - 0.5, max(ub) + 0.5)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("unfreeze blocks")
    axes[0].set_title("by unfreeze depth", fontsize=9)
    axes[1].set_xscale("log")
    lr = [v for v in (ranges.get("finetune_lr") or []) if v] + [
        p["finetune_lr"] for p in pts if p["finetune_lr"]
    ]
    if lr:
        lo, hi = min(lr), max(lr)
        if hi / lo < 10:
            mid = math.sqrt(lo * hi)
            lo, hi = mid / math.sqrt(10), mid * math.sqrt(10)
        axes[1].set_xlim(lo / 1.3, hi * 1.3)
    axes[1].xaxis.set_minor_formatter(NullFormatter())
    axes[1].set_xlabel("fine-tune learning rate (log)")
    axes[1].set_title("by fine-tune rate", fontsize=9)


def _fig_params(search: dict[str, Any], o: dict[str, Any]) -> bytes:
    fig = _figure(9.6, 3.0)
    axes = fig.subplots(1, 3, sharey=True)
    _by_backbone_axis(axes[0], search, o)
    pts = search["points"]
    _scatter_phase2(axes[1:], pts)
    _phase2_limits(axes[1:], search, pts)
    if axes[2].get_legend_handles_labels()[0]:  # no legend when no trial has a fine-tune rate
        axes[2].legend(fontsize=7, loc="best")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png(fig)


def _fig_confusion(ev: dict[str, Any]) -> bytes:
    import numpy as np

    cm = np.asarray(ev["confusion_matrix"])
    names = ev["class_names"]
    n = len(names)
    side = min(9.0, 2.2 + 0.45 * n)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    if n <= 30:
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > top / 2 else "black",
                )
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("confusion matrix (validation set)", fontsize=10)
    return _png(fig)


def _fig_pareto(pareto: dict[str, Any], objectives: list[dict[str, Any]]) -> bytes:
    """The first objective (y) against the second (x): trials that meet the constraints as dots, the
    others as grey crosses, the front joined by a line, and each constraint on x or y as a dashed line."""
    by_name = {o["name"]: o for o in objectives}
    xo, yo = by_name[pareto["x"]], by_name[pareto["y"]]
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    pts = pareto["points"]
    for group, style, color, label in (
        ([p for p in pts if p["feasible"] and not p["front"]], "o", COLORS[0], "meets constraints"),
        ([p for p in pts if not p["feasible"]], "x", "#999", "breaks a constraint"),
    ):
        if group:
            xs = [p["values"][xo["name"]] for p in group]
            ax.plot(xs, [p["values"][yo["name"]] for p in group], style, color=color, label=label)
    front = sorted(
        (p for p in pts if p["front"]), key=lambda p: (p["values"][xo["name"]], p["number"])
    )
    if front:
        xs, ys = [p["values"][xo["name"]] for p in front], [p["values"][yo["name"]] for p in front]
        ax.plot(xs, ys, "o-", color=COLORS[1], ms=7, label="Pareto front")
        labels: dict[tuple[float, float], list[str]] = {}
        for p, x, y in zip(front, xs, ys):  # trials at the same point share one label
            labels.setdefault((x, y), []).append(str(p["number"]))
        for (x, y), numbers in labels.items():
            text = "trial" + ("s " if len(numbers) > 1 else " ") + ", ".join(numbers)
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for c in pareto["constraints"]:
        if c["name"] in (xo["name"], yo["name"]):
            line = ax.axvline if c["name"] == xo["name"] else ax.axhline
            line(c["bound"], color="#7f6000", ls="--", lw=1, label=f"constraint {c['text']}")
    ax.set_xlabel(
        f"{xo['label']}, {'lower' if xo['direction'] == 'minimize' else 'higher'} is better"
    )
    ax.set_ylabel(yo["label"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Pareto front: {yo['label']} against {xo['label']}", fontsize=10)
    return _png(fig)


def render_figures(record: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name, all drawn from the record; scores by the study's primary objective."""
    o = objectives_of(record)[0]
    figs: dict[str, bytes] = {}
    curves = record.get("curves") or []
    if curves:
        figs["curves_best.png"] = _fig_overlay(curves)
        for c in curves:
            figs[f"curve_trial_{c['number']:04d}.png"] = _fig_curve(c, o)
    pareto = record.get("pareto") or {}
    if pareto.get("points"):
        figs["pareto.png"] = _fig_pareto(pareto, objectives_of(record))
    search = record.get("search") or {}
    if search.get("history"):
        figs["history.png"] = _fig_history(
            [("", search["history"])], "optimisation history", o["label"]
        )
    if (search.get("importances") or {}).get("values"):
        figs["importances.png"] = _fig_importances(search["importances"]["values"])
    if search.get("points"):
        figs["params.png"] = _fig_params(search, o)
    ev = record.get("evaluation") or {}
    if ev.get("confusion_matrix"):
        figs["confusion.png"] = _fig_confusion(ev)
    engines = record.get("engines") or {}
    if any(s["history"] for s in engines.get("studies", [])):
        histories = [
            (f"{s['engine']} ({s['study_name']})", s["history"]) for s in engines["studies"]
        ]
        figs["engines.png"] = _fig_history(
            histories, "optimisation history by engine (dots: complete trials)", o["label"]
        )
    return figs
