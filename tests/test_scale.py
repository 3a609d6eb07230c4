"""Longest work first in the slot claims, and how many workers a search keeps busy (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest

from biotune_optuna.config import DatasetSpec, StudyConfig
from biotune_optuna.search import GAConfig, search_state
from biotune_optuna.search.capacity import backprop_span, capacity_text, max_busy_workers, work_key
from biotune_optuna.search.generations import Proposal
from biotune_optuna.search.genome import param_names
from biotune_optuna.study.attrs import SLOT as SLOT_ATTR
from biotune_optuna.study.sampler import BioTuneSampler, longest_first
from biotune_optuna.study.storage import open_storage
from biotune_optuna.study.studies import create_or_resume

optuna.logging.set_verbosity(optuna.logging.WARNING)
BLOCKS = ["stem", "b1", "b2", "b3", "b4", "head"]


def fitness(genome) -> float:
    return sum((g - 0.6) ** 2 for g in genome) / len(genome)


def test_work_key_is_the_backprop_span_then_the_trained_blocks():
    #        stem  b1   b2   b3   head  threshold
    assert backprop_span([0.9, 0.1, 0.1, 0.1, 0.9, 0.5]) == 5  # the stem trains: backward to the input
    assert backprop_span([0.1, 0.1, 0.9, 0.1, 0.1, 0.5]) == 3  # from b2 on
    assert backprop_span([0.1, 0.1, 0.1, 0.1, 0.9, 0.5]) == 1  # the head only
    assert backprop_span([0.1, 0.1, 0.1, 0.1, 0.1, 0.5]) == 0  # nothing trains
    assert work_key([0.9, 0.9, 0.9, 0.9, 0.9, 0.5]) == (5, 5)
    assert work_key([0.9, 0.1, 0.1, 0.1, 0.9, 0.5]) == (5, 2)
    with pytest.raises(ValueError):
        backprop_span([0.5])


def test_longest_first_takes_the_largest_work_key_and_the_lowest_slot_on_ties():
    def p(slot, genome):
        return Proposal(1, slot, "child", tuple(genome))

    head_only, from_b2, stem_and_head, stem_and_b1 = (
        p(0, [0.1, 0.1, 0.1, 0.1, 0.9, 0.5]),
        p(1, [0.1, 0.1, 0.9, 0.9, 0.9, 0.5]),
        p(2, [0.9, 0.1, 0.1, 0.1, 0.9, 0.5]),
        p(3, [0.9, 0.9, 0.1, 0.1, 0.1, 0.5]),
    )
    assert longest_first([head_only, from_b2, stem_and_head, stem_and_b1]) is stem_and_head  # (5, 2) twice: slot 2 < 3
    assert longest_first([head_only, from_b2]) is from_b2
    assert longest_first([head_only]) is head_only


def claims_in_order(study):
    """(generation, slot, genome) of the COMPLETE trials, by trial number."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rec = t.system_attrs[SLOT_ATTR]
        out.append((rec["generation"], rec["slot"], tuple(rec["genome"])))
    return out


def test_trials_claim_the_longest_slot_first_and_every_slot_keeps_its_genome():
    config = GAConfig(len(BLOCKS), population_size=8, n_elites=2, n_generations=3, seed=11)
    sampler = BioTuneSampler(BLOCKS, population_size=8, n_elites=2, n_generations=3, seed=11, poll_interval=0.01)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(lambda t: fitness([t.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]))
    claims = claims_in_order(study)
    # Slot → genome exactly as a replay in slot order gives it.
    results, expected = {}, {}
    while not (state := search_state(config, results)).finished:
        for prop in state.proposals:
            expected[(prop.generation, prop.slot)] = prop.genome
            results[(prop.generation, prop.slot)] = fitness(prop.genome)
    # Every slot is claimed once, but those of an elite that selects no block (never proposed).
    assert len(claims) == len(expected) == config.n_evaluations - len(state.skipped)
    assert {(g, s): genome for g, s, genome in claims} == expected
    # Within each generation (one worker: all its slots free at its first claim), longest first.
    reordered = False
    for generation in range(config.n_generations + 1):
        slots = [(s, genome) for g, s, genome in claims if g == generation]
        want = sorted(slots, key=lambda sg: (-work_key(sg[1])[0], -work_key(sg[1])[1], sg[0]))
        assert [s for s, _ in slots] == [s for s, _ in want]
        reordered |= [s for s, _ in slots] != sorted(s for s, _ in slots)
    assert reordered, "the test needs a generation whose longest-first order is not the slot order"


def test_workers_kept_busy_follow_the_open_slots():
    assert max_busy_workers(GAConfig(6, 10, 3, 10)) == 13
    assert max_busy_workers(GAConfig(6, 10, 3, 0)) == 10
    assert max_busy_workers(GAConfig(10, 5, 1, 2)) == 6
    assert max_busy_workers(GAConfig(6, 10, 3, 10, mode="reference")) == 10
    assert max_busy_workers(GAConfig(6, 4, 3, 2, mode="reference")) == 6
    assert capacity_text(GAConfig(6, 10, 3, 10)).startswith("13 at most (P + E = 10 + 3")


def test_status_prints_how_many_workers_the_search_keeps_busy(tmp_path):
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = DatasetSpec("digits", image_size=8)
    config = StudyConfig(
        model="resnet18", dataset=spec, blocks=tuple(BLOCKS), classes=tuple(str(i) for i in range(10)),
        dataset_fingerprint="x", seeds=(684,), population_size=7, n_elites=2, n_generations=2,
    )
    create_or_resume(open_storage(storage_url, create_tables=True), "busy", config)
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "biotune_optuna", "status", "--storage", storage_url, "--study-name", "busy"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "workers it can keep busy" in proc.stdout and "9 at most (P + E = 7 + 2" in proc.stdout
