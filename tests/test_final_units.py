"""The final protocol as work units (issue 13, item 3): every (configuration, seed) of spec §8
is one trial of ``<study>:final``; workers that finished the search share them with each other
and with ``report``, which then retrains nothing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from biotune_optuna.report import units
from biotune_optuna.report.tuning import TuneSpec, parse_tune_grid, plan_sweep
from biotune_optuna.study import attrs

optuna.logging.set_verbosity(optuna.logging.WARNING)
CLI = [sys.executable, "-m", "biotune_optuna"]


def result(val: float, test: float) -> dict:
    return {"val_accuracy": val, "test_accuracy": test, "epochs": 2, "seconds": 1.0, "trainable_fraction": 0.5}


def test_a_coordinate_sweep_needs_its_rate_stage_first_and_chooses_on_validation_only():
    spec = TuneSpec(lrs=(1e-4, 1e-2), grids=parse_tune_grid(["l2sp.alpha=0.01,0.1"]))
    seeds = (1, 2)
    needed, decided = plan_sweep("l2sp", spec, 1e-3, seeds, {})
    # Both rates at the anchor alpha (0.1 is the default: it is in the grid), every seed at once.
    assert decided is None
    assert [(u.params, u.seed) for u in needed] == [
        ({"lr": 1e-4, "alpha": 0.1}, 1), ({"lr": 1e-4, "alpha": 0.1}, 2),
        ({"lr": 1e-2, "alpha": 0.1}, 1), ({"lr": 1e-2, "alpha": 0.1}, 2),
    ]
    # lr 1e-2 wins on validation; its test scores are the worse ones, and that changes nothing.
    done = {u.ident: result(0.9 if u.params["lr"] == 1e-2 else 0.8, 0.1 if u.params["lr"] == 1e-2 else 0.99) for u in needed}
    needed, decided = plan_sweep("l2sp", spec, 1e-3, seeds, done)
    assert decided is None and [(u.params, u.seed) for u in needed] == [({"lr": 1e-2, "alpha": 0.01}, 1), ({"lr": 1e-2, "alpha": 0.01}, 2)]
    done.update({u.ident: result(0.85, 0.99) for u in needed})
    needed, decided = plan_sweep("l2sp", spec, 1e-3, seeds, done)
    assert needed == [] and decided.chosen == {"lr": 1e-2, "alpha": 0.1}
    assert [r["test_accuracy"] for r in decided.results] == [0.1, 0.1]
    assert [c["params"] for c in decided.trace] == [{"lr": 1e-4, "alpha": 0.1}, {"lr": 1e-2, "alpha": 0.1}, {"lr": 1e-2, "alpha": 0.01}]
    assert decided.selection == {"configs": 3, "fine_tunes": 4, "epochs": 8, "seconds": 4.0}
    # Units of another round are other units.
    assert plan_sweep("l2sp", spec, 1e-3, seeds, done, round_=1)[0][0].round == 1


def _share(url: str, name: str, out: str, delay: float) -> None:
    """A process working through one plan of six units whose 'training' sleeps."""
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=3)
    final = optuna.load_study(study_name=name, storage=storage)
    todo = [units.Unit("baseline:full", {"lr": lr}, seed) for lr in (1e-3, 1e-2, 1e-1) for seed in (1, 2)]

    def run(unit):
        time.sleep(delay)
        return {**result(unit.params["lr"], 0.5), "pid": os.getpid()}

    done = units.work(final, lambda d: [u for u in todo if u.ident not in d], run, poll=(0.05, 0.2))
    Path(out).write_text(json.dumps(sorted(r["pid"] for r in done.values())))


@pytest.mark.postgres
def test_processes_share_units_exactly_once_and_a_killed_one_is_redone(pg_url, tmp_path):
    optuna.create_study(study_name="s:final", storage=pg_url, direction="maximize")
    ctx = mp.get_context("spawn")
    # A first process takes a unit and is killed inside it: that unit is reaped and redone.
    doomed = ctx.Process(target=_share, args=(pg_url, "s:final", str(tmp_path / "doomed"), 60.0))
    doomed.start()
    final = optuna.load_study(study_name="s:final", storage=pg_url)
    deadline = time.monotonic() + 120
    while not final.get_trials(states=(optuna.trial.TrialState.RUNNING,)) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join()
    procs = [ctx.Process(target=_share, args=(pg_url, "s:final", str(tmp_path / f"w{i}"), 2.0)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    trials = final.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    idents = [units.Unit.from_attr(t.user_attrs[attrs.FINAL_UNIT]).ident for t in done]
    assert len(idents) == len(set(idents)) == 6  # each unit finished exactly once
    assert [t.state.name for t in trials if t.number == 0] == ["FAIL"]  # the killed one's unit, reaped
    seen = [json.loads((tmp_path / f"w{i}").read_text()) for i in range(2)]
    assert seen[0] == seen[1] and len(set(seen[0])) == 2  # both read the same results; both trained some
    assert doomed.pid not in seen[0]


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_do_the_final_protocol_and_report_retrains_nothing(pg_url, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "BIOTUNE_CACHE_DIR": str(tmp_path / "cache")}
    where = ["--storage", pg_url, "--study-name", "fin"]
    made = subprocess.run(
        [*CLI, "create", *where, "--dataset", "digits", "--image-size", "16", "--train-size", "120", "--val-size", "60",
         "--test-size", "100", "--population", "3", "--elites", "1", "--generations", "1", "--folds", "1",
         "--seeds", "684,559", "--max-epochs", "1", "--patience", "1", "--baselines", "linear"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert made.returncode == 0, made.stderr
    workers = [subprocess.Popen([*CLI, "worker", *where, "--device", "cpu", "--wait", "60"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    assert all("final protocol done: BioTune" in log for log in logs), logs

    final = optuna.load_study(study_name="fin:final", storage=pg_url)
    done = [t for t in final.trials if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [(u.method, json.dumps(u.params, sort_keys=True), u.seed) for u in (units.Unit.from_attr(t.user_attrs[attrs.FINAL_UNIT]) for t in done)]
    assert len(keys) == len(set(keys)) == 2 + 3 * 2  # BioTune × 2 seeds, linear probing × 3 rates × 2 seeds
    assert {k[0] for k in keys} == {"biotune", "baseline:linear"}

    status = subprocess.run([*CLI, "status", *where], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if "final protocol" in line)
    assert "units (configuration × seed): 8 complete" in row and "pruned" not in row, status.stdout
    assert sorted(row.split("rows decided: ")[1].strip(" │").split(", ")) == ["baseline:linear", "biotune"], row

    shown = subprocess.run([*CLI, "report", *where, "--device", "cpu"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.count("stored result") == 2 and "final ·" not in shown.stderr and "tune ·" not in shown.stderr
    report = json.loads((tmp_path / "reports" / "fin" / "report.json").read_text())
    by_seed = {
        u.seed: t.user_attrs[attrs.FINAL_UNIT_RESULT]["test_accuracy"]
        for t in done if (u := units.Unit.from_attr(t.user_attrs[attrs.FINAL_UNIT])).method == "biotune"
    }
    assert report["methods"][0]["test_accuracies"] == [by_seed[684], by_seed[559]]
