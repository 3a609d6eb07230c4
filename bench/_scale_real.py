"""Real runs for ``bench/scale_out.py``: worker processes on PostgreSQL with a sleep objective.

BioTune: N processes of the real worker (:func:`biotune_optuna.worker.run_worker`, the real
BioTuneSampler and its claims) on a paper-sized search with G = 2 (36 evaluations, 3 seeds),
in (slot, seed) work units (``--real-unit seed``, the default) or whole trials; each trial
sleeps the simulation's duration for its genome and seed(s). Each process times, in itself, its
loop's steps, the sampler's ``before_trial`` (and whether it had to wait) and the sleep, so the
latencies that the simulation needs are measured in this very run; then the simulation of the
same run (those latencies, the measured worker start times) is set beside the real wall time.
RandomSampler: N plain ``study.optimize`` processes, same objective, same budget, same server.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psycopg2

from scale_out import SHARES, Setting, Timing, seed_seconds, simulate, unit_cost, value_of_genome

REAL = Setting("real", "resnet50", 10, 3, 2, 3, ft_seconds=1.0)
BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")


def _instrument(rec: dict) -> None:
    """Time the worker loop's steps and the sampler's before_trial in this process."""
    import biotune_optuna.report.dashboard as dashboard_mod
    import biotune_optuna.study.sampler as sampler_mod
    import biotune_optuna.worker as worker_mod

    passes = [0]

    class CountingBackoff(sampler_mod.Backoff):
        def sleep(self, cap=None):  # noqa: ANN001
            passes[0] += 1
            return super().sleep(cap)

    sampler_mod.Backoff = CountingBackoff
    before_trial, step = sampler_mod.BioTuneSampler.before_trial, worker_mod._Loop.step

    def timed_before_trial(self, study, trial):  # noqa: ANN001
        passes[0], t0 = 0, time.time()
        before_trial(self, study, trial)
        rec["claims"].append((t0, time.time(), passes[0]))

    def timed_step(self):  # noqa: ANN001
        t0, ran = time.time(), self.summary.evaluated
        out = step(self)
        rec["steps"].append((t0, time.time(), self.summary.evaluated > ran))
        return out

    def timed_publish(*a, **kw):  # noqa: ANN002, ANN003 - the worker imports it at each call
        t0 = time.time()
        wrote = publish(*a, **kw)
        rec["publishes"].append((t0, time.time(), wrote))
        return wrote

    publish = dashboard_mod.publish
    sampler_mod.BioTuneSampler.before_trial, worker_mod._Loop.step = timed_before_trial, timed_step
    dashboard_mod.publish = timed_publish


def _sleep_objective(rec: dict, unit_seconds: float, n_seeds: int, with_slot: bool):
    """Sleeps what the simulation says the trial's work takes: a BioTune trial its slot's seed
    (one seed with seed work units, every seed with whole trials); a RandomSampler trial every
    seed of its genome."""
    from biotune_optuna.search import Proposal
    from biotune_optuna.search.genome import param_names
    from biotune_optuna.study.sampler import slot_record

    seconds = seed_seconds(REAL, unit_seconds)

    def objective(trial: optuna.Trial) -> float:
        genome = tuple(trial.suggest_float(n, 0.0, 1.0) for n in param_names(BLOCKS))
        if with_slot:
            r = slot_record(trial)  # as the real objective does (it needs the fold)
            which = range(n_seeds) if r.seed is None else (r.seed,)
            busy = sum(seconds(Proposal(r.generation, r.slot, r.role, genome), i) for i in which)
        else:
            busy = n_seeds * unit_cost(genome, SHARES[REAL.model]) * unit_seconds
        t0 = time.time()
        time.sleep(busy)
        rec["sleeps"].append((t0, time.time(), busy))
        return value_of_genome(genome)

    return objective


def _biotune_child(url: str, name: str, unit_seconds: float, log: str) -> None:
    from biotune_optuna.worker import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rec: dict = {"steps": [], "claims": [], "sleeps": [], "publishes": []}
    _instrument(rec)
    objective = _sleep_objective(rec, unit_seconds, REAL.seeds, True)
    try:
        run_worker(url, name, objective_factory=lambda config, splits, device: objective, final_protocol=False)
    finally:
        Path(log).write_text(json.dumps(rec))


def _random_child(url: str, name: str, unit_seconds: float, budget: int, log: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rec: dict = {"sleeps": [], "ends": [], "ready": time.time()}
    study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler())
    stop = optuna.study.MaxTrialsCallback(budget, states=None)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rec["ends"].append(time.time())
        stop(study, trial)

    try:
        study.optimize(_sleep_objective(rec, unit_seconds, REAL.seeds, False), callbacks=[callback])
    finally:
        Path(log).write_text(json.dumps(rec))


def _create(url: str, kind: str, name: str, work_unit: str = "seed") -> None:
    if kind == "random":
        optuna.create_study(study_name=name, storage=url, direction="maximize")
        return
    from biotune_optuna.config import DatasetSpec, StudyConfig
    from biotune_optuna.finetune.data import load_dataset
    from biotune_optuna.study.storage import open_storage
    from biotune_optuna.study.studies import create_or_resume

    spec = DatasetSpec("digits", image_size=8)
    splits = load_dataset(spec)
    config = StudyConfig(
        model="resnet50", dataset=spec, blocks=BLOCKS, classes=tuple(splits.classes),
        dataset_fingerprint=splits.fingerprint, dataset_files=splits.files, seeds=(684, 559, 629),
        population_size=REAL.population, n_elites=REAL.elites, n_generations=REAL.generations, sampler_seed=0,
        work_unit=work_unit,
    )
    create_or_resume(open_storage(url, create_tables=True), name, config)


def _run(url: str, kind: str, n: int, unit_seconds: float, folder: Path, work_unit: str = "seed") -> list[dict]:
    name = f"scale-{kind}-{n}-{uuid.uuid4().hex[:6]}"
    _create(url, kind, name, work_unit)
    budget = REAL.population + REAL.generations * (REAL.population + REAL.elites)
    ctx = mp.get_context("spawn")
    logs = [str(folder / f"{name}-{i}.json") for i in range(n)]
    args = [(url, name, unit_seconds, log) if kind == "biotune" else (url, name, unit_seconds, budget, log) for log in logs]
    procs = [ctx.Process(target=_biotune_child if kind == "biotune" else _random_child, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a {kind} worker exited with {p.exitcode}")
    return [json.loads(Path(log).read_text()) for log in logs]


def _biotune_figures(recs: list[dict]) -> tuple[float, float, float, Timing, list[float], list[float]]:
    """(start, end, work, measured Timing, worker start offsets, every before_trial duration).

    A worker starts at its first poll; ``publish_s`` is the median time of the publishes that
    wrote pages (one per closed generation, paid by the worker whose trial closed it; the first
    one also imports the plotting libraries); ``poll_s`` excludes them.
    """
    polls, claims, tells, firsts, ends, work, waits, published = [], [], [], [], [], 0.0, [], []
    for rec in recs:
        pubs = rec["publishes"]
        firsts.append(min(s[0] for s in rec["steps"]))
        published += [p[1] - p[0] for p in pubs if p[2] and p[0] > firsts[-1]]
        for c in rec["claims"]:
            waits.append(c[1] - c[0])
        for t0, t1, ran in rec["steps"]:
            claim = [c for c in rec["claims"] if t0 <= c[0] <= t1]
            sleep = [s for s in rec["sleeps"] if t0 <= s[0] <= t1]
            if not (ran and claim and sleep) or t0 < firsts[-1]:
                continue
            (c0, c1, passes), (_, _, busy) = claim[0], sleep[0]
            polls.append(c0 - t0 - sum(p[1] - p[0] for p in pubs if t0 <= p[0] <= c0))
            if passes == 0:
                claims.append(c1 - c0)
            tells.append(t1 - c1 - busy)
            ends.append(t1)
            work += busy
    start = min(firsts)
    publish_s = statistics.median(published) if published else 0.0
    timing = Timing(statistics.median(polls), statistics.median(claims), statistics.median(tells), publish_s)
    return start, max(ends), work, timing, [f - start for f in firsts], waits


def real_lines(args) -> tuple[list[str], list[Timing]]:  # noqa: ANN001 - scale_out's argparse namespace
    """Run the real cases; return their ``real=`` lines (printed after the simulation's by the
    caller, and to stderr as they come) and the latencies measured in each."""
    from scale_out import line

    db = f"biotune_scale_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host=args.host, user=args.user, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg2://{args.user}@{args.host}/{db}"
    out, timings = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in (int(w) for w in args.real_workers.split(",")):
                recs = _run(url, "random", n, args.unit_seconds, Path(tmp))
                start = min(r["ready"] for r in recs)
                r_wall = max(e for r in recs for e in r["ends"]) - start
                r_util = sum(s[2] for r in recs for s in r["sleeps"]) / (n * r_wall)
                recs = _run(url, "biotune", n, args.unit_seconds, Path(tmp), args.real_unit)
                start, end, work, measured, offsets, waits = _biotune_figures(recs)
                sim = simulate(REAL, n, args.real_unit == "seed", "longest", measured, 0, starts=offsets, ft_seconds=args.unit_seconds)
                waits.sort()
                out.append(line(real="biotune", unit=args.real_unit, workers=n, wall_s=end - start, utilisation=work / (n * (end - start)),
                                sim_wall_s=sim.end, real_vs_sim=(end - start) / sim.end, random_wall_s=r_wall,
                                random_utilisation=r_util, poll_s=measured.poll_s, claim_s=measured.claim_s,
                                tell_s=measured.tell_s, publish_s=measured.publish_s,
                                before_trial_median_s=statistics.median(waits),
                                before_trial_p90_s=waits[int(0.9 * (len(waits) - 1))]))
                print(out[-1], file=sys.stderr, flush=True)
                timings.append(measured)
    finally:
        admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        admin.cursor().execute(f'DROP DATABASE "{db}"')
    return out, timings
