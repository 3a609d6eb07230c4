"""Waiting workers: what a worker with nothing to claim costs the database, how a claim fares
while many wait, and how fast a generation is filled when it opens (issue 13, item 4).

On a private PostgreSQL server (initdb in a temporary folder, ``max_connections`` 400, fsync on),
for W = 8, 32, 64 waiting workers:

1. a holder process claims every slot of generation 0 (P = 4) and keeps the trials beating;
2. W real workers (:func:`biotune_optuna.worker.run_worker`, forked from this process so that
   they share its imported libraries) find no free slot and wait; after a warm-up long enough
   for their backoff to reach its cap, a window measures the SQL statements they send (counted
   in each worker by a SQLAlchemy ``before_cursor_execute`` listener) and the database's
   transactions (``pg_stat_database.xact_commit + xact_rollback``);
3. a probe process then times 8 claims (``study.ask()``, i.e. the sampler's ``before_trial``)
   on another study of the same database, as with no worker waiting (measured first);
4. the holder finishes its trials, generation 1 opens with P + E = 5 slots, and ``fill_s`` is
   the time until all 5 are claimed by waiting workers.

Then the capacity of this server for the waiting workers' poll: 4 processes repeat the worker
loop's poll (reap stale trials, replay, free slots) without pausing; the statements per second
they reach bound what one waiting worker may cost.

    .venv/bin/python bench/waiting_workers.py --waiting 8,32,64     # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_distributed import ThrowawayPostgres  # noqa: E402 - one throwaway-server helper, shared with the tests

from biotune_optuna.config import DatasetSpec, StudyConfig  # noqa: E402
from biotune_optuna.finetune.data import load_dataset  # noqa: E402
from biotune_optuna.search.genome import param_names  # noqa: E402
from biotune_optuna.study import _optuna  # noqa: E402
from biotune_optuna.study.storage import open_storage  # noqa: E402
from biotune_optuna.study.studies import create_or_resume, make_sampler  # noqa: E402
from biotune_optuna.worker import run_worker  # noqa: E402

BLOCKS = ("stem", "b1", "b2", "head")
CTX = mp.get_context("fork")


def make_config() -> StudyConfig:
    spec = DatasetSpec("digits", image_size=8)
    splits = load_dataset(spec)
    return StudyConfig(model="resnet18", dataset=spec, blocks=BLOCKS, classes=tuple(splits.classes),
                       dataset_fingerprint=splits.fingerprint, dataset_files=splits.files, seeds=(684,),
                       population_size=4, n_elites=1, n_generations=1)


def _count_statements(counter, i: int) -> None:  # noqa: ANN001 - a shared multiprocessing array
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def count(*args) -> None:  # noqa: ANN002
        counter[i] += 1

    event.listen(Engine, "before_cursor_execute", count)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trials stopped at the end "failed"
    logging.getLogger("biotune_optuna").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)  # heartbeats outside optimize(): on purpose
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _waiting_worker(url: str, counts, i: int, cache: str) -> None:  # noqa: ANN001
    """A real worker; ``counts[2i]`` counts its SQL statements, ``counts[2i + 1]`` its loop's polls."""
    import biotune_optuna.worker as worker_mod

    _quiet()
    _count_statements(counts, 2 * i)
    step = worker_mod._Loop.step

    def counted_step(self) -> bool:  # noqa: ANN001
        counts[2 * i + 1] += 1
        return step(self)

    worker_mod._Loop.step = counted_step

    def objective(trial: optuna.Trial) -> float:
        [trial.suggest_float(n, 0.0, 1.0) for n in param_names(BLOCKS)]
        time.sleep(600)  # stopped by SIGTERM at the end of the case
        return 0.5

    run_worker(url, "wait", objective_factory=lambda config, splits, device: objective, wait_seconds=300, cache_dir=cache, final_protocol=False)


def _holder(url: str, held, release, released_at) -> None:  # noqa: ANN001
    _quiet()
    storage = open_storage(url, create_tables=True, heartbeat_interval=5, grace_period=300)
    config = make_config()
    study = create_or_resume(storage, "wait", config)[0]
    trials = [study.ask() for _ in range(config.population_size)]
    with contextlib.ExitStack() as stack:
        for t in trials:
            stack.enter_context(_optuna.heartbeat_thread(t))
        held.set()
        release.wait()
        for t in trials:
            study.tell(t, 0.5)
        released_at.value = time.time()


def _probe(url: str, name: str, n: int, out) -> None:  # noqa: ANN001
    _quiet()
    config = make_config()
    study = create_or_resume(open_storage(url, heartbeat_interval=5, grace_period=300), name, config,
                             sampler=make_sampler(config, claim_timeout=300.0))[0]
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask()
        out.put(time.perf_counter() - t0)
        study.tell(trial, 0.5)


def _poll_loop(url: str, seconds: float, counter, i: int) -> None:  # noqa: ANN001
    _quiet()
    _count_statements(counter, i)
    config = make_config()
    study = create_or_resume(open_storage(url, heartbeat_interval=5, grace_period=300), "wait", config)[0]
    end = time.time() + seconds
    while time.time() < end:  # the poll of worker._Loop.step, without its pause
        optuna.storages.fail_stale_trials(study)
        study.sampler.search_state(study)
        study.sampler.free_units(study)


def _start(target, *args) -> mp.Process:  # noqa: ANN001
    p = CTX.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _hold(url: str) -> tuple[mp.Process, object, object]:  # noqa: ANN001
    """Start the holder; return it, its release event and its released-at time once it holds."""
    held, release, released_at = CTX.Event(), CTX.Event(), CTX.Value("d", 0.0)
    holder = _start(_holder, url, held, release, released_at)
    while not held.wait(1.0):
        if not holder.is_alive():
            raise RuntimeError("the holder process died before claiming its slots")
    return holder, release, released_at


def _server_cpu(data: Path) -> float:
    """CPU seconds used so far by the server: the postmaster and every process it started."""
    master = int((data / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(stat.parent.name) == master or int(fields[1]) == master:  # fields[1]: ppid
            total += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _xacts(admin, db: str) -> int:  # noqa: ANN001
    with admin.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
        cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (db,))
        return int(cur.fetchone()[0])


def _claims(url: str, name: str, n: int = 8) -> float:
    out = CTX.Queue()
    p = _start(_probe, url, name, n, out)
    values = [out.get(timeout=300) for _ in range(n)]
    p.join()
    return statistics.median(values[1:])  # the first ask of a process loads the study


_CLAIMED_GEN1 = """SELECT count(*) FROM trials t JOIN trial_system_attributes a USING (trial_id)
 JOIN studies s USING (study_id) WHERE s.study_name = 'wait' AND t.state = 'RUNNING' AND a.key = 'biotune:slot'
 AND a.value_json::jsonb->>'state' = 'claimed' AND (a.value_json::jsonb->>'generation')::int = 1"""


def _fill(url: str, released_at: float, slots: int) -> tuple[float, int]:
    """Seconds from the release until ``slots`` trials of generation 1 are claimed, and how many
    trials the waiting workers created by then (more than ``slots``: the others wait in the queue)."""
    conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    fill = float("nan")
    try:
        while time.time() - released_at < 300:
            with conn.cursor() as cur:
                cur.execute(_CLAIMED_GEN1)
                if cur.fetchone()[0] >= slots:
                    fill = time.time() - released_at
                    break
            time.sleep(0.05)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = 'wait' AND t.number >= 4")
            return fill, int(cur.fetchone()[0])
    finally:
        conn.close()


def _stop(workers: list[mp.Process]) -> int:
    for w in workers:
        w.terminate()
    for w in workers:
        w.join(timeout=60)
        if w.is_alive():
            w.kill()
            w.join()
    return sum(w.exitcode not in (0, -15) for w in workers)


def case(server_url: str, data: Path, admin, waiting: int, warmup: float, window: float, cache: str) -> str:  # noqa: ANN001
    """One line of figures for ``waiting`` workers (module docstring, steps 1–4)."""
    db = f"wait{waiting}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    url = server_url.rsplit("/", 1)[0] + f"/{db}"
    holder, release, released_at = _hold(url)
    idle_claim = _claims(url, "probe-idle")
    counts = CTX.Array("q", 2 * waiting, lock=False)
    gc.freeze()  # forked workers share the parent's objects instead of copying them
    forked = time.time()
    workers = [_start(_waiting_worker, url, counts, i, cache) for i in range(waiting)]
    deadline = forked + 900
    while min(counts[1::2]) == 0 and time.time() < deadline:  # every worker has polled once
        time.sleep(1.0)
    started = time.time()
    time.sleep(warmup)
    c0, p0, x0, s0, t0 = sum(counts[::2]), sum(counts[1::2]), _xacts(admin, db), _server_cpu(data), time.time()
    time.sleep(window)
    c1, p1, x1, s1, t1 = sum(counts[::2]), sum(counts[1::2]), _xacts(admin, db), _server_cpu(data), time.time()
    busy_claim = _claims(url, "probe-busy")
    release.set()
    holder.join(timeout=120)
    fill, created = _fill(url, released_at.value, 5)
    bad = _stop(workers)
    per = (t1 - t0) * waiting
    return (f"waiting={waiting} startup_s={started - forked:.0f} "
            f"polls_per_s_per_worker={(p1 - p0) / per:.3f} statements_per_poll={(c1 - c0) / max(1, p1 - p0):.1f} "
            f"statements_per_s_per_worker={(c1 - c0) / per:.3f} transactions_per_s_per_worker={(x1 - x0) / per:.3f} "
            f"server_cpu_ms_per_s_per_worker={1e3 * (s1 - s0) / per:.2f} "
            f"claim_ms_none_waiting={1e3 * idle_claim:.0f} claim_ms_while_waiting={1e3 * busy_claim:.0f} "
            f"fill_s={fill:.1f} trials_created_for_5_slots={created}" + (f" workers_not_stopped_cleanly={bad}" if bad else ""))


def capacity(server_url: str, data: Path, admin, seconds: float, procs: int = 4) -> str:  # noqa: ANN001
    """Statements/s the server answers to ``procs`` processes polling without pause, and the
    server CPU one statement costs."""
    db = "capacity"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    url = server_url.rsplit("/", 1)[0] + f"/{db}"
    holder, release, _ = _hold(url)
    counter = CTX.Array("q", procs, lock=False)
    loops = [_start(_poll_loop, url, seconds, counter, i) for i in range(procs)]
    time.sleep(seconds / 4)  # read while they run: a backend's CPU time leaves /proc with it
    n0, cpu0, t0 = sum(counter), _server_cpu(data), time.time()
    time.sleep(seconds / 2)
    n1, cpu1, t1 = sum(counter), _server_cpu(data), time.time()
    for p in loops:
        p.join()
    release.set()
    holder.join(timeout=120)
    return (f"capacity processes={procs} statements_per_s={(n1 - n0) / (t1 - t0):.0f} "
            f"server_cpu_ms_per_statement={1e3 * (cpu1 - cpu0) / (n1 - n0):.3f} (polling without pause, server and clients on this machine)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waiting", default="8,32,64")
    ap.add_argument("--warmup", type=float, default=40.0, help="seconds after every worker's first poll before the window (its backoff reaches its cap)")
    ap.add_argument("--window", type=float, default=60.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="biotune-wait-"))
    server = ThrowawayPostgres(root)
    server._run("pg_ctl", "-D", str(server.data), "-o", f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=400",
                "-l", str(root / "log"), "-w", "start")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
        admin.autocommit = True
        print(capacity(server.url, server.data, admin, 20.0), flush=True)
        for w in (int(x) for x in args.waiting.split(",")):
            print(case(server.url, server.data, admin, w, args.warmup, args.window, str(root / "cache")), flush=True)
        admin.close()
    finally:
        server.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
