"""``biotune-optuna status``: where a search stands — generation, slots and units, trials, workers, best."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime, timedelta

import optuna
from rich.console import Console
from rich.table import Table

from biotune_optuna.cli.common import open_study
from biotune_optuna.report.stored import stored_keys
from biotune_optuna.report.units import Unit, current_round, existing_final_study
from biotune_optuna.search import accuracy_of, decode
from biotune_optuna.search.capacity import capacity_text
from biotune_optuna.study import attrs
from biotune_optuna.study.sampler import slot_record
from biotune_optuna.study.tally import interrupted

_STATES = optuna.trial.TrialState


def _outcome(t: optuna.trial.FrozenTrial) -> str:
    """A trial's state as people read it: a FAIL is "failed" (its evaluation raised) or
    "interrupted" (its worker was stopped or died: not the genome's fault)."""
    if t.state == _STATES.FAIL:
        return "interrupted" if interrupted(t) else "failed"
    return t.state.name.lower()


def _counts(items) -> str:  # noqa: ANN001 - iterable of outcome names
    """``"7 complete, 1 interrupted"`` in a fixed order, zero counts left out."""
    counts = Counter(items)
    order = ("complete", "pruned", "running", "failed", "interrupted", "waiting")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k])


def run(args: argparse.Namespace) -> int:
    """``status``: one table, read from the storage alone."""
    study, config = open_study(args)
    sampler = study.sampler
    state = sampler.search_state(study)
    trials = study.get_trials(deepcopy=False)
    # Trials that found the search finished have no slot and trained nothing: not evaluations.
    records = [(t, r) for t in trials if ((r := slot_record(t)) is None or r.state != "finished")]
    table = Table(title=f"{study.study_name}: {config.model} on {config.dataset.name}")
    table.add_column("")
    table.add_column("")
    table.add_row("generation", "finished" if state.finished else f"{state.generation} of {config.n_generations}")
    if not state.finished:
        n_slots = sampler.config.n_slots(state.generation)
        in_open = [t for t, r in records if r is not None and r.generation == state.generation]
        running = sum(1 for t in in_open if t.state == _STATES.RUNNING)
        free = len(sampler.free_units(study))
        skipped = sum(1 for g, _ in state.skipped if g == state.generation)  # elites selecting no block
        not_open = sum(1 for p in state.proposals if p is None)
        units = sampler.units_per_slot  # trials per slot: 1, or one per seed
        done = (n_slots - not_open - skipped) * units - running - free
        parts = [f"{done} done", f"{running} running", f"{free} free"]
        if units == 1:
            parts.append(f"{not_open} not open yet")
            if skipped:
                parts.append(f"{skipped} skipped (elite selects no block: no hill climb)")
            table.add_row("slots", ", ".join(parts) + f" (of {n_slots})")
        else:
            opened = n_slots - not_open - skipped
            table.add_row("units (slot × seed)", ", ".join(parts) + f" (of {opened} open slots × {units} seeds)")
            rest = [f"{opened} open", f"{not_open} not open yet"] + ([f"{skipped} skipped (elite selects no block: no hill climb)"] if skipped else [])
            table.add_row("slots", ", ".join(rest) + f" (of {n_slots})")
        fails = Counter(_outcome(t) for t in in_open if t.state == _STATES.FAIL)
        if fails:
            why = {"failed": "the evaluation raised", "interrupted": "the worker was stopped or died"}
            table.add_row("attempts redone", ", ".join(f"{fails[k]} {k} ({why[k]})" for k in why if fails[k]))
    table.add_row("trials", _counts(_outcome(t) for t, _ in records) or "none yet")
    final = existing_final_study(study)
    final_trials = final.get_trials(deepcopy=False) if final is not None else []
    round_ = current_round(study)
    in_round = [t for t in final_trials if (u := Unit.from_attr(t.user_attrs.get(attrs.FINAL_UNIT))) is not None and u.round == round_]
    if in_round or stored_keys(study):
        rows = ", ".join(stored_keys(study)) or "none yet"
        # A PRUNED unit is a copy queued twice at the same moment and dropped by whoever took it.
        units_text = _counts(_outcome(t) for t in in_round).replace(" pruned", " extra copies dropped") or "none queued"
        table.add_row("final protocol", f"units (configuration × seed): {units_text}; rows decided: {rows}")
    if config.pruner != "none":
        table.add_row("pruner", config.pruner)
    recent = datetime.now() - timedelta(minutes=10)
    alive = {
        t.user_attrs.get(attrs.WORKER)
        for t in [*trials, *final_trials]
        if t.user_attrs.get(attrs.WORKER) and (t.state == _STATES.RUNNING or (t.datetime_complete and t.datetime_complete > recent))
    }
    table.add_row("workers seen (last 10 min)", str(len(alive)))
    table.add_row("workers it can keep busy", capacity_text(sampler.config, sampler.units_per_slot))
    if state.best is not None:
        plan = decode(state.best.genome, config.blocks, config.recipe.base_lr)
        table.add_row("best val accuracy", f"{accuracy_of(state.best.fitness):.4f}")
        table.add_row("best fine-tunes", ", ".join(f"{b} (lr {lr:.2g})" for b, lr in plan.lr_by_block.items()))
    for p in state.populations:
        table.add_row(f"generation {p.generation}", f"best {accuracy_of(p.members[0].fitness):.4f}, diversity {p.diversity:.3f}")
    Console().print(table)
    return 0
