"""MODEL_CARD.md of an ensemble or a test-time-augmented model: its members, how they combine, its scores.

The data, formats, parity, limits and warnings sections are the single
model's (``_card``); the header, metrics and model sections say what an
ensemble is instead of one trial's hyperparameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from autotl.export._card import (
    CardFacts,
    Lines,
    _data,
    _formats,
    _limits,
    _parity,
    _pct,
    _warnings,
    write_card,
)


def write_variant_card(facts: CardFacts) -> Path:
    """The card of an ensemble or TTA export: its own header, metrics and model sections."""
    return write_card(facts, VARIANT_SECTIONS)


def _title(v: dict[str, Any]) -> str:
    """ "ensemble of trials 3, 5 and 7, with flip TTA" / "trial 3 with flip TTA"."""
    trials = [str(n) for n in v["members"]]
    who = (
        f"trial {trials[0]}"
        if len(trials) == 1
        else f"trials {', '.join(trials[:-1])} and {trials[-1]}"
    )
    what = f"ensemble of {who}" if v["kind"] == "ensemble" else who
    return what + (f", with {v['tta']} test-time augmentation" if v.get("tta") else "")


def _header(c: CardFacts) -> Lines:
    v, names = c.run.chosen_variant(), c.run.class_names
    versions = ", ".join(f"{k} {x}" for k, x in c.parity.get("versions", {}).items())
    return [
        f"# Model card: {len(names)}-class image classifier (autotl {_title(v)})",
        "",
        f"Exported by autotl from run folder `{c.run.run_dir}` (study `{c.run.study.study_name}`), with "
        f"{versions}.",
    ]


def _score(s: Optional[dict[str, Any]]) -> str:
    if not s:
        return "-"
    lo, hi = s["ci95"]
    return (
        f"{_pct(s['accuracy'])} ({s['correct']}/{s['images']}; 95% Wilson {_pct(lo)} - {_pct(hi)})"
    )


def _metrics(c: CardFacts) -> Lines:
    """The scores the selection measured for every model compared, then what export re-checked."""
    v = c.run.chosen_variant()
    lines = ["## Metrics", ""]
    scores = v.get("scores") or {v["name"]: {"val": v["val"], "test": v["test"]}}
    test = v.get("test")
    lines += ["| model | validation accuracy | test accuracy |", "|---|---|---|"]
    for name, s in scores.items():
        shown = f"**{name}** (this model)" if name == v["name"] else name
        lines.append(f"| {shown} | {_score(s.get('val'))} | {_score(s.get('test'))} |")
    lines.append("")
    if test is None:
        lines.append(
            "- No test split: the validation images also chose the trials, their epochs and the ensemble, "
            "so every number above is optimistic; compare on images the search never saw before relying on "
            "a difference."
        )
    score = c.parity.get("search_score") or {}
    if score.get("passed"):
        lines.append(
            f"- Checked at export: every member alone reproduces the search's score, and the exported model "
            f"scores {_pct(score['accuracy'])} (loss {score['val_loss']:.4f}) on all {score['images']} "
            f"validation images, as its members' predictions say (recorded {_pct(score['recorded_accuracy'])}, "
            f"{score['recorded_val_loss']:.4f})."
        )
    elif score.get("skipped"):
        lines.append(
            f"- Not checked at export that the model reproduces its score: {score['skipped']}."
        )
    return lines


def _model(c: CardFacts) -> Lines:
    """The members (each its own backbone, preprocessing and head) and how their outputs combine."""
    v, (h, w) = c.run.chosen_variant(), c.size
    by_number = {t.number: t for t in c.run.study.get_trials(deepcopy=False)}
    flip = (
        " and on its horizontal mirror (`keras.ops.flip` on the width axis), the two averaged"
        if v.get("tta") == "flip"
        else ""
    )
    lines = [
        "## Model",
        "",
        f"- Input: raw RGB pixels of any size, resized to {h}x{w} (bilinear); each member then applies its "
        f"own resize and its backbone's preprocessing, all inside the model.",
        f"- Output: the members' probabilities, weighted as below and summed; each member runs on the image{flip}.",
    ]
    if v["kind"] == "ensemble":
        lines.append(
            f"- Chosen by greedy forward selection with replacement (Caruana et al., 2004) among the top "
            f"{v.get('top_k')} trials with stored layers ({', '.join(map(str, v.get('candidates', [])))}), "
            f"maximising {v.get('objective')} on the validation images; weight = times picked / total."
        )
    lines += [
        "",
        "| trial | backbone | weight | head width | dropout | unfreeze blocks | recorded val acc |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for number, weight in v["members"].items():
        t = by_number[int(number)]
        p = t.params
        acc = (v.get("member_val") or {}).get(number, {}).get("accuracy")
        lines.append(
            f"| {number} | `{p.get('backbone')}` | {weight:.3f} | {p.get('head_width', '-')} | "
            f"{p.get('dropout', float('nan')):.3g} | {p.get('unfreeze_blocks', '-')} | "
            f"{_pct(acc) if acc is not None else '-'} |"
        )
    return lines


VARIANT_SECTIONS = (_header, _data, _metrics, _model, _formats, _parity, _limits, _warnings)
