"""A cheap deterministic objective that goes through the real worker code path.

Worker processes started by the sharing tests import this module (``objective_factory``): the
genome still comes from BioTuneSampler through ``trial.suggest_float``, only the fine-tune is
replaced by a closed-form fitness so that tests of coordination run in seconds.
"""

from __future__ import annotations

import os
import random
import sys
import time

from biotune_optuna.search.genome import param_names

TARGET_SEED = 3


def toy_fitness(genome) -> float:
    """Φ in [0, 1]: mean squared distance to a fixed target genome."""
    rng = random.Random(TARGET_SEED)
    target = [rng.random() for _ in genome]
    return sum((g - t) ** 2 for g, t in zip(genome, target)) / len(genome)


def factory(config, splits, device):
    delay = float(os.environ.get("TOY_DELAY", "0.05"))
    slow_slot = os.environ.get("TOY_SLOW_SLOT")  # "generation,slot" that takes TOY_SLOW_DELAY s
    # TOY_REPORT=1: report an intermediate value every 0.25 s while sleeping (writes in flight).

    def objective(trial):
        genome = [trial.suggest_float(n, 0.0, 1.0) for n in param_names(config.blocks)]
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker", f"toy:{os.getpid()}")
        pause = delay * (0.5 + random.random())
        rec = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("biotune:slot", {})
        if slow_slot and f"{rec.get('generation')},{rec.get('slot')}" == slow_slot:
            pause = float(os.environ.get("TOY_SLOW_DELAY", "5"))
        try:
            if os.environ.get("TOY_REPORT"):  # write while "training", as the real objective does each epoch
                end, step = time.monotonic() + pause, 0
                while time.monotonic() < end:
                    time.sleep(min(0.25, max(0.0, end - time.monotonic())))
                    trial.report(0.5, step)
                    step += 1
            else:
                time.sleep(pause)
        except KeyboardInterrupt:  # as biotune_optuna.objective.Objective does
            trial.set_user_attr("interrupted", True)
            raise
        return 1.0 - toy_fitness(genome)

    return objective


if __name__ == "__main__":
    import logging

    from biotune_optuna.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(process)d %(message)s")
    url, name = sys.argv[1], sys.argv[2]
    grace = int(os.environ.get("TOY_GRACE", "4"))
    summary = run_worker(url, name, objective_factory=factory, heartbeat_interval=1, grace_period=grace, wait_seconds=float(os.environ.get("TOY_WAIT", "120")), final_protocol=False)
    print(f"worker done: {summary}", flush=True)
