"""Every use of Optuna's private API, in one place.

An Optuna upgrade that moves one of these touches this file alone, and
``tests/test_optuna_private.py`` pins the behaviour relied on (Optuna 5.0):

* ``Study._storage`` / ``Study._study_id`` and ``Trial._trial_id`` / ``FrozenTrial._trial_id``:
  the storage and ids behind a study or trial (public storage methods take ids);
* ``BaseStorage.get_all_trials(study_id, deepcopy=False)`` returns the trials sorted by number,
  ``trials[i].number == i``;
* ``optuna.storages._heartbeat``: whether a storage beats, and the heartbeat thread that
  ``Study.optimize`` runs around each trial (used for ask/tell trials and by the worker);
* the logger ``optuna.study._optimize``, which logs a failed trial with its traceback;
* :class:`DurableStorage` subclasses ``RDBStorage`` and overrides, besides public methods, the
  private ``_get_trials``, ``_get_best_trial_id``, ``_set_trial_param`` (what ``_CachedStorage``
  calls) and ``_get_stale_trial_ids`` (what ``fail_stale_trials`` calls); ``_CachedStorage``
  (``Study._storage``) forwards heartbeats and writes to it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from biotune_optuna.study import attrs
from biotune_optuna.study.retry import retrying

_logger = logging.getLogger(__name__)

#: The logger that reports failed trials (with their traceback) inside ``Study.optimize``.
OPTIMIZE_LOGGER = "optuna.study._optimize"


class FailedTrialLog(logging.Filter):
    """A filter for :data:`OPTIMIZE_LOGGER`: Optuna reports a trial that failed by an exception
    of type ``kind`` with its traceback, then a second line "Trial N failed with value None.".
    For a condition that is handled (an interrupt, a trial reaped while it ran) that is noise:
    the record becomes the one line ``say(N)``, or is dropped when ``say`` returns None; the
    second line is dropped.
    """

    def __init__(self, kind: type[BaseException] | tuple[type[BaseException], ...], say: Callable[[str], str | None]) -> None:
        super().__init__()
        self.kind, self.say, self._numbers = kind, say, set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        number = text.split(" ")[1] if text.startswith("Trial ") else ""
        if record.exc_info and isinstance(record.exc_info[1], self.kind):
            self._numbers.add(number)
            line = self.say(number)
            if line is None:
                return False
            record.msg, record.args, record.exc_info, record.exc_text = line, (), None, None
            return True
        return not (number in self._numbers and "failed with value None" in text)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind ``study``."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage id of ``study`` (in-memory studies all have id 0)."""
    return study._study_id


def trial_id(trial: optuna.trial.BaseTrial | FrozenTrial) -> int:
    """The storage id of a live or frozen trial."""
    return trial._trial_id


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of ``study``, sorted by number, not copied (do not modify them)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def trial_system_attrs(trial: optuna.trial.BaseTrial) -> dict:
    """System attributes of a live trial, read from storage (not Optuna's cached copy)."""
    return trial.study._storage.get_trial_system_attrs(trial._trial_id)


def set_system_attr(study: optuna.Study, trial_id_: int, key: str, value: object) -> None:
    """Write a trial system attribute (allowed while the trial runs)."""
    study._storage.set_trial_system_attr(trial_id_, key, value)


def set_user_attr(study: optuna.Study, trial_id_: int, key: str, value: object) -> None:
    """Write a trial user attribute by id (for a trial this process holds no Trial object of)."""
    study._storage.set_trial_user_attr(trial_id_, key, value)


def fail_trial(study: optuna.Study, trial_id_: int) -> None:
    """Mark a RUNNING trial FAIL (its slot is handed out again)."""
    study._storage.set_trial_state_values(trial_id_, TrialState.FAIL)


def heartbeats_enabled(study: optuna.Study) -> bool:
    """True when the study's storage records heartbeats (``RDBStorage(heartbeat_interval=…)``)."""
    return is_heartbeat_enabled(study._storage)


def record_heartbeat(study: optuna.Study, trial_id_: int) -> None:
    """Record one heartbeat of a running trial now (no-op without heartbeats)."""
    if is_heartbeat_enabled(study._storage):
        study._storage.record_heartbeat(trial_id_)


@contextlib.contextmanager
def heartbeat_thread(trial: optuna.trial.BaseTrial) -> Iterator[None]:
    """Optuna's own heartbeat thread for ``trial`` while the block runs (no-op without heartbeats)."""
    with get_heartbeat_thread(trial._trial_id, trial.study._storage):
        yield


def backend_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage under Optuna's per-study cache (``_CachedStorage``), or the storage itself."""
    return getattr(study._storage, "_backend", study._storage)


def reap_on_heartbeat(study: optuna.Study) -> None:
    """Let this process's heartbeats also fail the stale trials of ``study`` (once per heartbeat
    interval), so a dead worker's slot is freed on time even when every other worker is busy
    training. No-op unless the storage is a :class:`DurableStorage` with heartbeats."""
    backend = backend_of(study)
    if isinstance(backend, DurableStorage):
        backend.reap_studies.add(study._study_id)


def fail_own_running_trials(study: optuna.Study) -> int:
    """After a stop (SIGTERM / SIGINT): mark FAIL, as interrupted, every trial in the storage of
    ``study`` that this process created and that is still RUNNING — one caught between
    ``create_new_trial`` and the objective, where neither the sampler nor Optuna fails it, would
    otherwise hold its place until reaped. Returns how many. No-op unless the storage is a
    :class:`DurableStorage`."""
    backend, n = backend_of(study), 0
    if not isinstance(backend, DurableStorage):
        return 0
    for trial_id in backend.unfinished_own_trials():
        with contextlib.suppress(UpdateFinishedTrialError, KeyError):  # finished (or reaped) meanwhile
            if backend.get_trial(trial_id).state == TrialState.RUNNING:
                backend.set_trial_user_attr(trial_id, attrs.INTERRUPTED, True)
                backend.set_trial_state_values(trial_id, TrialState.FAIL)
                n += 1
    return n


class _Health:
    """Whether this process reaches the database: an outage is logged once, its end once.

    Stale trials are not reaped while the database is unreachable, nor for two heartbeat
    intervals after it is back (or after this process stopped beating for a while, e.g. a
    suspended machine): the live workers need that long to beat again.
    """

    def __init__(self, interval: int | None, describe: Callable[[BaseException], str]) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._settled_at = 0.0
        self._holdoff = 2.0 * (interval or 0)
        self._describe = describe

    def failed(self, error: BaseException) -> None:
        with self._lock:
            first, self._down_since = self._down_since is None, self._down_since or time.time()
        if first:
            _logger.warning("database unreachable (%s): waiting for it; heartbeats and writes are retried", self._describe(error))

    def ok(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.gap()
            _logger.info("database reachable again after %.0f s", time.time() - since)

    def gap(self) -> None:
        """Hold off reaping for two heartbeat intervals from now."""
        self._settled_at = time.time() + self._holdoff

    def settling(self) -> bool:
        return self._down_since is not None or time.time() < self._settled_at


#: RDBStorage methods that are safe to repeat (reads, and writes that update or insert the same
#: row): retried while the database is unreachable. Not ``create_new_trial`` / study creation.
_REPEATABLE = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_trial_param", "_get_trials",
    "_get_best_trial_id", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "_set_trial_param",
)


class DurableStorage(RDBStorage):
    """An ``RDBStorage`` whose trials outlive a short database outage.

    * Repeatable calls (:data:`_REPEATABLE`, and ``set_trial_state_values``) are retried with the
      one backoff policy while ``transient(error)`` holds, for at most ``retry_within`` seconds
      (0: never); a state write repeated after a lost commit that did land counts as done.
    * ``record_heartbeat`` never raises: a failed beat is logged (once per outage) and the
      heartbeat thread beats again one interval later — Optuna's thread dies on its first
      error, and the trial, still training, would then be reaped as stale.
    * A trial's first heartbeat records its owner (user attribute ``worker`` = ``host:pid``).
    * Heartbeats also reap the stale trials of the studies in :attr:`reap_studies` once per
      interval, so a dead worker's trial is failed within grace period + one interval.
    * Stale trials are never trials this process still beats (its beats may not have landed),
      and none are reaped while the database is (or was, for two intervals) unreachable.

    Args: ``url`` and ``**kwargs`` as ``RDBStorage``; ``retry_within`` seconds;
    ``transient(error) -> bool``; ``describe(error) -> str`` a one-line reason, password hidden.
    """

    def __init__(
        self,
        url: str,
        *,
        retry_within: float = 0.0,
        transient: Callable[[BaseException], bool] = lambda e: False,
        describe: Callable[[BaseException], str] = str,
        **kwargs,
    ) -> None:
        super().__init__(url, **kwargs)
        self.retry_within, self._transient = retry_within, transient
        self._health = _Health(self.heartbeat_interval, describe)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._own: dict[int, float] = {}  # trials this process beats → time it last tried to
        self._lock = threading.Lock()
        self._next_reap, self._warned = 0.0, False
        self.reap_studies: set[int] = set()

    def _retry(self, fn: Callable, *args, **kwargs):
        retry = retrying(within=self.retry_within, first=0.5, maximum=5.0, retry=self._transient, on_retry=lambda e, _: self._health.failed(e))
        result = retry(fn, self, *args, **kwargs)
        self._health.ok()
        return result

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = RDBStorage._create_new_trial(self, study_id, template_trial)
        with self._lock:
            self._own[trial._trial_id] = time.time()
        return trial

    def unfinished_own_trials(self) -> list[int]:
        """Ids of the trials this process created or beat and has not finished itself."""
        with self._lock:
            return list(self._own)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        tries = []

        def attempt(storage: DurableStorage) -> bool:
            tries.append(1)
            try:
                return RDBStorage.set_trial_state_values(storage, trial_id, state, values)
            except UpdateFinishedTrialError:
                if len(tries) > 1 and self._landed(trial_id, state, values):
                    return True  # the first attempt's commit reached the server
                raise

        done = self._retry(attempt)
        if state.is_finished():
            with self._lock:
                self._own.pop(trial_id, None)
        return done

    def _landed(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        trial = RDBStorage.get_trial(self, trial_id)
        return trial.state == state and (values is None or trial.values == [float(v) for v in values])

    def record_heartbeat(self, trial_id: int) -> None:
        now = time.time()
        with self._lock:
            last, self._own[trial_id] = self._own.get(trial_id), now
        try:
            RDBStorage.record_heartbeat(self, trial_id)
            self._health.ok()
            if last is None:
                RDBStorage.set_trial_user_attr(self, trial_id, attrs.WORKER, self._owner)
            elif now - last > 2 * self.heartbeat_interval + 5:
                self._health.gap()  # this process did not run for a while: others may not have either
            if self.reap_studies and now >= self._next_reap:
                self._next_reap = now + self.heartbeat_interval
                for study_id in list(self.reap_studies):
                    self.reap(study_id)
        except UpdateFinishedTrialError:
            pass  # the trial finished (or was reaped) meanwhile; its worker finds out on its next write
        except Exception as e:  # noqa: BLE001 - the heartbeat thread must live through anything
            if self._transient(e):
                self._health.failed(e)
            elif not self._warned:
                self._warned = True
                _logger.warning("a heartbeat failed (%s: %s); heartbeats go on", type(e).__name__, str(e).splitlines()[0] if str(e) else "")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._only_dead(self._retry(RDBStorage._get_stale_trial_ids, study_id))

    def _only_dead(self, trial_ids: list[int]) -> list[int]:
        """``trial_ids`` less those this process still beats (tried to within the grace period:
        alive, whatever the database saw), and none while the database is settling."""
        if self._health.settling():
            return []
        alive_since = time.time() - (self.grace_period or 2 * (self.heartbeat_interval or 0))
        with self._lock:
            return [t for t in trial_ids if self._own.get(t, 0.0) < alive_since]

    def reap(self, study_id: int) -> list[int]:
        """Fail the stale trials of ``study_id`` now, in one try (no retry: called from the
        heartbeat thread); returns the ids failed. Raises the database's errors."""
        failed = []
        for trial_id in self._only_dead(RDBStorage._get_stale_trial_ids(self, study_id)):
            with contextlib.suppress(UpdateFinishedTrialError):  # another worker reaped it first
                if RDBStorage.set_trial_state_values(self, trial_id, TrialState.FAIL):
                    failed.append(trial_id)
                    number = RDBStorage.get_trial(self, trial_id).number
                    _logger.warning("trial %d had no heartbeat for %s s: its worker is presumed dead; marked FAIL, its slot will be redone", number, self.grace_period)
        return failed


def _repeatable(name: str) -> Callable:
    original = getattr(RDBStorage, name)

    @functools.wraps(original)
    def method(self: DurableStorage, *args, **kwargs):
        return self._retry(original, *args, **kwargs)

    return method


for _name in _REPEATABLE:
    setattr(DurableStorage, _name, _repeatable(_name))
