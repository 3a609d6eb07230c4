"""``biotune-optuna status``: where a search stands — generation, slots, trials, workers, best."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

import optuna
from rich.console import Console
from rich.table import Table

from biotune_optuna.cli.common import open_study
from biotune_optuna.search import accuracy_of, decode
from biotune_optuna.search.capacity import capacity_text
from biotune_optuna.study import attrs
from biotune_optuna.study.sampler import slot_record

_STATES = optuna.trial.TrialState


def run(args: argparse.Namespace) -> int:
    """``status``: one table, read from the storage alone."""
    study, config = open_study(args)
    sampler = study.sampler
    state = sampler.search_state(study)
    trials = study.get_trials(deepcopy=False)
    records = [(t, slot_record(t)) for t in trials]
    # Trials started after the search was finished are pruned at once by the sampler: not evaluations.
    counts = {s.name: sum(1 for t, r in records if t.state == s and (r is None or r.state != "finished")) for s in _STATES}
    table = Table(title=f"{study.study_name}: {config.model} on {config.dataset.name}")
    table.add_column("")
    table.add_column("")
    table.add_row("generation", "finished" if state.finished else f"{state.generation} of {config.n_generations}")
    if not state.finished:
        n_slots = sampler.config.n_slots(state.generation)
        in_open = [(t, r) for t, r in records if r is not None and r.generation == state.generation]
        running = sum(1 for t, _ in in_open if t.state == _STATES.RUNNING)
        failed = sum(1 for t, _ in in_open if t.state == _STATES.FAIL)
        free = len(sampler.free_slots(study))
        done = n_slots - running - free - sum(1 for p in state.proposals if p is None)
        table.add_row("slots", f"{done} done, {running} running, {free} free, {n_slots - done - running - free} not open yet, {failed} failed attempts (of {n_slots})")
    table.add_row("trials", ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n))
    if config.pruner != "none":
        table.add_row("pruner", config.pruner)
    recent = datetime.now() - timedelta(minutes=10)
    alive = {
        t.user_attrs.get(attrs.WORKER)
        for t in trials
        if t.user_attrs.get(attrs.WORKER) and (t.state == _STATES.RUNNING or (t.datetime_complete and t.datetime_complete > recent))
    }
    table.add_row("workers seen (last 10 min)", str(len(alive)))
    table.add_row("workers it can keep busy", capacity_text(sampler.config))
    if state.best is not None:
        plan = decode(state.best.genome, config.blocks, config.recipe.base_lr)
        table.add_row("best val accuracy", f"{accuracy_of(state.best.fitness):.4f}")
        table.add_row("best fine-tunes", ", ".join(f"{b} (lr {lr:.2g})" for b, lr in plan.lr_by_block.items()))
    for p in state.populations:
        table.add_row(f"generation {p.generation}", f"best {accuracy_of(p.members[0].fitness):.4f}, diversity {p.diversity:.3f}")
    Console().print(table)
    return 0
