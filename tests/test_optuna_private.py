"""Pins the behaviour of Optuna's private API that biotune_optuna/study/_optuna.py relies on.

If an Optuna upgrade breaks one of these, the fix belongs in that one module.
"""

from __future__ import annotations

import logging
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from biotune_optuna.study import _optuna


def _storage(tmp_path, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=heartbeat, grace_period=2 if heartbeat else None
        )


def test_ids_and_storage_are_those_the_storage_uses(tmp_path):
    storage = _storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="a")
    other = optuna.create_study(storage=storage, study_name="b")
    trial = other.ask()
    # Optuna wraps an RDBStorage in its caching storage: the same database behind it.
    assert _optuna.storage_of(study).get_study_id_from_name("a") == _optuna.study_id(study)
    assert _optuna.study_id(study) == storage.get_study_id_from_name("a")
    assert _optuna.study_id(other) == storage.get_study_id_from_name("b") != _optuna.study_id(study)
    assert storage.get_trial(_optuna.trial_id(trial)).number == trial.number
    frozen = other.trials[0]
    assert _optuna.trial_id(frozen) == _optuna.trial_id(trial)


def test_all_trials_come_sorted_by_number_with_number_equal_to_index(tmp_path):
    study = optuna.create_study(storage=_storage(tmp_path))
    live = [study.ask() for _ in range(5)]
    study.tell(live[3], 1.0)
    study.tell(live[1], 2.0)
    trials = _optuna.all_trials(study)
    assert [t.number for t in trials] == list(range(5))
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE, TrialState.RUNNING]


def test_attributes_written_by_id_are_read_back_from_storage(tmp_path):
    study = optuna.create_study(storage=_storage(tmp_path))
    trial = study.ask()
    _optuna.set_system_attr(study, _optuna.trial_id(trial), "k", {"a": [1, 2]})
    _optuna.set_user_attr(study, _optuna.trial_id(trial), "u", 3)
    assert _optuna.trial_system_attrs(trial)["k"] == {"a": [1, 2]}
    assert study.trials[0].user_attrs["u"] == 3
    _optuna.fail_trial(study, _optuna.trial_id(trial))
    assert study.trials[0].state == TrialState.FAIL


def test_heartbeats_are_recorded_only_when_the_storage_has_them(tmp_path):
    (tmp_path / "p").mkdir()
    plain = optuna.create_study(storage=_storage(tmp_path / "p"))
    assert not _optuna.heartbeats_enabled(plain)
    _optuna.record_heartbeat(plain, _optuna.trial_id(plain.ask()))  # a no-op, no error

    beating_dir = tmp_path / "h"
    beating_dir.mkdir()
    study = optuna.create_study(storage=_storage(beating_dir, heartbeat=1))
    assert _optuna.heartbeats_enabled(study)
    quiet, beating = study.ask(), study.ask()
    _optuna.record_heartbeat(study, _optuna.trial_id(quiet))  # one beat, then silence
    with _optuna.heartbeat_thread(beating):
        time.sleep(3.5)  # beyond the 2 s grace period
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.trials}
    assert states == {quiet.number: TrialState.FAIL, beating.number: TrialState.RUNNING}


def test_optimize_logs_failed_trials_on_the_logger_we_filter(caplog):
    study = optuna.create_study()

    def boom(trial: optuna.Trial) -> float:
        raise RuntimeError("boom")

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger=_optuna.OPTIMIZE_LOGGER):
            study.optimize(boom, n_trials=1, catch=(RuntimeError,))
    finally:
        optuna.logging.disable_propagation()
    failed = [r for r in caplog.records if r.name == _optuna.OPTIMIZE_LOGGER and "failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None and failed[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.FAIL])
def test_a_trial_failed_by_id_cannot_be_told_again(tmp_path, state):
    # The worker relies on Optuna refusing writes to a finished trial (reaped-while-running).
    study = optuna.create_study(storage=_storage(tmp_path))
    trial = study.ask()
    _optuna.fail_trial(study, _optuna.trial_id(trial))
    with pytest.raises((ValueError, optuna.exceptions.UpdateFinishedTrialError)):
        if state == TrialState.COMPLETE:
            study.tell(trial, 1.0)
        else:
            _optuna.storage_of(study).set_trial_user_attr(_optuna.trial_id(trial), "late", 1)
