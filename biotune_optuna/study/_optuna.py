"""Every use of Optuna's private API, in one place.

An Optuna upgrade that moves one of these touches this file alone, and
``tests/test_optuna_private.py`` pins the behaviour relied on (Optuna 5.0):

* ``Study._storage`` / ``Study._study_id`` and ``Trial._trial_id`` / ``FrozenTrial._trial_id``:
  the storage and ids behind a study or trial (public storage methods take ids);
* ``BaseStorage.get_all_trials(study_id, deepcopy=False)`` returns the trials sorted by number,
  ``trials[i].number == i``;
* ``optuna.storages._heartbeat``: whether a storage beats, and the heartbeat thread that
  ``Study.optimize`` runs around each trial (used for ask/tell trials and by the worker);
* the logger ``optuna.study._optimize``, which logs a failed trial with its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

#: The logger that reports failed trials (with their traceback) inside ``Study.optimize``.
OPTIMIZE_LOGGER = "optuna.study._optimize"


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
