"""Time per ask of BioTuneSampler with 100, 1,000 and 10,000 finished trials in PostgreSQL,
next to TPESampler and NSGAIISampler on the same history, in the same run.

Each sampler gets its own study in a throwaway database on the server (default: the local
PostgreSQL, user postgres). Histories are written straight into Optuna's tables in bulk (the
public API needs ~50 ms a trial); the BioTune history is a real search — every trial holds the
slot the sampler would have handed out, with a toy fitness — and NSGA-II trials carry their
generation (population 50). At each size a fresh study object (as a newly started worker)
asks twice to warm up (the first ask loads the whole history once), then ``--asks`` timed asks
follow, each told at once (untimed); the median is reported.

Target (issue 5): BioTune at 10,000 trials ≤ 1.5× BioTune at 100, and below NSGA-II at 10,000.

    .venv/bin/python bench/sampler_latency.py [--sizes 100,1000,10000] [--asks 15]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta

import optuna
import psycopg2
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.storages._rdb import models

from biotune_optuna.search.genome import param_names, params_from_genome
from biotune_optuna.study.attrs import SLOT as SLOT_ATTR
from biotune_optuna.study.sampler import BioTuneSampler, fold_of_generation
from biotune_optuna.search import GAConfig, search_state

BLOCKS = ("stem", "stage0", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "head_conv", "classifier")
NAMES = param_names(BLOCKS)
DIST = FloatDistribution(0.0, 1.0)
NSGA_POPULATION = 50


def toy_value(genome) -> float:  # noqa: ANN001
    """Accuracy-like value in [0, 1] of a genome: 1 − mean squared distance to a fixed target."""
    target = random.Random(3)
    return 1.0 - sum((g - target.random()) ** 2 for g in genome) / len(genome)


class History:
    """The finished trials of one study, written in bulk."""

    def __init__(self, engine: sa.Engine, study_id: int, kind: str, config: GAConfig) -> None:
        self.engine, self.study_id, self.kind, self.config = engine, study_id, kind, config
        self.results: dict[tuple[int, int], float] = {}
        self.cache: dict = {}
        self.rng = random.Random(kind)

    def count(self) -> int:
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(models.TrialModel.__table__)
                             .where(models.TrialModel.__table__.c.study_id == self.study_id)).scalar_one()

    def _next(self) -> tuple[list[float], dict]:
        if self.kind != "biotune":
            genome = [self.rng.random() for _ in NAMES]
            return genome, {}
        state = search_state(self.config, self.results, self.cache)
        free = [p for p in state.proposals if p is not None and (p.generation, p.slot) not in self.results]
        p = free[0]
        record = {"state": "claimed", "generation": p.generation, "slot": p.slot, "role": p.role,
                  "parents": [list(x) for x in p.parents], "genome": list(p.genome),
                  "fold": fold_of_generation(p.generation, 1)}
        self.results[(p.generation, p.slot)] = 1.0 - toy_value(p.genome)
        return list(p.genome), {SLOT_ATTR: record}

    def grow_to(self, n: int) -> None:
        """Append finished trials until the study holds ``n``."""
        start = self.count()
        t = models.TrialModel.__table__
        now = datetime(2026, 1, 1)
        rows, params, values, attrs = [], [], [], []
        for number in range(start, n):
            genome, system = self._next()
            if self.kind == "nsga2":
                system = {"NSGAIISampler:generation": number // NSGA_POPULATION}
            rows.append({"number": number, "study_id": self.study_id, "state": "COMPLETE",
                         "datetime_start": now + timedelta(seconds=number), "datetime_complete": now + timedelta(seconds=number + 1)})
            values.append(toy_value(genome))
            params.append(params_from_genome(genome, BLOCKS))
            attrs.append(system)
        if not rows:
            return
        with self.engine.begin() as c:
            ids = c.execute(t.insert().returning(t.c.trial_id, sort_by_parameter_order=True), rows).scalars().all()
            dist = optuna.distributions.distribution_to_json(DIST)
            c.execute(models.TrialParamModel.__table__.insert(), [
                {"trial_id": i, "param_name": k, "param_value": v, "distribution_json": dist}
                for i, p in zip(ids, params) for k, v in p.items()
            ])
            c.execute(models.TrialValueModel.__table__.insert(), [
                {"trial_id": i, "objective": 0, "value": v, "value_type": "FINITE"} for i, v in zip(ids, values)
            ])
            system = [{"trial_id": i, "key": k, "value_json": json.dumps(v)} for i, a in zip(ids, attrs) for k, v in a.items()]
            if system:
                c.execute(models.TrialSystemAttributeModel.__table__.insert(), system)

    def told(self, trial: optuna.trial.FrozenTrial | optuna.Trial, value: float) -> None:
        rec = trial.study._storage.get_trial_system_attrs(trial._trial_id).get(SLOT_ATTR) if self.kind == "biotune" else None
        if rec and rec.get("state") == "claimed":
            self.results[(rec["generation"], rec["slot"])] = 1.0 - value


def make_sampler(kind: str, config: GAConfig) -> optuna.samplers.BaseSampler:
    if kind == "biotune":
        return BioTuneSampler(BLOCKS, population_size=config.population_size, n_elites=config.n_elites,
                              n_generations=config.n_generations, seed=config.seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=0)
    return optuna.samplers.NSGAIISampler(population_size=NSGA_POPULATION, seed=0)


def measure(url: str, name: str, kind: str, config: GAConfig, history: History, asks: int) -> tuple[float, float]:
    """(first ask of a new worker, median steady-state ask), seconds."""
    study = optuna.load_study(study_name=name, storage=url, sampler=make_sampler(kind, config))
    times = []
    for i in range(asks + 2):
        start = time.perf_counter()
        trial = study.ask()
        for n in NAMES:  # what a worker's objective does first; part of handing out the genome
            trial.suggest_float(n, 0.0, 1.0)
        times.append(time.perf_counter() - start)
        value = toy_value([trial.params[n] for n in NAMES])
        history.told(trial, value)
        study.tell(trial, value)
    return times[0], statistics.median(times[2:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432",
                    help="PostgreSQL server URL without a database; a throwaway database is made and dropped")
    ap.add_argument("--sizes", default="100,1000,10000", help="finished trials before the timed asks")
    ap.add_argument("--asks", type=int, default=15, help="timed asks per sampler and size")
    ap.add_argument("--samplers", default="biotune,tpe,nsga2")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    kinds = args.samplers.split(",")
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    db = f"biotune_bench_{uuid.uuid4().hex[:8]}"
    u = sa.engine.make_url(args.server)
    admin = psycopg2.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    url = u.set(database=db).render_as_string(hide_password=False)
    try:
        per_gen = 10 + 3
        config = GAConfig(len(BLOCKS), 10, 3, math.ceil((sizes[-1] + 4 * (args.asks + 2)) / per_gen) + 1, seed=0)
        storage = optuna.storages.RDBStorage(url)
        engine = storage.engine
        histories = {}
        for kind in kinds:
            optuna.create_study(study_name=kind, storage=storage, direction="maximize")
            histories[kind] = History(engine, storage.get_study_id_from_name(kind), kind, config)
        table: dict[tuple[str, int], tuple[float, float]] = {}
        print(f"PostgreSQL {u.host}, BioTune P=10 E=3 G={config.n_generations} ({len(NAMES)} genes); "
              f"{args.asks} timed asks each", flush=True)
        for size in sizes:
            for kind in kinds:
                start = time.perf_counter()
                histories[kind].grow_to(size)
                filled = time.perf_counter() - start
                table[kind, size] = measure(url, kind, kind, config, histories[kind], args.asks)
                first, median = table[kind, size]
                print(f"  {kind:8s} {size:6d} finished trials: ask {1000 * median:8.1f} ms median "
                      f"(first ask of a new worker {1000 * first:8.1f} ms; history written in {filled:.1f} s)", flush=True)
        print()
        print(f"{'sampler':10s}" + "".join(f"{s:>12d}" for s in sizes) + "   (median ms per ask)")
        for kind in kinds:
            print(f"{kind:10s}" + "".join(f"{1000 * table[kind, s][1]:12.1f}" for s in sizes))
        if "biotune" in kinds:
            growth = table["biotune", sizes[-1]][1] / table["biotune", sizes[0]][1]
            print(f"\nBioTune ask at {sizes[-1]} / at {sizes[0]}: {growth:.2f}×  (target ≤ 1.5×)")
            for other in ("nsga2", "tpe"):
                if other in kinds:
                    ratio = table["biotune", sizes[-1]][1] / table[other, sizes[-1]][1]
                    print(f"BioTune / {other} at {sizes[-1]}: {ratio:.2f}×" + ("  (target < 1)" if other == "nsga2" else ""))
        storage.engine.dispose()
    finally:
        cur = admin.cursor()
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
