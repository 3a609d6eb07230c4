"""Counts and states people see (issue 11, item 5): no placeholder trials among the results,
interrupted attempts shown as interrupted, and a worker's count of what it evaluated.

Real studies: SQLite for one process (threads), the PostgreSQL server where worker processes
share a study (``tests/_toy.py`` workers, as in test_distributed.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import optuna
import pytest

from biotune_optuna.study.attrs import INTERRUPTED, NOT_AN_EVALUATION, SLOT
from biotune_optuna.study.pacing import StopWhenFinished
from biotune_optuna.study.storage import open_storage
from biotune_optuna.study.studies import create_or_resume, make_sampler
from biotune_optuna.worker import WorkerSummary
from test_plots import fake_objective, small_config
from test_distributed import _no_leftover_workers  # noqa: F401 - autouse: no worker outlives its test

COMPLETE, FAIL, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED


def new_study(tmp_path, name="s", **sizes):
    config = small_config(**sizes)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, _ = create_or_resume(open_storage(url, create_tables=True), name, config)
    study.sampler = make_sampler(config, poll_interval=0.005, max_poll_interval=0.05)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return study, config, url


def state_of(t: optuna.trial.FrozenTrial) -> str:
    return (t.system_attrs.get(SLOT) or {}).get("state", "none")


def test_a_search_run_to_its_end_makes_no_trial_without_a_slot(tmp_path):
    study, config, url = new_study(tmp_path)
    # As `run` does: no n_trials, the callback stops the study before the next ask.
    study.optimize(fake_objective(config), callbacks=[StopWhenFinished(study.sampler, poll=0.005)])
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == config.n_evaluations  # what optuna-dashboard lists: "19 Trials"
    assert {t.state for t in trials} == {COMPLETE} and {state_of(t) for t in trials} == {"claimed"}


def test_threads_evaluate_every_slot_once_and_any_trial_that_lost_the_last_slot_says_so(tmp_path):
    study, config, url = new_study(tmp_path)
    study.optimize(fake_objective(config), n_jobs=3, callbacks=[StopWhenFinished(study.sampler, poll=0.005)])
    trials = optuna.load_study(study_name="s", storage=url).trials
    claimed = [t for t in trials if state_of(t) == "claimed"]
    slots = {(t.system_attrs[SLOT]["generation"], t.system_attrs[SLOT]["slot"]) for t in claimed}
    assert len(claimed) == len(slots) == config.n_evaluations and {t.state for t in claimed} == {COMPLETE}
    # Two threads racing for the very last slot can still leave one trial without a slot: it must
    # be unmistakable in the dashboard (user attribute, no params), never a result.
    for t in trials:
        if t not in claimed:
            assert t.state == PRUNED and not t.params and "already finished" in t.user_attrs[NOT_AN_EVALUATION]


def test_a_plain_optimize_marks_the_trial_that_found_the_search_finished(tmp_path):
    study, config, url = new_study(tmp_path, population=3, elites=1, generations=1)
    study.optimize(fake_objective(config))  # the sampler alone stops it: one trial too many
    *evaluated, extra = optuna.load_study(study_name="s", storage=url).trials
    assert len(evaluated) == config.n_evaluations and extra.state == PRUNED and state_of(extra) == "finished"
    assert "nothing trained" in extra.user_attrs[NOT_AN_EVALUATION]
    assert all(NOT_AN_EVALUATION not in t.user_attrs for t in evaluated)


def test_a_worker_counts_its_evaluations_not_trials_without_a_slot_and_lost_ones_apart(tmp_path):
    study, config, _ = new_study(tmp_path, population=3, elites=1, generations=1)
    reaped = study.ask()  # claims slot (0, 0); then another process fails it as stale
    study._storage.set_trial_state_values(reaped._trial_id, FAIL)

    def objective(trial):
        if trial.number == 1:
            raise ValueError("NaN loss")  # the evaluation's own failure: an evaluation
        return fake_objective(config)(trial)

    study.optimize(objective, catch=(ValueError,))  # ends with a trial that finds no slot
    summary = WorkerSummary()
    for t in study.trials:
        summary.count(study, t)
    assert [state_of(t) for t in study.trials].count("finished") == 1
    assert (summary.evaluated, summary.lost) == (config.n_evaluations + 1, 1)  # + the slot redone after the failure
    assert str(summary) == f"{config.n_evaluations + 1} trial(s) evaluated, 1 lost (failed as stale while running: their slots are redone)"
    assert str(WorkerSummary(3)) == "3 trial(s) evaluated"


# ------------------------------------------------------------------ status

def status(url: str, name: str, cwd) -> str:  # noqa: ANN001
    proc = subprocess.run(
        [sys.executable, "-m", "biotune_optuna", "status", "--storage", url, "--study-name", name],
        capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_shows_interrupted_attempts_as_interrupted_not_failed(tmp_path):
    study, _, url = new_study(tmp_path, population=4, elites=1, generations=1)

    def stopped(trial):
        trial.suggest_float("gene_stem", 0, 1)
        trial.set_user_attr(INTERRUPTED, True)  # as Objective does on SIGTERM / Ctrl-C
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.optimize(stopped, n_trials=1)
    reaped = study.ask()  # its worker died: failed as stale by another one
    study._storage.set_trial_state_values(reaped._trial_id, FAIL)
    out = status(url, "s", tmp_path)
    assert re.search(r"attempts redone\s*│\s*2 interrupted \(the worker was stopped or died\)", out), out
    assert re.search(r"trials\s*│\s*2 interrupted\s*│", out), out
    assert "fail" not in out

    def broken(trial):
        trial.suggest_float("gene_stem", 0, 1)
        raise ValueError("NaN loss")

    study.optimize(broken, n_trials=1, catch=(ValueError,))
    out = status(url, "s", tmp_path)
    assert re.search(r"attempts redone\s*│\s*1 failed \(the evaluation raised\), 2 interrupted \(", out), out
    assert re.search(r"slots\s*│\s*0 done, 0 running, 4 free, 0 not open yet \(of 4\)", out), out


def test_status_leaves_out_the_trial_that_found_the_search_finished(tmp_path):
    study, config, url = new_study(tmp_path, population=3, elites=1, generations=1)
    study.optimize(fake_objective(config))  # one trial too many, pruned by the sampler
    out = status(url, "s", tmp_path)
    assert re.search(rf"trials\s*│\s*{config.n_evaluations} complete\s*│", out), out
    assert "pruned" not in out


# ------------------------------------------------------------------ worker processes

@pytest.mark.postgres
def test_workers_counts_add_up_to_the_evaluations_and_a_reaped_trial_is_counted_lost(pg_url):
    from test_distributed import create, finish, make_config, start_worker, wait_until

    config = make_config(population=4, elites=1, generations=2)
    create(pg_url, "count", config)
    workers = [start_worker(pg_url, "count", TOY_DELAY="0.1", TOY_SLOW_SLOT="0,0", TOY_SLOW_DELAY="10", TOY_GRACE="60") for _ in range(3)]

    def slow_trial():
        study = optuna.load_study(study_name="count", storage=pg_url)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return next((t for t in running if (t.system_attrs.get(SLOT) or {}).get("slot") == 0 and "worker_pid" in t.user_attrs), None)

    trial = wait_until(slow_trial, timeout=300)
    storage = optuna.storages.RDBStorage(pg_url, skip_table_creation=True)
    storage.set_trial_state_values(trial._trial_id, FAIL)  # what the reaper does to a trial it believes dead
    logs = finish(workers)
    done = [re.search(r"worker done: (\d+) trial\(s\) evaluated(?:, (\d+) lost)?", log) for log in logs]
    assert all(done), logs
    evaluated, lost = sum(int(m[1]) for m in done), sum(int(m[2] or 0) for m in done)
    study = optuna.load_study(study_name="count", storage=pg_url)
    claimed = [t for t in study.trials if state_of(t) == "claimed"]
    assert evaluated == len([t for t in claimed if t.state == COMPLETE]) == config.n_evaluations
    assert lost == 1 and len(claimed) == config.n_evaluations + 1
    for t in study.trials:
        if state_of(t) != "claimed":
            assert t.user_attrs[NOT_AN_EVALUATION]


@pytest.mark.slow
def test_run_with_two_worker_threads_stops_by_itself_with_every_slot_evaluated_once(tmp_path):
    from test_cli import TINY, cli

    proc = cli("run", *TINY, "--workers", "2", "--no-report", "--study-name", "two", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'biotune-runs' / 'two' / 'study.db'}")
    claimed = [t for t in study.trials if state_of(t) == "claimed"]
    slots = {(t.system_attrs[SLOT]["generation"], t.system_attrs[SLOT]["slot"]) for t in claimed}
    assert len(claimed) == len(slots) == 7 and {t.state for t in claimed} == {COMPLETE}
    assert all(t.user_attrs[NOT_AN_EVALUATION] for t in study.trials if t not in claimed)
