"""Coordination cost: trials/s of N worker processes sharing one PostgreSQL study.

Each worker runs ``study.optimize`` with a trivial objective (no training) over the BioTune
genome params, so what is measured is sampler + storage work per trial. BioTuneSampler is
measured next to RandomSampler and NSGAIISampler in the same run, on the same server, with
the same number of trials; the figure to read is the ratio. The clock starts once every worker
has imported, connected and loaded the study (process start-up is not coordination).

    .venv/bin/python bench/workers_throughput.py --workers 4 --trials 120
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import uuid

import optuna
import psycopg2

BLOCKS = [f"b{i}" for i in range(9)] + ["classifier"]


def objective(trial: optuna.Trial) -> float:
    genome = [trial.suggest_float(f"gene_{b}", 0, 1) for b in BLOCKS] + [trial.suggest_float("threshold", 0, 1)]
    return 1.0 - sum((g - 0.6) ** 2 for g in genome) / len(genome)


def make_sampler(kind: str, trials: int, seed: int):
    if kind == "biotune":
        from biotune_optuna.study.sampler import BioTuneSampler

        p, e = 10, 3
        generations = max(0, -(-(trials - p) // (p + e)))
        return BioTuneSampler(BLOCKS, population_size=p, n_elites=e, n_generations=generations, seed=0, poll_interval=0.01)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(population_size=10, seed=seed)


def work(url: str, name: str, kind: str, trials: int, per_worker: int, seed: int, ready, go) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True, engine_kwargs={"pool_pre_ping": True})
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(kind, trials, seed))
    ready.release()
    go.wait()
    study.optimize(objective, n_trials=per_worker)


def measure(url: str, kind: str, workers: int, trials: int) -> float:
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    per_worker = trials // workers
    ctx = mp.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=work, args=(url, name, kind, trials, per_worker, i, ready, go)) for i in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:  # every worker has imported, connected and loaded the study: start the clock
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    done = len(optuna.load_study(study_name=name, storage=url).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    return done / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=120, help="trials per sampler (all workers together)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--user", default="postgres")
    args = ap.parse_args()
    db = f"biotune_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host=args.host, user=args.user, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg2://{args.user}@{args.host}/{db}"
    try:
        rates = {kind: measure(url, kind, args.workers, args.trials) for kind in ("random", "nsga2", "biotune")}
    finally:
        admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        admin.cursor().execute(f'DROP DATABASE "{db}"')
    print(f"{args.workers} worker processes, {args.trials} trials each sampler, trivial objective, PostgreSQL")
    print(f"{'sampler':<10} {'trials/s':>9} {'vs random':>10}")
    for kind, rate in rates.items():
        print(f"{kind:<10} {rate:>9.1f} {rate / rates['random']:>9.2f}x")


if __name__ == "__main__":
    main()
