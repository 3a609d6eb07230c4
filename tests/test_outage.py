"""Nothing lost, nothing noisy (issue 11): database outages under training workers, prompt reaping
of a dead worker's slot, errors that cannot heal, start-up signals, and one log event per line.

Real processes throughout: workers run :func:`biotune_optuna.worker.run_worker` with the cheap
objective of ``tests/_toy.py`` (heartbeat interval 1 s), or the ``biotune-optuna`` command; the
database is the shared PostgreSQL server, or a throwaway one that a test stops and starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest

from biotune_optuna.study.attrs import SLOT as SLOT_ATTR
from biotune_optuna.study.storage import open_storage
from test_distributed import (  # noqa: F401 - fixtures used by name
    CLI,
    COMPLETE,
    FAIL,
    RUNNING,
    _no_leftover_workers,
    completed_slots,
    create,
    expected_genomes,
    finish,
    make_config,
    start_worker,
    throwaway_pg,
    wait_until,
)

pytestmark = pytest.mark.postgres
INTERVAL = 1  # the toy workers' heartbeat interval, seconds


def trials_of_slot(url: str, name: str, generation: int, slot: int) -> list:
    study = optuna.load_study(study_name=name, storage=url)
    return [
        t for t in study.get_trials(deepcopy=False)
        if (rec := t.system_attrs.get(SLOT_ATTR, {})).get("generation") == generation and rec.get("slot") == slot
    ]


def test_short_outage_under_a_training_worker_loses_nothing(throwaway_pg):
    url, name = throwaway_pg.url, "outage-in-flight"
    config = make_config(population=3, elites=1, generations=1)
    create(url, name, config)
    # Slot (0, 0) trains for 60 s, reporting every 0.25 s; the peer evaluates the other slots,
    # then waits for it (the generation cannot close) and reaps stale trials meanwhile.
    env = dict(TOY_SLOW_SLOT="0,0", TOY_SLOW_DELAY="60", TOY_REPORT="1", TOY_DELAY="0.2", TOY_GRACE="20")
    workers = [start_worker(url, name, **env) for _ in range(2)]
    wait_until(lambda: len(completed_slots(url, name)) >= 2, timeout=120)
    (slow,) = trials_of_slot(url, name, 0, 0)
    assert slow.state == RUNNING, "the slow trial must be in flight during the outage"
    throwaway_pg.stop()
    time.sleep(8)  # well inside the 20 s grace period
    throwaway_pg.start()
    logs = finish(workers, timeout=300)
    attempts = trials_of_slot(url, name, 0, 0)
    assert [t.state for t in attempts] == [COMPLETE], logs  # the in-flight trial completed: not failed, not redone
    assert completed_slots(url, name) == expected_genomes(config)
    both = "\n".join(logs)
    assert "Traceback" not in both and "Exception in thread" not in both, both
    told = [sum("database unreachable" in line for line in log.splitlines()) for log in logs]
    assert max(told) == 1, both  # the outage is logged once per worker, heartbeats included
    assert "database reachable again" in both


def test_dead_worker_is_reaped_within_grace_plus_one_interval_while_the_others_train(pg_url):
    name, grace = "reap-on-time", 4
    create(pg_url, name, make_config(population=4, elites=1, generations=1))
    # Every trial lasts 30–90 s: neither worker finishes one while the test measures.
    victim, peer = (start_worker(pg_url, name, TOY_DELAY="60", TOY_GRACE=str(grace)) for _ in range(2))

    def both_training():
        study = optuna.load_study(study_name=name, storage=pg_url)
        running = {t.user_attrs.get("worker_pid"): t for t in study.get_trials(deepcopy=False, states=(RUNNING,))}
        return running if {victim.pid, peer.pid} <= set(running) else None

    running = wait_until(both_training, timeout=180)
    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    study = optuna.load_study(study_name=name, storage=pg_url)
    reaped = wait_until(lambda: (t := study.trials[running[victim.pid].number]).state == FAIL and t, timeout=120)
    kill_to_reap = reaped.datetime_complete.timestamp() - killed_at
    print(f"kill-to-reap {kill_to_reap:.2f} s (grace {grace} s, heartbeat interval {INTERVAL} s)")
    assert study.trials[running[peer.pid].number].state == RUNNING  # reaped by a worker still training
    # The last heartbeat is at most the kill; one interval between reaper passes; 1 s for the
    # database round trips of a loaded machine.
    assert kill_to_reap <= grace + INTERVAL + 1.0
    peer.send_signal(signal.SIGTERM)
    finish([peer], timeout=60)


def cli(*args: str, cwd, wait: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command with stdout and stderr to pipes and no COLUMNS: what a scheduler's log sees."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | (env or {})
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=wait)


def test_log_lines_to_a_pipe_are_not_wrapped_at_80_columns(tmp_path):
    db = "a_database_name_long_enough_to_push_every_line_well_past_eighty_columns"
    proc = cli("worker", "--storage", f"postgresql+psycopg2://bob:s3cret@127.0.0.1:1/{db}", "--study-name", "x", "--wait", "3", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    retries = [line for line in proc.stderr.splitlines() if "retrying in" in line]
    assert retries and all("cannot open storage" in line and db in line and "Connection refused" in line for line in retries), proc.stderr
    assert any(len(line) > 120 for line in retries)
    assert "s3cret" not in proc.stderr


@pytest.mark.parametrize(
    "url, reason",
    [
        ("postgresql+psycopg2://postgres@127.0.0.1:5432/no_such_database_here", 'database "no_such_database_here" does not exist'),
        ("this is not a URL", "Could not parse"),
        ("mysql://bob:s3cret@127.0.0.1/biotune", "No module named"),
    ],
    ids=["missing-database", "unparseable-url", "missing-driver"],
)
def test_a_storage_error_that_cannot_heal_fails_at_once(url, reason, tmp_path):
    # --wait 600 with a 120 s limit: a worker that retried these would time out here.
    proc = cli("worker", "--storage", url, "--study-name", "x", "--wait", "600", cwd=tmp_path, wait=120)
    assert proc.returncode == 2, proc.stderr
    assert reason in proc.stderr and "retrying" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "s3cret" not in proc.stderr


@pytest.mark.parametrize("throwaway_pg", ["right-horse-battery"], indirect=True)
def test_a_wrong_password_fails_at_once(throwaway_pg, tmp_path):
    url = f"postgresql+psycopg2://postgres:not-the-Pa55word@127.0.0.1:{throwaway_pg.port}/postgres"
    proc = cli("worker", "--storage", url, "--study-name", "x", "--wait", "600", cwd=tmp_path, wait=120)
    assert proc.returncode == 2, proc.stderr
    assert "password authentication failed" in proc.stderr and "retrying" not in proc.stderr, proc.stderr
    assert "not-the-Pa55word" not in proc.stderr


def test_only_errors_that_heal_are_retried():
    import psycopg2
    import sqlalchemy.exc

    from biotune_optuna.study.retry import unreachable

    def refused(message: str) -> BaseException:
        try:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg2.OperationalError(message))
        except sqlalchemy.exc.OperationalError as e:
            try:
                raise optuna.exceptions.StorageInternalError("commit failed") from e
            except optuna.exceptions.StorageInternalError as wrapped:
                return wrapped

    assert unreachable(refused('connection to server at "db", port 5432 failed: Connection refused'))
    assert unreachable(refused("server closed the connection unexpectedly"))
    assert unreachable(refused("FATAL:  the database system is starting up"))
    assert unreachable(refused("FATAL:  sorry, too many clients already"))
    assert not unreachable(refused('FATAL:  password authentication failed for user "bob"'))
    assert not unreachable(refused('FATAL:  database "nope" does not exist'))
    assert not unreachable(ImportError("No module named 'MySQLdb'"))
    assert not unreachable(optuna.exceptions.UpdateFinishedTrialError("finished"))


def start_cli(*args: str, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(stream, text: str, timeout: float = 180) -> list[str]:
    """Lines of ``stream`` up to the first that contains ``text``."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came; got: {''.join(lines)}")


@pytest.mark.parametrize("phase", ["server-unreachable", "study-not-created"])
def test_sigterm_before_the_worker_joined_exits_0_with_one_line(phase, pg_url, tmp_path):
    if phase == "server-unreachable":
        url, waiting = "postgresql+psycopg2://postgres@127.0.0.1:1/x", "retrying in"
    else:
        open_storage(pg_url, create_tables=True)  # the schema, but no study yet
        url, waiting = pg_url, "waiting for study"
    proc = start_cli("worker", "--storage", url, "--study-name", "later", "--wait", "300", cwd=tmp_path)
    try:
        before = read_until(proc.stderr, waiting)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(before) + rest
    told = [line for line in rest.splitlines() if "stopped" in line]
    assert len(told) == 1 and "SIGTERM" in told[0] and "before it joined" in told[0], rest
    assert "Traceback" not in "".join(before) + rest


def test_status_of_a_database_without_the_schema_says_how_to_create_the_study(pg_url, tmp_path):
    proc = cli("status", "--storage", pg_url, "--study-name", "mine", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'mine' does not exist yet" in proc.stderr and "biotune-optuna create --study-name mine" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_stop_fails_the_trials_this_process_left_running(tmp_path):
    from biotune_optuna.study import _optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create_tables=True, heartbeat_interval=1, grace_period=2))
    done, caught = study.ask(), study.ask()  # `caught`: stopped between ask() and its objective
    study.tell(done, 1.0)
    other = optuna.load_study(study_name="s", storage=open_storage(url)).ask()  # another process's
    assert _optuna.fail_own_running_trials(study) == 1
    states = {t.number: (t.state, t.user_attrs.get("interrupted")) for t in optuna.load_study(study_name="s", storage=url).trials}
    assert states == {done.number: (COMPLETE, None), caught.number: (FAIL, True), other.number: (RUNNING, None)}
