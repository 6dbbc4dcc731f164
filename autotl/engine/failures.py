"""The failure policy: which failed trials count, when a backbone is dropped, when a search stops.

A trial that fails is recorded (state FAIL, user attribute ``fail_reason``)
and the search goes on, but no fault may make a search retry for ever:

* a backbone whose trials fail ``BACKBONE_FAILURES`` (3) times in a row is
  dropped for the rest of the search;
* the search stops when no backbone is left, or when ``max_failures``
  (default 10) trials in a row have failed, whatever their backbones.

"In a row" is read from the study's own trials, in trial-number order, so
every worker of a search reaches the same verdict.  It counts the trials of
one *session*: one ``autotl search`` and the workers it started (user
attribute ``session``).  Rerunning the command starts a new session, which
gives a dropped backbone a fresh chance: after a fix, resuming just works, and
without one it fails three more times and is dropped again.

Each failed trial says what kind of failure it was (user attribute ``fail_kind``):
``trial`` (it ran and failed: it counts), ``skipped`` (refused before it
trained, because its backbone was dropped: it does not count, nor does it
reset a count), ``surplus`` (other workers had taken the whole budget).  A FAIL
without a kind (a worker that was killed) does not count either.

A search keeps its verdict in :class:`SearchBackbones` and keeps the sampler
off the backbones that are gone with :class:`LiveSampler`, so a dropped
backbone costs no further trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

__all__ = [
    "BACKBONE_FAILURES",
    "MAX_FAILURES",
    "FAIL_REASON",
    "FAIL_KIND",
    "SESSION",
    "COUNTED",
    "SKIPPED",
    "SURPLUS",
    "failures_in_a_row",
    "dropped_backbones",
    "latest_session",
    "stop_reason",
    "SearchBackbones",
    "LiveSampler",
]

#: A backbone whose trials fail this many times in a row is dropped for the rest of the search.
BACKBONE_FAILURES = 3
#: The default of ``--max-failures``: the search stops after this many failed trials in a row.
MAX_FAILURES = 10
FAIL_REASON, FAIL_KIND, SESSION = "fail_reason", "fail_kind", "session"
COUNTED, SKIPPED, SURPLUS = "trial", "skipped", "surplus"
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def _session_trials(trials: Iterable[Any], session: Optional[str]) -> list[Any]:
    """The finished trials of ``session``, in trial-number order."""
    return sorted(
        (
            t
            for t in trials
            if t.state.name in _FINISHED and (t.user_attrs or {}).get(SESSION) == session
        ),
        key=lambda t: t.number,
    )


def _counts(trial: FrozenTrial) -> Optional[bool]:
    """True: a failure that counts; False: a success, which ends a run of failures; None: neither."""
    if trial.state.name != "FAIL":
        return False
    return True if (trial.user_attrs or {}).get(FAIL_KIND) == COUNTED else None


def failures_in_a_row(trials: Sequence[Any]) -> list[Any]:
    """The failures that count at the end of ``trials`` (in order), with no success after them."""
    run: list[Any] = []
    for t in trials:
        verdict = _counts(t)
        if verdict is False:
            run = []
        elif verdict:
            run.append(t)
    return run


def _last_reason(failed: Sequence[Any]) -> str:
    return str((failed[-1].user_attrs or {}).get(FAIL_REASON) or "no reason recorded")


def latest_session(trials: Iterable[Any]) -> Optional[str]:
    """The session of the newest trial that has one (what a report describes), or None."""
    found = [t for t in trials if (t.user_attrs or {}).get(SESSION)]
    return max(found, key=lambda t: t.number).user_attrs[SESSION] if found else None


def dropped_backbones(
    trials: Iterable[Any], session: Optional[str], limit: int = BACKBONE_FAILURES
) -> dict[str, str]:
    """Backbone to the reason it was dropped, for each whose trials in ``session`` failed ``limit`` times in a row."""
    by_backbone: dict[str, list[Any]] = {}
    for t in _session_trials(trials, session):
        if "backbone" in t.params:
            by_backbone.setdefault(str(t.params["backbone"]), []).append(t)
    out = {}
    for name, mine in by_backbone.items():
        failed = failures_in_a_row(mine)
        if len(failed) >= limit:
            out[name] = f"failed {len(failed)} times in a row (last: {_last_reason(failed)})"
    return out


def stop_reason(
    trials: Iterable[Any],
    session: Optional[str],
    live: Sequence[str],
    unavailable: dict[str, str],
    max_failures: int = MAX_FAILURES,
) -> Optional[str]:
    """Why the search must stop now (one line), or None to go on.

    ``live`` are the backbones still searched; ``unavailable`` says why each
    other one is not (skipped at start-up, or dropped).
    """
    if not live:
        why = "; ".join(f"{name} {reason}" for name, reason in unavailable.items())
        return f"no backbone left to search: {why or 'none was given'}"
    failed = failures_in_a_row(_session_trials(trials, session))
    if len(failed) >= max_failures:
        return (
            f"{len(failed)} trials in a row failed (--max-failures {max_failures}); last: trial "
            f"{failed[-1].number}: {_last_reason(failed)}"
        )
    return None


@dataclass
class SearchBackbones:
    """Which of the study's backbones this search may still try, and why each other one may not."""

    choices: list[str]  # the study's categorical choices for "backbone"
    skipped: dict[str, str]  # at start-up: weights missing, checks failed, not in the study
    not_asked: set[str] = field(default_factory=set)  # in the study, not asked for this time
    dropped: dict[str, str] = field(default_factory=dict)  # failed BACKBONE_FAILURES times in a row
    # live, but not drawn yet: their full feature cache is still to be built (backbone screening)
    waiting: set[str] = field(default_factory=set)

    def live(self) -> list[str]:
        gone = {*self.skipped, *self.not_asked, *self.dropped}
        return [b for b in self.choices if b not in gone]

    def ready(self) -> list[str]:
        """The live backbones the sampler may draw now (all live ones when none is ready)."""
        live = self.live()
        return [b for b in live if b not in self.waiting] or live

    def reasons(self) -> dict[str, str]:
        """Why each asked-for backbone is not searched (not the ones nobody asked for)."""
        return {**self.skipped, **self.dropped}

    def why_not(self, name: str) -> str:
        if name in self.not_asked:
            return f"backbone {name} is not among this search's backbones"
        return f"backbone {name} {self.reasons().get(name, 'is not available')}"

    def update(
        self, trials: Sequence[Any], session: str, emit: Callable[[dict[str, Any]], None]
    ) -> None:
        """Drop backbones that failed too often in a row in this session; warn once each (while others remain)."""
        for name, reason in dropped_backbones(trials, session).items():
            if name in self.dropped or name not in self.live():
                continue
            self.dropped[name] = reason
            if self.live():
                emit(
                    {
                        "warning": f"backbone {name} is dropped for the rest of this search: it {reason}"
                    }
                )


class LiveSampler:
    """The study's sampler, kept off backbones that are skipped or dropped.

    Optuna cannot change a categorical parameter's choices within a study, so
    the choices stay and a proposal of a backbone that is gone is replaced by
    a live one, drawn from a seeded generator: no trial is wasted on it and no
    loop waits for the sampler to propose something else.  Everything else is
    the wrapped sampler's.
    """

    PARAM = "backbone"

    def __init__(self, sampler: Any, backbones: SearchBackbones, seed: int) -> None:
        self.sampler, self.backbones, self.seed = sampler, backbones, seed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: Any
    ) -> dict[str, Any]:
        params = self.sampler.sample_relative(study, trial, search_space)
        if self.PARAM in params:
            params = {**params, self.PARAM: self._live(params[self.PARAM], trial)}
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, name: str, distribution: Any
    ) -> Any:
        value = self.sampler.sample_independent(study, trial, name, distribution)
        return self._live(value, trial) if name == self.PARAM else value

    def _live(self, value: Any, trial: FrozenTrial) -> Any:
        import random

        live = self.backbones.ready()
        if value in live or not live:
            return value
        return random.Random(f"{self.seed}:{trial.number}").choice(live)
