"""Checks before a backbone's first trial in a run: the cheap plugin-contract checks, once, recorded.

A plugin's mistake that ``autotl plugins check`` would catch -- a base that
keeps its classification top, a block pattern that matches no layer, a
preprocessing that is not what its ``preprocess_input`` does, a weight file
Keras cannot read or whose hash is wrong -- must not cost silent accuracy or
a string of failed trials.  So before the first trial, every backbone of the
search is built once with the weights the search will use and checked with
:func:`autotl.testing.check_pretrained`; the verdict goes into the run
folder's ``checks.json`` (a pass is not checked again while the backbone, its
plugin's declared fields and its weight file stay the same).  The base built
for the check is handed to the search, so the first trial does not build it
again.

A backbone that fails is refused at start-up with one line; if it is one of
several in the space, it is skipped with a warning, and the report says why.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotl.backbones.weights import WeightsMismatch, WeightsMissing, resolve_weights
from autotl.errors import UsageError, failure_line, first_line
from autotl.run.folder import RunFolder

if TYPE_CHECKING:
    from autotl.backbones.registry import Registry
    from autotl.spec import BackboneSpec

__all__ = ["Prechecked", "precheck_backbones", "check_key"]

Event = Callable[[dict[str, Any]], None]


@dataclass
class Prechecked:
    """The verdict on a search's backbones: bases built and checked now, and why others are skipped."""

    bases: dict[str, Any] = field(default_factory=dict)  # backbone -> its checked base (reuse it)
    skipped: dict[str, str] = field(default_factory=dict)  # backbone -> why it is not searched


def check_key(spec: BackboneSpec, weights: Any, blocks: int | None) -> str:
    """What a recorded pass depends on: the spec's declared fields, the weights' bytes, the checks asked."""
    from autotl._version import __version__

    p = spec.preprocessing
    parts = [
        __version__,
        spec.name,
        spec.plugin,
        list(spec.input_size),
        spec.block_pattern,
        [p.mode, list(p.scale), list(p.offset), p.channel_order],
        spec.preprocess_input is not None,
        weights.origin,
        weights.sha256,
        blocks,
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _check_one(
    spec: BackboneSpec, source: Any, seed: int, blocks: int | None
) -> tuple[Any, dict[str, Any]]:
    """``(base or None, record)`` for one backbone; a wrong hash is never skipped over (it raises)."""
    from autotl.testing import check_pretrained

    start = time.perf_counter()
    base, record = None, dict[str, object](passed=False)
    try:
        base, lines = check_pretrained(spec, source, seed, blocks)
        record = {"passed": True, "lines": lines}
    except WeightsMismatch:
        raise
    except AssertionError as exc:  # autotl.testing's message starts "backbone 'NAME': "
        detail = first_line(exc).removeprefix(f"backbone {spec.name!r}: ")
        record["reason"] = f"failed its checks before its first trial: {detail}"
    except UsageError as exc:  # no weights to be had (missing, not downloadable, download failed)
        record["reason"] = first_line(exc)
    except Exception as exc:  # the plugin's own code raised inside a check
        record["reason"] = f"failed its checks before its first trial: {failure_line(exc)}"
    record["seconds"] = round(time.perf_counter() - start, 3)
    return base, record


def precheck_backbones(
    run: RunFolder,
    registry: Registry,
    names: Sequence[str],
    source: Any,
    seed: int = 0,
    blocks: int | None = None,
    explicit: bool = False,
    emit: Event = lambda _e: None,
    skipped: dict[str, str] | None = None,
) -> Prechecked:
    """Check ``names`` (the search's backbones) before their first trial and record each verdict in ``checks.json``.

    ``skipped`` are backbones already left out (their weights are missing),
    recorded with their reason.  A backbone that fails is skipped with a
    warning; with ``explicit`` (named with ``--backbone``), or when none is
    left, the search is refused with one line (``UsageError``).
    """
    out = Prechecked(skipped=dict(skipped or {}))
    failed: dict[str, str] = {}
    recorded = run.checks()
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for name in names:
        if name in out.skipped:
            recorded[name] = {"passed": False, "reason": out.skipped[name], "checked": now}
            continue
        spec = registry.backbone(name)
        try:
            key = check_key(spec, resolve_weights(spec, source), blocks)
        except WeightsMissing as exc:
            out.skipped[name] = failed[name] = first_line(exc)
            recorded[name] = {"passed": False, "reason": out.skipped[name], "checked": now}
            continue
        before = recorded.get(name)
        if isinstance(before, dict) and before.get("passed") and before.get("key") == key:
            continue
        base, record = _check_one(spec, source, seed, blocks)
        recorded[name] = {**record, "key": key, "checked": now}
        if base is not None:
            out.bases[name] = base
        else:
            out.skipped[name] = failed[name] = record["reason"]
    run.write_json(run.checks_file, recorded)
    _refuse(out, names, explicit)
    for name, reason in failed.items():  # the search goes on without them
        emit({"warning": f"skipping backbone {name!r}: {reason}"})
    return out


def _refuse(out: Prechecked, names: Sequence[str], explicit: bool) -> None:
    """One line when a named backbone failed, or when no backbone is left."""
    failed = [n for n in names if n in out.skipped]
    how = "`autotl plugins check NAME` shows every check"
    if explicit and failed:
        name = failed[0]
        raise UsageError(f"backbone {name!r} {out.skipped[name]}; {how}")
    if failed and len(failed) == len(names):
        if len(names) == 1:
            raise UsageError(f"backbone {names[0]!r} {out.skipped[names[0]]}; {how}")
        reasons = "; ".join(f"{n} {out.skipped[n]}" for n in failed)
        raise UsageError(f"no backbone of the search can be used: {reasons}")
