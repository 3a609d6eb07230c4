"""Two `biotune-optuna run`s of one study folder (issue 11, item 3), and a run resuming after a
killed one: real `run` processes on the embedded SQLite default, really training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from test_cli import TINY

pytestmark = pytest.mark.slow
STATES = optuna.trial.TrialState
# 30 epochs with patience 30: a trial is still training whenever the test looks.
ARGS = ["run", *TINY, "--max-epochs", "30", "--patience", "30", "--study-name", "twice", "--no-report"]


def start_run(cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BIOTUNE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.Popen([sys.executable, "-m", "biotune_optuna", *ARGS], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def study_of(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="twice", storage=f"sqlite:///{cwd / 'biotune-runs' / 'twice' / 'study.db'}")


def training_trial(cwd: Path, timeout: float = 300) -> optuna.trial.FrozenTrial:
    """The first RUNNING trial that has reported an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            trials = study_of(cwd).get_trials(states=(STATES.RUNNING,))
        except Exception:  # noqa: BLE001 - not created yet
            continue
        for t in trials:
            if t.intermediate_values:
                return t
    raise AssertionError("no trial started training")


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=60)


def test_a_second_run_of_a_live_study_refuses_in_one_line_and_the_first_carries_on(tmp_path, procs):
    first = start_run(tmp_path)
    procs.append(first)
    training = training_trial(tmp_path)
    second = subprocess.run([sys.executable, "-m", "biotune_optuna", *ARGS], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "BIOTUNE_CACHE_DIR": str(tmp_path / "cache")})
    assert second.returncode == 2, second.stderr
    # After its dataset and model lines, one line says why and names the live run.
    errors = [line for line in second.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "already being run" in errors[0] and str(first.pid) in errors[0], second.stderr
    assert "Traceback" not in second.stderr and "study 'twice' in" not in second.stderr  # it never opened the study
    assert first.poll() is None, "the first run must carry on"
    study = study_of(tmp_path)
    assert study.trials[training.number].state == STATES.RUNNING
    assert not study.get_trials(states=(STATES.FAIL,)), "the second run must not fail the first one's trials"
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=180)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    failed = study_of(tmp_path).get_trials(states=(STATES.FAIL,))
    assert [t.user_attrs.get("interrupted") for t in failed] == [True]  # only the trial SIGTERM stopped


def test_run_resumes_at_once_the_trial_of_a_killed_run(tmp_path, procs):
    first = start_run(tmp_path)
    procs.append(first)
    orphan = training_trial(tmp_path)
    assert orphan.user_attrs["worker"].endswith(f":{first.pid}")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    again = start_run(tmp_path)
    procs.append(again)
    # Its process is gone: failed at start-up, not after the 300 s grace period of heartbeats.
    deadline = time.monotonic() + 240
    while study_of(tmp_path).trials[orphan.number].state == STATES.RUNNING:
        assert time.monotonic() < deadline, "the killed run's trial was not failed"
        assert again.poll() is None, again.communicate()[1]
        time.sleep(1)
    assert study_of(tmp_path).trials[orphan.number].state == STATES.FAIL
    again.send_signal(signal.SIGTERM)
    _, err = again.communicate(timeout=180)
    assert "left RUNNING by a stopped process" in err and "Traceback" not in err, err
