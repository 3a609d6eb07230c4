"""The worker loop: evaluate trials of a shared study until its search is finished.

A worker needs only the storage URL and the study name: everything else comes from the
study's stored config (DESIGN.md, flow step 2). It

* opens the storage without creating tables (the schema is made once, by ``create``), retrying
  with backoff while the database or the study does not exist yet;
* refuses to run when its dataset files or weights differ from the study's, naming the file;
* evaluates one trial at a time through ``Study.optimize`` (heartbeats on), and waits with
  backoff when the open generation has no free slot;
* reaps stale trials of dead workers from its heartbeat thread, once per heartbeat interval,
  while it trains (and before each trial, and while it waits): a dead worker's slot is free
  within grace period + one interval, whatever the other workers are doing;
* rides out a database outage: heartbeats go on beating (:class:`~biotune_optuna.study._optuna.DurableStorage`),
  the trial's writes (``report``, ``set_user_attr``, ``tell``) are retried for up to
  ``wait_seconds``, and the outage is logged once;
* survives a trial reaped as stale while it still runs (Optuna 5.0 raises
  ``AssertionError: Should not reach.`` or ``ValueError: Cannot tell a FAIL trial``) with one
  log line;
* on SIGTERM / SIGINT fails the current trial cleanly (its slot is handed out again) and
  returns normally;
* once the search is finished, takes work units of the final protocol (BioTune's best genome
  and the study's baselines with their default sweeps, every seed: ``report.final.final_report``)
  alongside the other workers, so ``report`` finds the results stored.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import optuna
import sqlalchemy.exc

from biotune_optuna.config import ConfigError, StudyConfig
from biotune_optuna.finetune.backbones import weights_fingerprint
from biotune_optuna.finetune.data import Splits, describe_difference, load_dataset
from biotune_optuna.finetune.features import DEFAULT_MAX_BYTES
from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.retry import Backoff, retrying
from biotune_optuna.study.sampler import slot_record
from biotune_optuna.study.storage import NoSchema, StorageUnavailable, database_error, open_storage, redact
from biotune_optuna.study.studies import load_config, make_pruner, make_sampler
from biotune_optuna.study.tally import interrupted

_logger = logging.getLogger(__name__)

#: Default seconds between heartbeats of a running trial, and without one before it is failed as
#: stale (``worker --heartbeat-interval / --grace-period``; ``run`` uses these).
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 300


def connect(
    url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD, wait_seconds: float = 300.0
) -> optuna.storages.RDBStorage:
    """Open ``url`` (no table creation, heartbeats on), retrying with backoff (1 s, doubling, ≤ 30 s)
    while the server cannot be reached or has no Optuna schema yet (``create`` has not run).
    Calls on a running trial are then retried through outages for up to ``wait_seconds``.

    Raises:
        ConfigError: at once for an error that cannot heal (wrong password, missing database,
            unparseable URL, missing driver); after ``wait_seconds`` if the server stays
            unreachable or without schema. The message hides the password.
    """

    def log(error: BaseException, pause: float) -> None:
        _logger.warning("%s; retrying in %.0f s", error, pause)

    retry = retrying(within=wait_seconds, first=1.0, maximum=30.0, retry=lambda e: isinstance(e, (StorageUnavailable, NoSchema)), on_retry=log)
    return retry(open_storage, url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, retry_within=wait_seconds)


class _NotYet(Exception):
    """The study is not there yet (or has no config yet)."""


def wait_for_study(storage: optuna.storages.BaseStorage, name: str, wait_seconds: float = 300.0) -> optuna.Study:
    """Load study ``name`` once it exists and carries its config, waiting with backoff.

    Raises:
        ConfigError: if it does not appear within ``wait_seconds``, or at once if it carries a
            config this version cannot read (another config version: the worker refuses).
    """

    def attempt() -> optuna.Study:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            raise _NotYet(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        if attrs.CONFIG not in study.user_attrs:
            raise _NotYet("it has no config yet")
        load_config(study)  # raises ConfigError for an incompatible config
        return study

    told: list[bool] = []

    def log(error: BaseException, pause: float) -> None:
        if not told:
            _logger.info("waiting for study %r to be created…", name)
            told.append(True)

    try:
        return retrying(within=wait_seconds, first=0.5, maximum=10.0, retry=lambda e: isinstance(e, _NotYet), on_retry=log)(attempt)
    except _NotYet as e:
        raise ConfigError(f"study {name!r} did not appear within {wait_seconds:.0f} s ({e})") from None


def describe_pruned(user_attrs: dict) -> str:
    """"pruned at seed S epoch E · val V" from a pruned trial's user attributes (``pruned_at``,
    :data:`~biotune_optuna.study.attrs.PRUNED_VALUE`); the value is left out when absent."""
    at, value = user_attrs.get(attrs.PRUNED_AT, {}), user_attrs.get(attrs.PRUNED_VALUE)
    text = f"pruned at seed {at.get('seed', 0) + 1} epoch {at.get('epoch')}"
    return text if value is None else f"{text} · val {value:.4f}"


def log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One log line per evaluated trial: its slot, then its value, where it was pruned, or that it failed."""
    rec = slot_record(trial)
    if rec is None or not rec.claimed:
        return
    head = f"trial {trial.number} · {rec.describe()}"
    user = trial.user_attrs
    if trial.state == optuna.trial.TrialState.COMPLETE:
        _logger.info("%s · val %.4f", head, trial.value)
    elif trial.state == optuna.trial.TrialState.PRUNED:
        _logger.info("%s · %s", head, describe_pruned(user))
    elif trial.state == optuna.trial.TrialState.FAIL:
        _logger.info("%s · failed%s", head, " (interrupted)" if user.get(attrs.INTERRUPTED) else f": {user.get(attrs.ERROR, '')}")


@contextmanager
def heartbeat(trial: optuna.Trial):
    """Record heartbeats for a trial made with ``study.ask()`` while the block runs.

    Optuna records heartbeats only inside ``Study.optimize``; an ask/tell loop that wants its
    trials failed (and their slots redone) when the process dies wraps each evaluation::

        trial = study.ask()
        with heartbeat(trial):
            value = objective(trial)
        study.tell(trial, value)

    A no-op when the storage has no heartbeat configured.
    """
    with _optuna.heartbeat_thread(trial):
        yield


def check_fingerprints(config: StudyConfig, splits: Splits) -> None:
    """Refuse to work on data or weights other than the study's.

    Raises:
        ConfigError: naming the dataset files that differ (from the study's list of them, or
            its sketch for large datasets: finetune/fingerprint.py), or the weights file.
    """
    if splits.fingerprint != config.dataset_fingerprint:
        named = describe_difference(config.dataset_files, config.dataset_sketch, splits.files, splits.skipped)
        raise ConfigError(f"this worker's dataset differs from the study's: {named}")
    if config.weights_sha256 and weights_fingerprint(config.model, config.weights_file) != config.weights_sha256:
        raise ConfigError(f"this worker's weights for {config.model} differ from the study's (sha256 mismatch)")


def publish_quietly(study: optuna.Study, config: StudyConfig) -> bool:
    """Refresh the study's dashboard pages; a failure is logged, never fatal to the search.
    Returns True when pages were written."""
    from biotune_optuna.report.dashboard import publish

    try:
        return publish(study, config)
    except Exception as e:  # noqa: BLE001 - plots are a view; the search goes on without them
        _logger.warning("could not update the dashboard pages (%s: %s)", type(e).__name__, e)
        return False


#: Seconds after a generation closed past which any worker redraws pages still behind (the
#: worker whose trial closed it, which redraws them first, may have died meanwhile).
REDRAW_FALLBACK_S = 60.0


def join_final_protocol(study: optuna.Study, config: StudyConfig, splits: Splits, device: str) -> None:
    """Take final-protocol units with the other workers until every row is decided
    (:func:`biotune_optuna.report.final.final_report`: BioTune's best genome and
    ``config.baselines`` with the default sweep; rows are stored in the study). A unit that
    keeps failing is logged as an error and left to ``report``."""
    from biotune_optuna.report.final import final_report
    from biotune_optuna.report.units import UnitFailed

    _logger.info("the search is finished: this worker takes final-protocol units (every method × seed on the full splits)")
    try:
        rows = final_report(
            study, config, splits, device, on_event=_logger.info,
            on_seed=lambda name, seed, val: _logger.info("final · %s · seed %d · val %.4f", name, seed, val),
        )
    except UnitFailed as e:
        _logger.error("final protocol stopped: %s", e)
        return
    _logger.info("final protocol done: %s", "; ".join(f"{r.method} {r.accuracy_text}" for r in rows))


def closing_trial(trials: Sequence[optuna.trial.FrozenTrial], generation: int) -> optuna.trial.FrozenTrial | None:
    """The trial that closed ``generation``: among its finished trials (COMPLETE, PRUNED, or FAIL
    — a slot given up after failures), the last to finish (ties: the highest number). Every
    worker that reads the same finished trials names the same one, so exactly one redraws the
    dashboard pages when a generation closes. None when the generation has no finished trial
    (its slots were all skipped)."""
    finished = [
        t for t in trials
        if t.state.is_finished() and t.datetime_complete is not None
        and (rec := slot_record(t)) is not None and rec.claimed and rec.generation == generation
    ]
    return max(finished, key=lambda t: (t.datetime_complete, t.number), default=None)


_DATABASE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def reaped_while_running(error: BaseException) -> bool:
    """True for the ways Optuna 5.0 reports that this worker's trial was failed by someone else
    (the stale-trial reaper, the dashboard) while it ran: ``AssertionError: Should not reach.``
    from ``optimize``, ``ValueError: Cannot tell a FAIL trial.``, or
    ``UpdateFinishedTrialError`` from a write to the finished trial."""
    return (
        (isinstance(error, AssertionError) and "Should not reach" in str(error))
        or (isinstance(error, ValueError) and "Cannot tell a" in str(error))
        or isinstance(error, optuna.exceptions.UpdateFinishedTrialError)
    )


def _database_cause(error: BaseException) -> BaseException | None:
    """The database error behind ``error`` (itself, its cause or its context), or None.

    Optuna 5.0 can turn a failed ``tell`` during an outage into an unrelated-looking error
    (``UnboundLocalError`` in ``_run_trial``'s ``finally``); the chain still holds the cause.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, _DATABASE_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def run_worker(
    url: str,
    study_name: str,
    *,
    device: str = "auto",
    max_trials: int | None = None,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    wait_seconds: float = 300.0,
    objective_factory: Callable[[StudyConfig, Splits, str], Callable] | None = None,
    cache_dir: str | os.PathLike | None = None,
    feature_cache_bytes: int = DEFAULT_MAX_BYTES,
    strict: bool = False,
    final_protocol: bool = True,
) -> WorkerSummary:
    """Evaluate trials of ``study_name`` until the search is finished (or ``max_trials``).

    Args:
        url: storage URL (its password is never logged).
        study_name: the study made by ``create``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        max_trials: stop after this many trials (None = until finished).
        heartbeat_interval, grace_period: seconds; a trial without heartbeat for
            ``grace_period`` is failed by any worker and its slot handed out again.
        wait_seconds: how long to wait for the database and the study to appear.
        objective_factory: builds the objective (tests pass a cheap one); default
            :class:`biotune_optuna.objective.Objective`.
        cache_dir: folder of decoded datasets shared with other runs and workers
            (``load_dataset(cache_dir=)``); None decodes from the files. The command line
            passes :func:`biotune_optuna.finetune.data.dataset_cache_dir` unless ``--no-cache``.
        feature_cache_bytes: memory for this worker's frozen-prefix features (0: off).
        strict: refuse a dataset folder with unreadable image files instead of leaving them out.
        final_protocol: when the search is finished, share the final protocol's work units
            (:func:`biotune_optuna.report.final.final_report` with the study's baselines and the
            default sweep) before exiting; False exits at once.

    Returns:
        How many trials this worker evaluated, and how many it lost (reaped while running).

    Raises:
        ConfigError: unreachable database, missing study, or a dataset/weights mismatch.
        KeyboardInterrupt: SIGINT (or SIGTERM, where the caller turns it into one, as the
            command line does) before the worker joined; after, a signal ends the loop cleanly.
    """
    # Heartbeats and fail_stale_trials are marked experimental in Optuna 5.0; workers rely on them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = connect(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, wait_seconds=wait_seconds)
    study = wait_for_study(storage, study_name, wait_seconds)
    config = load_config(study)
    splits = load_dataset(config.dataset, cache_dir, strict=strict)
    check_fingerprints(config, splits)
    if objective_factory is None:
        from biotune_optuna.objective import Objective

        objective = Objective(config, splits, device, feature_cache_bytes=feature_cache_bytes)
    else:
        objective = objective_factory(config, splits, device)
    study.sampler = make_sampler(config, claim_timeout=float(grace_period))
    study.pruner = make_pruner(config)
    _optuna.reap_on_heartbeat(study)
    _logger.info("worker joined study %r in %s", study_name, redact(url))
    loop = _Loop(study, config, objective, url)
    if final_protocol:
        loop.final = lambda: join_final_protocol(study, config, splits, device)
    with _stopped_by_signals() as stop, _quiet_reaped_trials():
        try:
            while not stop.is_set() and (max_trials is None or loop.summary.evaluated < max_trials) and loop.step():
                pass
        except KeyboardInterrupt:
            _optuna.fail_own_running_trials(study)  # one stopped before its objective started
            _logger.warning("stopping on signal: the current trial (if any) is marked FAIL and its slot will be redone")
    return loop.summary


@dataclass
class WorkerSummary:
    """What one worker did; ``str()`` gives the line the ``worker`` command prints.

    Attributes:
        evaluated: trials its own objective finished: COMPLETE, PRUNED, or FAIL because the
            evaluation raised. Trials that found the search finished (no slot) are not counted.
        lost: its trials that another process failed as stale while they ran (their results are
            thrown away and their slots redone).
    """

    evaluated: int = 0
    lost: int = 0

    def count(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """``optimize`` callback: count a trial that ended in this worker."""
        rec = slot_record(trial)
        if rec is not None and not rec.claimed:
            return  # no slot: the search was finished when it started
        if trial.state == optuna.trial.TrialState.FAIL and interrupted(trial):
            self.lost += 1
        else:
            self.evaluated += 1

    def __str__(self) -> str:
        lost = f", {self.lost} lost (failed as stale while running: their slots are redone)" if self.lost else ""
        return f"{self.evaluated} trial(s) evaluated{lost}"


@contextmanager
def _quiet_reaped_trials() -> Iterator[None]:
    """Drop Optuna's traceback (~45 lines) for a trial whose writes found it failed by another
    worker: :meth:`_Loop.step` says it in one line."""
    quiet = _optuna.FailedTrialLog(optuna.exceptions.UpdateFinishedTrialError, lambda n: None)
    log = logging.getLogger(_optuna.OPTIMIZE_LOGGER)
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


@contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """SIGTERM / SIGINT set the event and raise KeyboardInterrupt in the main thread (the current
    trial fails cleanly); handlers are restored on exit. Off the main thread: the event only."""
    stop, previous = threading.Event(), {}

    def on_signal(signum, frame):  # noqa: ANN001
        stop.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Loop:
    """One worker's claim → evaluate cycle; :meth:`step` does one round."""

    def __init__(self, study: optuna.Study, config: StudyConfig, objective: Callable, url: str) -> None:
        self.study, self.config, self.objective, self.url = study, config, objective, url
        self.summary, self.published, self.told = WorkerSummary(), -1, 0.0
        self.finished_here: set[int] = set()  # numbers of the trials this worker finished
        self.final: Callable[[], None] | None = None  # the final protocol's share, once the search is finished
        self.idle = Backoff(0.5, 10.0, 1.5)  # no free slot: the generation waits for running trials
        self.outage = Backoff(0.5, 30.0)  # the database does not answer

    def _mine(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.finished_here.add(trial.number)

    def _redraw_if_due(self, state) -> None:  # noqa: ANN001 - a SearchState
        """Redraw the dashboard pages for the generations closed so far if this worker's trial
        closed the latest one (:func:`closing_trial`), or if the pages are still behind
        :data:`REDRAW_FALLBACK_S` after it closed; else leave them to that worker. Without this
        every worker that sees a generation closed before the pages are written redraws them
        (seconds of CPU each) before it claims its next unit."""
        from biotune_optuna.report.dashboard import PUBLISHED_ATTR

        closed = len(state.populations)
        if self.published < 0:  # just started: pages are someone else's business unless behind
            self.published = 0
        closer = closing_trial(self.study.get_trials(deepcopy=False), closed - 1)
        shown = _optuna.storage_of(self.study).get_study_system_attrs(_optuna.study_id(self.study)).get(PUBLISHED_ATTR, 0)
        mine = closer is not None and closer.number in self.finished_here
        late = closer is None or (datetime.now() - closer.datetime_complete).total_seconds() > REDRAW_FALLBACK_S
        if shown >= closed:
            self.published = closed
        elif mine or late:
            self.published = closed
            if publish_quietly(self.study, self.config):
                _logger.info("dashboard pages updated: %d generation(s) closed", closed)

    def step(self) -> bool:
        """Reap stale trials, then evaluate one trial if a slot is free, else wait a little.

        Returns:
            False when the search is finished (the worker exits).
        """
        study, sampler = self.study, self.study.sampler
        try:
            optuna.storages.fail_stale_trials(study)
            state = sampler.search_state(study)
            if len(state.populations) > self.published:  # a generation closed: refresh the dashboard
                self._redraw_if_due(state)
            if state.finished:
                if self.final is not None:
                    self.final()
                _logger.info("the search is finished: worker exits after %s", self.summary)
                return False
            if not sampler.free_units(study):
                if time.monotonic() - self.told > 30:
                    _logger.info("generation %d has no free slot yet: waiting", state.generation)
                    self.told = time.monotonic()
                self.idle.sleep()
                return True
            self.idle.reset()
            study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[log_trial, self.summary.count, self._mine])
            self.outage.reset()
        except Exception as e:  # noqa: BLE001 - sorted below; anything else is re-raised
            if reaped_while_running(e):
                self.summary.lost += 1
                _logger.warning("a trial of this worker was reaped as stale while it ran; its result is lost and its slot will be redone")
                return True
            cause = _database_cause(e)
            if cause is None:
                raise
            pause = self.outage.next()
            _logger.warning("database unreachable (%s); retrying in %.0f s", database_error(cause, self.url), pause)
            time.sleep(pause)
        return True
