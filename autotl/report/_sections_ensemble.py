"""The ensemble section: the best single model, the ensemble and flip TTA side by side."""

from __future__ import annotations

from typing import Any, Optional

from autotl.report._common import _ci, _fmt
from autotl.report._document import Code, Column, Fragment, Note, Paragraph, Section, Strong, table


def _accuracy(score: Optional[dict[str, Any]]) -> tuple[str, str]:
    if not score:
        return "-", "-"
    return f"{score['accuracy']:.4f} ({score['correct']}/{score['images']})", _ci(score["ci95"])


def _latency_note(variants: list[dict[str, Any]]) -> Optional[Note]:
    timed = [v["latency"] for v in variants if v.get("latency")]
    if not timed:
        return None
    t = timed[0]
    return Note(
        f"Latency: float32 TFLite, {t['threads']} thread(s), median of {t['runs']} single-image runs after "
        f"{t['warmup']} warm-up runs ({t['runtime']}), measured when `autotl ensemble` ran, on whatever else "
        "the machine was doing then. Members of one backbone share their frozen layers, which TensorFlow's "
        "converter computes once, so an ensemble can cost far less than the sum of its members; flip TTA "
        "runs everything twice."
    )


def ensemble(record: dict[str, Any]) -> Optional[Section]:
    """The stored ensemble selection compared with the best single model (accuracy and latency)."""
    e = record.get("ensemble")
    if not e:
        return None
    weights = ", ".join(f"trial {n} x {float(w):.3f}" for n, w in e["members"].items())
    candidates = ", ".join(map(str, e["candidates"]))
    blocks: list[Fragment] = [
        Paragraph(
            (
                f"Greedy forward selection with replacement (Caruana et al., 2004) over the validation "
                f"probabilities of the top {e['top_k']} trials with stored layers ({candidates}), maximising "
                f"{e['objective']} (ties broken by log loss): ",
                Strong(weights),
                ". Stored in ",
                Code(e["file"]),
                "; `autotl export RUN_DIR --ensemble` exports it.",
            )
        ),
        table(
            [
                "model",
                "trials",
                Column("val acc", True),
                Column("val 95% CI", True),
                Column("test acc", True),
                Column("test 95% CI", True),
                Column("TFLite ms", True),
            ],
            [
                [
                    v["name"],
                    ", ".join(v["members"]),
                    *_accuracy(v["val"]),
                    *_accuracy(v["test"]),
                    _fmt(v["latency_ms"], ".2f"),
                ]
                for v in e["variants"]
            ],
            ["best" if v["name"] == "best" else "" for v in e["variants"]],
        ),
    ]
    test = e.get("test")
    if test:
        blocks.append(
            Note(f"Test: {test['images']} images ({test['source']}), never used to choose.")
        )
    latency = _latency_note(e["variants"])
    blocks += [latency] if latency else []
    blocks += [Note(n[:1].upper() + n[1:] + ".") for n in e.get("notes") or []]
    return Section("ensemble", "Ensemble and test-time augmentation", tuple(blocks))
