"""The final protocol as work units shared by every process (issue 13, item 3).

Each retraining of spec §8 — one method configuration, one seed — is one trial of a companion
study, ``<study>:final`` (:func:`final_study`), in the search's storage. Workers that have
finished the search take these units, and so does the process running ``report``: alone on one
machine it does them all, as before; with workers running, they share them.

A unit (:class:`Unit`) is (method key, parameters, seed, round): BioTune's or another sampler's
best genome as per-block learning rates, or one candidate of a baseline's sweep
(:mod:`.tuning`). Its trial's value is the best validation macro accuracy; its user attributes
hold the unit (:data:`~biotune_optuna.study.attrs.FINAL_UNIT`) and its result
(:data:`~biotune_optuna.study.attrs.FINAL_UNIT_RESULT`: validation and test macro accuracy,
epochs, seconds, trainable fraction).

How the work is shared (:func:`work`): a process reads the finished units, asks its *plan*
which units are still needed (a baseline's coordinate sweep needs its learning-rate stage before
its knob stage), queues those nobody has queued (Optuna's ``enqueue_trial``: WAITING), takes a
waiting one with the storage's atomic WAITING → RUNNING step (exactly one process gets it) and
trains it; with nothing to take it waits for the units others are running. A process that dies
leaves a RUNNING unit that heartbeats — or, on a storage this host alone uses, its dead pid —
turn FAIL; the plan needs it again and it is queued anew. Two processes may queue the same unit
at the same moment: whoever takes a copy while an older copy runs or is done drops it, and a
unit's result is always its first finished copy.

Every unit is scored on the test split when it finishes — the candidates a sweep will not choose
too, since no process keeps models between units — but choices read validation accuracy only
(no test peeking), and test scores of candidates not chosen are shown nowhere.

Torch-free: the training is the caller's ``run`` function (``protocol.run_unit``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.retry import Backoff
from biotune_optuna.study.studies import fail_trials_of_gone_processes

_logger = logging.getLogger(__name__)

#: The companion study's name is the search study's name plus this.
FINAL_SUFFIX = ":final"
#: A unit whose training raised this many times stops the report (the error is shown).
MAX_FAILURES = 3

#: What a finished unit records: ``val_accuracy``, ``test_accuracy`` (in [0, 1]), ``epochs``,
#: ``seconds`` (training and testing), ``trainable_fraction`` (in [0, 1]).
Result = dict


class UnitFailed(RuntimeError):
    """A unit's training raised :data:`MAX_FAILURES` times (the message names it and the error)."""


@dataclass(frozen=True)
class Unit:
    """One fine-tune of the final protocol.

    Attributes:
        method: ``"biotune"``, ``"sampler:<key>"`` or ``"baseline:<key>"``.
        params: for a search, ``{"lr_by_block": {block: lr}}``; for a baseline, ``{"lr": …}``
            and the swept options. JSON-safe.
        seed: the fine-tuning seed.
        round: the study's :data:`~biotune_optuna.study.attrs.FINAL_ROUND` it belongs to.
    """

    method: str
    params: dict = field(hash=False)
    seed: int
    round: int = 0

    @property
    def ident(self) -> str:
        """A canonical text naming the unit (units with equal idents are one unit)."""
        return json.dumps([self.method, self.params, self.seed, self.round], sort_keys=True)

    def to_attr(self) -> dict:
        """The JSON-safe form stored on the unit's trial."""
        return json.loads(json.dumps({"method": self.method, "params": self.params, "seed": self.seed, "round": self.round}))

    @classmethod
    def from_attr(cls, value: object) -> Unit | None:
        """Inverse of :meth:`to_attr`; None for anything else."""
        if not isinstance(value, dict) or not {"method", "params", "seed"} <= value.keys():
            return None
        return cls(str(value["method"]), dict(value["params"]), int(value["seed"]), int(value.get("round", 0)))


#: ``plan(done)`` → the units still needed, given the results so far (ident → result); empty
#: when every method it plans for is decided.
Plan = Callable[[Mapping[str, Result]], list[Unit]]


def final_study(study: optuna.Study) -> optuna.Study:
    """The companion study holding ``study``'s final-protocol units (made on first use)."""
    return optuna.create_study(
        study_name=study.study_name + FINAL_SUFFIX, storage=_optuna.storage_of(study), direction="maximize", load_if_exists=True
    )


def existing_final_study(study: optuna.Study) -> optuna.Study | None:
    """The companion study if some process made it, else None (creates nothing)."""
    try:
        return optuna.load_study(study_name=study.study_name + FINAL_SUFFIX, storage=_optuna.storage_of(study))
    except KeyError:
        return None


def current_round(study: optuna.Study) -> int:
    """The search study's final-protocol round (0 until a ``--recompute``)."""
    return int(study.user_attrs.get(attrs.FINAL_ROUND, 0))


def new_round(study: optuna.Study) -> int:
    """Start a new round (``--recompute``): earlier units are kept but no longer read."""
    n = current_round(study) + 1
    study.set_user_attr(attrs.FINAL_ROUND, n)
    return n


@dataclass
class Board:
    """The units of the final study as one read sees them.

    Attributes:
        done: ident → result of each unit's first COMPLETE trial.
        queued: idents of WAITING or RUNNING trials.
        running: ident → the lowest number of its RUNNING trials.
        failures: ident → trials of the unit that FAILed after their training raised.
        errors: ident → the last such error message.
    """

    done: dict[str, Result] = field(default_factory=dict)
    queued: set[str] = field(default_factory=set)
    running: dict[str, int] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)


def read(final: optuna.Study) -> Board:
    """Read every unit trial of ``final`` (oldest first)."""
    board = Board()
    for t in final.get_trials(deepcopy=False):
        unit = Unit.from_attr(t.user_attrs.get(attrs.FINAL_UNIT))
        if unit is None:
            continue
        ident = unit.ident
        if t.state == TrialState.COMPLETE and ident not in board.done and attrs.FINAL_UNIT_RESULT in t.user_attrs:
            board.done[ident] = t.user_attrs[attrs.FINAL_UNIT_RESULT]
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            board.queued.add(ident)
            if t.state == TrialState.RUNNING:
                board.running.setdefault(ident, t.number)
        elif t.state == TrialState.FAIL and attrs.ERROR in t.user_attrs:
            board.failures[ident] += 1
            board.errors[ident] = str(t.user_attrs[attrs.ERROR])
    return board


def take(final: optuna.Study) -> tuple[int, int, Unit] | None:
    """Claim the oldest WAITING unit (WAITING → RUNNING is atomic in the storage: one caller
    wins); returns (trial id, trial number, unit), or None when nothing waits."""
    storage = _optuna.storage_of(final)
    for t in final.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        unit = Unit.from_attr(t.user_attrs.get(attrs.FINAL_UNIT))
        if unit is not None and storage.set_trial_state_values(_optuna.trial_id(t), TrialState.RUNNING):
            # A RUNNING trial without any heartbeat row is never stale: beat at once.
            _optuna.record_heartbeat(final, _optuna.trial_id(t))
            storage.set_trial_user_attr(_optuna.trial_id(t), attrs.WORKER, f"{socket.gethostname()}:{os.getpid()}")
            return _optuna.trial_id(t), t.number, unit
    return None


def work(
    final: optuna.Study,
    plan: Plan,
    run: Callable[[Unit], Result],
    on_done: Callable[[Unit, Result], None] | None = None,
    *,
    local: bool | None = None,
    poll: tuple[float, float] = (0.5, 10.0),
) -> dict[str, Result]:
    """Work through ``plan`` with every other process on ``final`` (module docstring) until it
    needs nothing more; returns the results (ident → result).

    Args:
        run: trains one unit and returns its :data:`Result`.
        on_done: called after each unit this process finished (and stored).
        local: the storage is used by this host alone, so units left RUNNING by a dead
            process here are failed at once instead of after a heartbeat grace period. Default:
            True unless the storage is a database server (PostgreSQL, MySQL).
        poll: first and longest pause (s) while waiting for other processes' units.

    Raises:
        UnitFailed: a unit's training raised :data:`MAX_FAILURES` times.
        KeyboardInterrupt: the unit being trained is marked FAIL (as interrupted) first, so any
            process redoes it.
    """
    pause = Backoff(*poll, 1.5)
    if local is None:
        url = str(getattr(_optuna.backend_of(final), "url", ""))
        local = not url.startswith(("postgresql", "mysql"))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(final)
        if local:
            fail_trials_of_gone_processes(final)
        board = read(final)
        needed = plan(board.done)
        if not needed:
            return board.done
        for unit in needed:
            if board.failures[unit.ident] >= MAX_FAILURES:
                raise UnitFailed(f"{unit.method} (seed {unit.seed}, {unit.params}) failed {MAX_FAILURES} times: {board.errors[unit.ident]}")
        for unit in needed:
            if unit.ident not in board.queued:
                final.enqueue_trial({}, user_attrs={attrs.FINAL_UNIT: unit.to_attr()})
        claimed = take(final)
        if claimed is None:
            pause.sleep()
            continue
        pause.reset()
        trial_id, number, unit = claimed
        now = read(final)
        stale = unit.round < min(u.round for u in needed)  # queued before a --recompute
        if stale or unit.ident in now.done or now.running.get(unit.ident, number) < number:  # an extra copy: drop it
            _optuna.storage_of(final).set_trial_state_values(trial_id, TrialState.PRUNED)
            continue
        _run_one(final, trial_id, unit, run, on_done)


def _run_one(final: optuna.Study, trial_id: int, unit: Unit, run: Callable[[Unit], Result], on_done: Callable | None) -> None:
    """Train one claimed unit under heartbeats and store its result (FAIL with the error if it raised)."""
    storage = _optuna.storage_of(final)
    trial = optuna.Trial(final, trial_id)
    try:
        with _optuna.heartbeat_thread(trial):
            result = run(unit)
    except KeyboardInterrupt:
        storage.set_trial_user_attr(trial_id, attrs.INTERRUPTED, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        raise
    except Exception as e:
        _logger.warning("final unit %s (seed %d) failed: %s: %s", unit.method, unit.seed, type(e).__name__, e)
        storage.set_trial_user_attr(trial_id, attrs.ERROR, f"{type(e).__name__}: {e}")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return
    try:
        storage.set_trial_user_attr(trial_id, attrs.FINAL_UNIT_RESULT, result)
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [float(result["val_accuracy"])])
    except optuna.exceptions.UpdateFinishedTrialError:  # reaped as stale meanwhile: queued again
        _logger.warning("final unit %s (seed %d) was reaped while it ran; it will be redone", unit.method, unit.seed)
        return
    if on_done is not None:
        on_done(unit, result)


def seed_results(units: Sequence[Unit], done: Mapping[str, Result]) -> list[Result] | None:
    """The results of ``units`` in order, or None while any is missing."""
    out = [done.get(u.ident) for u in units]
    return None if any(r is None for r in out) else out
