"""One study shared by many worker processes on the real PostgreSQL server.

Workers are real processes running :func:`biotune_optuna.worker.run_worker`; the objective is
the cheap deterministic one of ``tests/_toy.py`` so that coordination — not fine-tuning — is
what these tests measure. Expected genomes come from replaying the pure generation logic with
the same seed, i.e. what one worker evaluating slots in order produces.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from _toy import toy_fitness
from biotune_optuna.config import DatasetSpec
from biotune_optuna.finetune.data import load_dataset
from biotune_optuna.study.attrs import SLOT as SLOT_ATTR
from biotune_optuna.search import GAConfig, search_state
from biotune_optuna.config import StudyConfig
from biotune_optuna.study.studies import create_or_resume
from biotune_optuna.study.storage import open_storage

pytestmark = pytest.mark.postgres
TESTS = Path(__file__).parent
BLOCKS = ("stem", "b1", "b2", "b3", "head")
COMPLETE, FAIL, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING


def make_config(population=6, elites=2, generations=3, seed=7, seeds=(684,), work_unit="trial") -> StudyConfig:
    spec = DatasetSpec("digits", image_size=8)
    splits = load_dataset(spec)
    return StudyConfig(
        model="resnet18", dataset=spec, blocks=BLOCKS, classes=tuple(splits.classes),
        dataset_fingerprint=splits.fingerprint, dataset_files=splits.files, seeds=seeds, n_folds=2,
        population_size=population, n_elites=elites, n_generations=generations, sampler_seed=seed,
        work_unit=work_unit,
    )


def create(url: str, name: str, config: StudyConfig) -> optuna.Study:
    return create_or_resume(open_storage(url, create_tables=True), name, config)[0]


def expected_genomes(config: StudyConfig) -> dict:
    ga = GAConfig(len(config.blocks), config.population_size, config.n_elites, config.n_generations, config.sampler_seed)
    results, genomes = {}, {}
    while not (state := search_state(ga, results)).finished:
        for p in state.proposals:
            if p is not None and (p.generation, p.slot) not in results:
                genomes[(p.generation, p.slot)] = tuple(round(g, 12) for g in p.genome)
                results[(p.generation, p.slot)] = toy_fitness(p.genome)
    return genomes


def completed_slots(url: str, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=url)
    out = {}
    for t in study.get_trials(deepcopy=False, states=(COMPLETE,)):
        rec = t.system_attrs[SLOT_ATTR]
        key = (rec["generation"], rec["slot"])
        assert key not in out, f"slot {key} was evaluated twice (trials {out[key][1]} and {t.number})"
        out[key] = (tuple(round(g, 12) for g in rec["genome"]), t.number)
    return {k: v[0] for k, v in out.items()}


_SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_workers():
    """A failing test must not leave its worker processes running."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def start_worker(url: str, name: str, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "_toy.py"), url, name],
        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    _SPAWNED.append(proc)
    return proc


def finish(workers, timeout: float = 240.0) -> list[str]:
    logs = []
    for w in workers:
        out, _ = w.communicate(timeout=timeout)
        logs.append(out)
        assert w.returncode == 0, out
    return logs


def wait_until(condition, timeout: float = 120.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def test_eight_workers_evaluate_every_slot_exactly_once_with_one_worker_genomes(pg_url):
    config = make_config()
    create(pg_url, "eight", config)
    workers = [start_worker(pg_url, "eight", TOY_DELAY="0.3") for _ in range(8)]
    finish(workers)
    assert completed_slots(pg_url, "eight") == expected_genomes(config)
    assert len(expected_genomes(config)) == 6 + 3 * 8


def test_eight_workers_evaluate_every_seed_unit_exactly_once_with_one_worker_genomes(pg_url):
    config = make_config(population=4, elites=1, generations=2, seeds=(684, 559, 629), work_unit="seed")
    create(pg_url, "units", config)
    workers = [start_worker(pg_url, "units", TOY_DELAY="0.1") for _ in range(8)]
    logs = finish(workers)
    study = optuna.load_study(study_name="units", storage=pg_url)
    units = {}
    for t in study.get_trials(deepcopy=False, states=(COMPLETE,)):
        rec = t.system_attrs[SLOT_ATTR]
        key = (rec["generation"], rec["slot"], rec["seed"])
        assert key not in units, f"unit {key} was evaluated twice"
        units[key] = tuple(round(g, 12) for g in rec["genome"])
    expected = expected_genomes(config)
    assert len(expected) == 4 + 2 * 5
    assert units == {(g, s, u): genome for (g, s), genome in expected.items() for u in range(3)}
    # More than one worker evaluated units of one slot at once: seeds of a genome spread out.
    by_slot = {}
    for t in study.get_trials(deepcopy=False, states=(COMPLETE,)):
        rec = t.system_attrs[SLOT_ATTR]
        by_slot.setdefault((rec["generation"], rec["slot"]), set()).add(t.user_attrs["worker_pid"])
    assert max(len(pids) for pids in by_slot.values()) > 1, logs
    # One worker — the one whose trial closed the generation — redraws the dashboard pages.
    redraws = [line for log in logs for line in log.splitlines() if "dashboard pages updated" in line]
    assert sorted(line.split(": ")[-1] for line in redraws) == [f"{n} generation(s) closed" for n in (1, 2, 3)], redraws


def running_trial_of(url: str, name: str, generation: int | None = None, slot: int | None = None):
    study = optuna.load_study(study_name=name, storage=url)
    for t in study.get_trials(deepcopy=False, states=(RUNNING,)):
        rec = t.system_attrs.get(SLOT_ATTR, {})
        if rec.get("state") == "claimed" and "worker_pid" in t.user_attrs:
            if (generation is None or rec["generation"] == generation) and (slot is None or rec["slot"] == slot):
                return t
    return None


def test_killed_worker_slot_is_retried_after_the_grace_period(pg_url):
    config = make_config(population=4, elites=1, generations=1)
    create(pg_url, "kill", config)
    slow = {"TOY_SLOW_SLOT": "0,2", "TOY_SLOW_DELAY": "30", "TOY_DELAY": "0.2"}
    victim_and_peer = [start_worker(pg_url, "kill", **slow) for _ in range(2)]
    trial = wait_until(lambda: (t := running_trial_of(pg_url, "kill")) and t.system_attrs[SLOT_ATTR]["slot"] == 2 and t)
    pid = trial.user_attrs["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    survivors = [w for w in victim_and_peer if w.pid != pid]
    victim = next(w for w in victim_and_peer if w.pid == pid)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    # The survivor (with the slow slot no longer slow for it) finishes the study.
    finish(survivors + [start_worker(pg_url, "kill", TOY_DELAY="0.2")])
    study = optuna.load_study(study_name="kill", storage=pg_url)
    killed = study.trials[trial.number]
    assert killed.state == FAIL
    assert completed_slots(pg_url, "kill") == expected_genomes(config)


def test_all_workers_stopped_in_generation_two_then_restarted_give_the_same_genomes(pg_url):
    config = make_config(population=5, elites=1, generations=3)
    create(pg_url, "restart", config)
    workers = [start_worker(pg_url, "restart", TOY_DELAY="0.4") for _ in range(3)]
    wait_until(lambda: running_trial_of(pg_url, "restart", generation=2))
    for w in workers:
        w.send_signal(signal.SIGTERM)
    logs = finish(workers, timeout=60)  # exit 0 on SIGTERM
    assert any("stopping on signal" in log for log in logs)
    study = optuna.load_study(study_name="restart", storage=pg_url)
    assert not study.get_trials(states=(RUNNING,)), "SIGTERM must fail the current trial, not leave it running"
    assert len(completed_slots(pg_url, "restart")) < len(expected_genomes(config))
    finish([start_worker(pg_url, "restart", TOY_DELAY="0.05") for _ in range(3)])
    assert completed_slots(pg_url, "restart") == expected_genomes(config)


@pytest.mark.parametrize("writes", [False, True], ids=["silent-objective", "objective-writes-after-reaping"])
def test_trial_reaped_while_its_worker_runs_does_not_crash_the_worker(pg_url, writes):
    config = make_config(population=3, elites=1, generations=1)
    create(pg_url, "reaped", config)
    env = {"TOY_REPORT": "1"} if writes else {}
    worker = start_worker(pg_url, "reaped", TOY_SLOW_SLOT="0,0", TOY_SLOW_DELAY="4", TOY_DELAY="0.05", TOY_GRACE="60", **env)
    trial = wait_until(lambda: running_trial_of(pg_url, "reaped", generation=0, slot=0))  # the slow one (4 s)
    # What the stale-trial reaper or the dashboard does to a trial it believes dead:
    storage = optuna.storages.RDBStorage(pg_url, skip_table_creation=True)
    storage.set_trial_state_values(trial._trial_id, FAIL)
    (log,) = finish([worker])
    # One line, not Optuna's ~45-line traceback of the write that found the trial failed.
    assert len([line for line in log.splitlines() if "reaped as stale" in line]) == 1, log
    assert "Traceback" not in log and "UpdateFinishedTrialError" not in log, log
    assert completed_slots(pg_url, "reaped") == expected_genomes(config)


CLI = [sys.executable, "-m", "biotune_optuna"]


_OPEN_AT_ONCE = """
import pathlib, sys, time
from biotune_optuna.study.storage import open_storage
from biotune_optuna.worker import connect
url, gate, create = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
(gate / f"ready-{sys.argv[4]}").touch()
while not (gate / "go").exists():
    time.sleep(0.005)
open_storage(url, create_tables=True) if create else connect(url, wait_seconds=60)
"""


def test_processes_opening_a_new_database_together_never_race_on_the_schema(pg_url, tmp_path):
    # spec/optuna-pitfalls.md: unguarded, 11 of 12 such processes died with a duplicate-key error.
    # Half create the schema (`create`, `run`), half are workers (retrying until it exists).
    n = 10
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, pg_url, str(tmp_path), str(int(i % 2 == 0)), str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(n)
    ]
    _SPAWNED.extend(procs)
    deadline = time.time() + 180
    while len(list(tmp_path.glob("ready-*"))) < n and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()  # every process has imported: they all open the storage at once
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    failed = [out for p, out in zip(procs, outputs) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {n} failed; first:\n{failed[0]}"
    storage = open_storage(pg_url)  # a complete schema: a worker opens it without creating anything
    assert storage.get_all_studies() == []


def test_twenty_workers_started_with_create_on_an_empty_database_share_the_study(pg_url, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TOY_DELAY": "0.1"}
    workers = [
        subprocess.Popen([sys.executable, str(TESTS / "_toy.py"), pg_url, "crowd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(20)
    ]
    _SPAWNED.extend(workers)
    creator = subprocess.run(
        [*CLI, "create", "--storage", pg_url, "--study-name", "crowd", "--dataset", "digits", "--image-size", "8",
         "--population", "4", "--elites", "1", "--generations", "2", "--seeds", "684"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert creator.returncode == 0, creator.stderr
    finish(workers, timeout=400)
    study = optuna.load_study(study_name="crowd", storage=pg_url)
    slots = completed_slots(pg_url, "crowd")
    assert len(slots) == 4 + 2 * 5
    assert {t.user_attrs["worker_pid"] for t in study.get_trials(states=(COMPLETE,))} <= {w.pid for w in workers}


def test_worker_with_other_dataset_files_refuses_and_names_the_file(pg_url, tmp_path):
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(data / cls / f"{i}.png")
    create_cmd = [*CLI, "create", "--storage", pg_url, "--study-name", "files", "--dataset", "folder", "--data-path", str(data),
                  "--image-size", "8", "--population", "3", "--elites", "1", "--generations", "1", "--folds", "1"]
    assert subprocess.run(create_cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path).returncode == 0
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(data / "b" / "3.png")
    proc = subprocess.run([*CLI, "worker", "--storage", pg_url, "--study-name", "files", "--wait", "5"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert "differs" in proc.stderr and "3.png" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_database_is_a_clear_error_without_the_password(tmp_path):
    proc = subprocess.run(
        [*CLI, "worker", "--storage", "postgresql+psycopg2://bob:hunter2-secret@127.0.0.1:1/none", "--study-name", "x", "--wait", "2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "hunter2-secret" not in proc.stderr + proc.stdout
    assert "cannot open storage" in proc.stderr and "***" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_storage_url_can_come_from_a_file_so_it_stays_out_of_the_process_list(pg_url, tmp_path):
    config = make_config(population=3, elites=1, generations=0)
    create(pg_url, "fromfile", config)
    url_file = tmp_path / "storage_url"
    url_file.write_text(pg_url + "\n")
    env = {**os.environ, "BIOTUNE_STORAGE_FILE": str(url_file)}
    proc = subprocess.run([*CLI, "status", "--study-name", "fromfile"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "generation" in proc.stdout


class ThrowawayPostgres:
    """A private PostgreSQL server (initdb + pg_ctl on a free port) that a test may stop and
    start at will. Runs as the ``postgres`` system user when the tests run as root."""

    def __init__(self, root: Path, password: str | None = None):
        import glob
        import shutil
        import socket

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql (run scripts/setup.sh)")
        self.bin = Path(bins[-1])
        self.root = root
        self.data = root / "pgdata"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "postgres")
        auth = ["-A", "trust"]
        if password is not None:
            pwfile = root / "pw"
            pwfile.write_text(password + "\n")
            if self.as_user:
                shutil.chown(pwfile, "postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        self._run("initdb", "-D", str(self.data), *auth, "-U", "postgres", "--no-sync")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def throwaway_pg(request):
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="biotune-pg-"))  # outside pytest's root-only tmp tree
    try:
        server = ThrowawayPostgres(root, password=getattr(request, "param", None))
        server.start()
        yield server
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_database_restart_mid_search_workers_reconnect_and_nothing_is_lost_or_duplicated(throwaway_pg):
    url = throwaway_pg.url
    config = make_config(population=5, elites=1, generations=2)
    create(url, "outage", config)
    workers = [start_worker(url, "outage", TOY_DELAY="0.5") for _ in range(2)]
    wait_until(lambda: len(completed_slots(url, "outage")) >= 3, timeout=180)
    throwaway_pg.stop()
    time.sleep(3)
    throwaway_pg.start()
    logs = finish(workers, timeout=300)
    assert any("database unreachable" in log for log in logs), logs
    assert completed_slots(url, "outage") == expected_genomes(config)


@pytest.mark.parametrize("throwaway_pg", ["right-horse-battery"], indirect=True)
def test_wrong_password_is_refused_without_echoing_it(throwaway_pg, tmp_path):
    url = f"postgresql+psycopg2://postgres:not-the-Pa55word@127.0.0.1:{throwaway_pg.port}/postgres"
    proc = subprocess.run([*CLI, "status", "--storage", url, "--study-name", "x"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "not-the-Pa55word" not in proc.stderr + proc.stdout
    assert "password authentication failed" in proc.stderr and "***" in proc.stderr
    assert "Traceback" not in proc.stderr
    good = url.replace("not-the-Pa55word", "right-horse-battery")
    create(good, "guarded", make_config(population=3, elites=1, generations=0))
    ok = subprocess.run([*CLI, "status", "--storage", good, "--study-name", "guarded"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "right-horse-battery" not in ok.stderr + ok.stdout


def test_worker_refuses_a_study_of_another_config_version(pg_url, tmp_path):
    study = create(pg_url, "future", make_config(population=3, elites=1, generations=0))
    stored = dict(study.user_attrs["biotune_config"], version=999)
    study.set_user_attr("biotune_config", stored)
    proc = subprocess.run([*CLI, "worker", "--storage", pg_url, "--study-name", "future", "--wait", "60"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "version 999" in proc.stderr and "Traceback" not in proc.stderr


def test_ask_tell_trials_get_heartbeats_and_are_reaped_when_they_stop(pg_url):
    from biotune_optuna.worker import heartbeat

    storage = open_storage(pg_url, create_tables=True, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="asktell", storage=storage)
    beating = study.ask()
    with heartbeat(beating):
        time.sleep(3.5)
        assert storage._get_stale_trial_ids(study._study_id) == []
    silent = study.ask()
    with heartbeat(silent):
        pass  # one heartbeat, then the "process" stops
    time.sleep(3.5)
    stale = storage._get_stale_trial_ids(study._study_id)
    assert set(stale) == {beating._trial_id, silent._trial_id}
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [FAIL, FAIL]


def test_status_shows_slots_and_workers_of_a_running_search(pg_url, tmp_path):
    from biotune_optuna.study.sampler import longest_first

    config = make_config(population=4, elites=1, generations=1)
    create(pg_url, "watch", config)
    # One worker claims the initial population longest work first: the slot it takes last is slowed.
    free = list(search_state(GAConfig(len(config.blocks), 4, 1, 1, config.sampler_seed), {}).proposals)
    while len(free) > 1:
        free.remove(longest_first(free))
    last = free[0].slot
    worker = start_worker(pg_url, "watch", TOY_SLOW_SLOT=f"0,{last}", TOY_SLOW_DELAY="20", TOY_DELAY="0.05")
    wait_until(lambda: (t := running_trial_of(pg_url, "watch")) and t.system_attrs[SLOT_ATTR]["slot"] == last)
    proc = subprocess.run([*CLI, "status", "--storage", pg_url, "--study-name", "watch"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    worker.send_signal(signal.SIGTERM)
    finish([worker], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "3 done, 1 running, 0 free" in proc.stdout
    assert re.search(r"workers seen \(last 10 min\)\s*│\s*1\s*│", proc.stdout), proc.stdout
