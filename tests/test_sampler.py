"""Generations as slot lists, and BioTuneSampler inside plain Optuna studies."""

import gc
import random
import threading
import time

import optuna
import pytest

from biotune_optuna.search.genome import param_names
from biotune_optuna.search.operators import has_selected_block
from biotune_optuna.study.attrs import PRUNED_VALUE as PRUNED_VALUE_ATTR, SLOT as SLOT_ATTR
from biotune_optuna.study.sampler import BioTuneSampler, fold_of_generation
from biotune_optuna.search import GAConfig, search_state

optuna.logging.set_verbosity(optuna.logging.WARNING)
BLOCKS = ["stem", "b1", "b2", "head"]


def toy_fitness(genome):
    """Φ of a genome: squared distance to a target, in [0, 1]."""
    target = (0.8, 0.3, 0.6, 0.9, 0.4)
    return sum((g - t) ** 2 for g, t in zip(genome, target)) / len(genome)


def replay(config, fitness=toy_fitness):
    """Run a whole search in slot order with a fitness function; return (state, proposals by slot)."""
    results, seen = {}, {}
    while True:
        state = search_state(config, results)
        if state.finished:
            return state, seen
        for p in state.proposals:
            if p is not None and (p.generation, p.slot) not in results:
                seen[(p.generation, p.slot)] = p
                results[(p.generation, p.slot)] = fitness(p.genome)


def test_slot_counts_follow_p_plus_g_times_p_plus_e():
    config = GAConfig(4, population_size=5, n_elites=2, n_generations=3, seed=1)
    assert config.n_evaluations == 5 + 3 * 7 == 26
    state, seen = replay(config)
    assert len(seen) == 26 and state.finished and state.resolved == 26
    assert [len(p.members) for p in state.populations] == [5, 5, 5, 5]
    roles = [seen[(1, s)].role for s in range(7)]
    assert roles == ["hill+", "hill-", "hill+", "hill-", "child", "child", "child"]


@pytest.mark.parametrize("sizes", [dict(population_size=1), dict(n_elites=3, population_size=3), dict(n_generations=-1)])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValueError):
        GAConfig(4, **sizes)


def test_hill_climb_moves_one_selected_gene_both_ways():
    config = GAConfig(4, population_size=4, n_elites=1, n_generations=1, seed=3)
    state, seen = replay(config)
    elite = state.populations[0].members[0]
    plus, minus = seen[(1, 0)], seen[(1, 1)]
    i, delta = plus.move
    assert elite.genome[i] > elite.genome[-1]
    assert plus.genome[i] == pytest.approx(min(1, max(0, elite.genome[i] + delta)))
    assert minus.genome[i] == pytest.approx(min(1, max(0, elite.genome[i] - delta)))
    others = [j for j in range(5) if j != i]
    assert all(plus.genome[j] == minus.genome[j] == elite.genome[j] for j in others)
    assert plus.parents == ((elite.origin),)


def test_accepted_hill_climb_replaces_the_elite_and_best_ever_is_kept():
    config = GAConfig(4, population_size=4, n_elites=1, n_generations=1, seed=3)
    # Make the '+' move the best genome of the whole search.
    plus_genome = None

    def fitness(genome):
        return 0.01 if genome == plus_genome else toy_fitness(genome) + 0.1

    results = {}
    first = search_state(config, results)
    for p in first.proposals:
        results[(0, p.slot)] = fitness(p.genome)
    gen1 = search_state(config, results)
    plus_genome = gen1.proposals[0].genome
    for p in gen1.proposals:
        results[(1, p.slot)] = fitness(p.genome)
    final = search_state(config, results)
    assert final.finished
    assert final.best.genome == plus_genome and final.best.fitness == 0.01
    assert final.populations[-1].members[0].origin == (1, 0)


def test_extinction_is_computed_after_the_initial_population():
    state, _ = replay(GAConfig(4, population_size=5, n_elites=1, n_generations=0, seed=0))
    ext = [m.extinction for m in state.populations[0].members]
    assert ext[0] == 0.0 and ext[-1] == pytest.approx(1.0)


def test_batched_children_come_from_the_closed_population_with_ranked_parents():
    config = GAConfig(4, population_size=6, n_elites=2, n_generations=1, seed=11)
    state, seen = replay(config)
    origins = {m.origin for m in state.populations[0].members}
    children = [seen[(1, s)] for s in range(4, 8)]
    assert all(c.role == "child" and set(c.parents) <= origins and c.parents[0] != c.parents[1] for c in children)


def test_reference_mode_opens_children_one_by_one_after_the_hill_climbs():
    config = GAConfig(4, population_size=5, n_elites=1, n_generations=1, seed=2, mode="reference")
    results = {(0, s): toy_fitness(p.genome) for s, p in enumerate(search_state(config, {}).proposals)}
    gen1 = search_state(config, results)
    assert [p is not None for p in gen1.proposals] == [True, True, False, False, False, False]
    results[(1, 0)] = results[(1, 1)] = 0.5
    gen1 = search_state(config, results)
    assert [p is not None for p in gen1.proposals] == [True, True, True, False, False, False]
    state, seen = replay(config)
    assert state.finished and len(seen) == 5 + 6


def test_fold_rotates_with_the_generation():
    assert [fold_of_generation(g, 2) for g in range(5)] == [0, 0, 1, 0, 1]
    assert [fold_of_generation(g, 1) for g in range(3)] == [0, 0, 0]


def objective_with_jitter(trial):
    genome = [trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]
    time.sleep(random.random() * 0.02)  # completion order differs run to run
    return 1.0 - toy_fitness(genome)


def claimed(study):
    out = {}
    for t in study.get_trials(deepcopy=False):
        rec = t.system_attrs.get(SLOT_ATTR, {})
        if rec.get("state") == "claimed" and t.state == optuna.trial.TrialState.COMPLETE:
            key = (rec["generation"], rec["slot"])
            assert key not in out, f"slot {key} evaluated twice"
            out[key] = tuple(round(g, 12) for g in rec["genome"])
    return out


def make_sampler(**kw):
    return BioTuneSampler(BLOCKS, population_size=5, n_elites=2, n_generations=3, seed=5, poll_interval=0.01, **kw)


def test_same_genomes_with_one_or_two_threads_and_each_slot_once():
    runs = []
    for n_jobs in (1, 2, 2):
        study = optuna.create_study(direction="maximize", sampler=make_sampler())
        study.optimize(objective_with_jitter, n_trials=40, n_jobs=n_jobs)
        runs.append(claimed(study))
        assert make_sampler().search_state(study).finished
    assert len(runs[0]) == 26
    assert runs[0] == runs[1] == runs[2]
    # Same as replaying the pure generation logic directly.
    _, seen = replay(GAConfig(4, 5, 2, 3, 5), fitness=toy_fitness)
    assert {k: tuple(round(g, 12) for g in p.genome) for k, p in seen.items()} == runs[0]


def test_optimize_stops_by_itself_when_the_search_is_finished():
    study = optuna.create_study(direction="maximize", sampler=make_sampler())
    study.optimize(objective_with_jitter)  # no n_trials: the sampler stops the loop
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 26
    assert states[-1] == optuna.trial.TrialState.PRUNED and len(states) == 27


def test_a_failed_slot_is_retried_then_counted_worst():
    bad = {}
    lock = threading.Lock()

    def flaky(trial):
        genome = [trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]
        rec = trial.study._storage.get_trial_system_attrs(trial._trial_id)[SLOT_ATTR]
        key = (rec["generation"], rec["slot"])
        with lock:
            bad[key] = bad.get(key, 0) + 1
        if key == (0, 1) and bad[key] == 1:
            raise RuntimeError("transient failure")
        if key == (1, 6):
            raise RuntimeError("always fails")
        return 1.0 - toy_fitness(genome)

    sampler = make_sampler(max_retries=2)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(flaky, catch=(RuntimeError,))
    assert bad[(0, 1)] == 2  # failed once, then done
    assert bad[(1, 6)] == 3  # first try + 2 retries, then given up
    state = sampler.search_state(study)
    assert state.finished and state.resolved == 26
    fitness_16 = [m.fitness for p in state.populations for m in p.members if m.origin == (1, 6)]
    assert fitness_16 == [1.0]  # children always join the population: ranked last with the worst fitness
    assert len(claimed(study)) == 25


def test_other_samplers_search_the_same_space():
    sampler = make_sampler()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective_with_jitter, n_trials=5)
    assert set(study.best_params) == set(sampler.infer_relative_search_space(study, None))


def test_interrupted_trials_do_not_use_up_the_retry_limit():
    attempts = []

    def stopped_three_times(trial):
        genome = [trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]
        rec = trial.study._storage.get_trial_system_attrs(trial._trial_id)[SLOT_ATTR]
        if (rec["generation"], rec["slot"]) == (0, 1) and len(attempts) < 3:
            attempts.append(trial.number)
            trial.set_user_attr("interrupted", True)  # what Objective records on SIGTERM/SIGINT
            raise KeyboardInterrupt
        return 1.0 - toy_fitness(genome)

    sampler = make_sampler(max_retries=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    while not sampler.search_state(study).finished:
        try:
            study.optimize(stopped_three_times)
        except KeyboardInterrupt:
            pass  # the worker is restarted
    assert len(attempts) == 3
    slots = claimed(study)
    assert (0, 1) in slots and len(slots) == 26  # evaluated on the 4th attempt, not given up
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == attempts


def test_a_pruned_genome_counts_with_the_accuracy_it_reached_and_is_not_redone():
    seen = []

    def pruned_early(trial):
        genome = [trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]
        rec = trial.study._storage.get_trial_system_attrs(trial._trial_id)[SLOT_ATTR]
        key = (rec["generation"], rec["slot"])
        seen.append(key)
        if key == (0, 1):  # as Objective does: the value it stands for, then TrialPruned
            trial.report(0.2, 0)
            trial.set_user_attr(PRUNED_VALUE_ATTR, 0.25)
            raise optuna.TrialPruned()
        if key == (0, 2):  # pruned by another objective: Optuna's value (last intermediate value)
            trial.report(0.4, 0)
            raise optuna.TrialPruned()
        if key == (0, 3):  # pruned before any report: nothing known
            raise optuna.TrialPruned()
        return 1.0 - toy_fitness(genome)

    sampler = make_sampler()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(pruned_early, n_trials=5)
    initial = {m.origin: m.fitness for m in sampler.search_state(study).populations[0].members}
    assert initial[(0, 1)] == pytest.approx(0.75)
    assert initial[(0, 2)] == pytest.approx(0.6)
    assert initial[(0, 3)] == 1.0
    study.optimize(pruned_early)  # to the end of the search
    assert len(seen) == len(set(seen)) == 26  # a pruned slot is resolved, never evaluated again


# ---------------------------------------------------------------- audit bugs (issue 12, item 4)
def prefers_empty(genome):
    """Φ that makes a genome selecting no block the best: such children become elites."""
    return 0.0 if not has_selected_block(genome) else toy_fitness(genome) + 0.5


@pytest.mark.parametrize("mode", ["batched", "reference"])
def test_an_elite_that_selects_no_block_spends_no_hill_climb(mode):
    config = GAConfig(4, population_size=5, n_elites=2, n_generations=3, seed=2, mode=mode)
    state, seen = replay(config, prefers_empty)
    hills = [p for p in seen.values() if p.role in ("hill+", "hill-")]
    assert hills and all(p.move is not None for p in hills)  # each moves a gene its elite selects
    assert len(seen) == 20  # seed 2 makes empty children elites: 3 of them skip 2 hill climbs each
    assert not set(state.skipped) & set(seen)  # never proposed
    assert len(seen) == config.n_evaluations - len(state.skipped) and state.resolved == config.n_evaluations
    # The skipped elites are kept unchanged (a skipped hill climb reverts).
    for g, s in state.skipped[::2]:
        elite = state.populations[g - 1].members[s // 2]
        assert elite in [m for m in state.populations[g].members if m.origin == elite.origin]


def test_skipped_hill_climbs_cost_no_trial_in_a_study():
    sampler = BioTuneSampler(BLOCKS, population_size=5, n_elites=2, n_generations=3, seed=2, poll_interval=0.01)

    def objective(trial):
        return 1.0 - prefers_empty([trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)])

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective)  # stops by itself
    state = sampler.search_state(study)
    complete = claimed(study)
    assert len(complete) == 20  # not 26: three elites select no block
    assert state.finished and state.resolved == 26 and len(state.skipped) == 6
    _, seen = replay(GAConfig(4, 5, 2, 3, 2), prefers_empty)
    assert complete == {k: tuple(round(g, 12) for g in p.genome) for k, p in seen.items()}


def test_a_reused_sampler_searches_each_study_from_its_own_initial_population():
    sampler = make_sampler()
    first = optuna.create_study(direction="maximize", sampler=sampler)
    first.optimize(objective_with_jitter)

    def other_objective(trial):  # a different landscape: generations after the first differ
        return 1.0 - prefers_empty([trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)])

    second = optuna.create_study(direction="maximize", sampler=sampler)
    second.optimize(other_objective)
    fresh = optuna.create_study(direction="maximize", sampler=make_sampler())
    fresh.optimize(other_objective)
    assert claimed(second) == claimed(fresh)
    assert {k for k in claimed(second) if k[0] == 0} == {(0, s) for s in range(5)}
    del first, second
    gc.collect()  # a new in-memory storage may now get a collected one's id: no stale state either
    third = optuna.create_study(direction="maximize", sampler=sampler)
    third.optimize(other_objective)
    assert claimed(third) == claimed(fresh)


def test_a_failed_slot_in_a_minimised_study_counts_as_the_worst():
    def loss(trial):  # losses > 1: a failed slot counted with Φ = 1.0 would be the best-ever
        genome = [trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]
        rec = trial.study._storage.get_trial_system_attrs(trial._trial_id)[SLOT_ATTR]
        if (rec["generation"], rec["slot"]) == (0, 1):
            raise RuntimeError("always fails")
        return 2.0 + toy_fitness(genome)

    sampler = make_sampler(max_retries=0)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(loss, catch=(RuntimeError,))
    state = sampler.search_state(study)
    assert state.finished
    initial = state.populations[0].members
    assert initial[-1].origin == (0, 1) and initial[-1].fitness == float("inf")
    assert state.best.origin != (0, 1) and state.best.fitness == pytest.approx(study.best_value)
    extinctions = [m.extinction for p in state.populations for m in p.members]
    assert all(0.0 <= e <= 1.0 for e in extinctions)  # no NaN from the infinite fitness


def test_status_counts_skipped_hill_climbs_apart_from_done_slots(tmp_path, capsys, monkeypatch):
    import argparse

    from biotune_optuna.cli import status
    from biotune_optuna.config import DatasetSpec, StudyConfig
    from biotune_optuna.study.storage import open_storage
    from biotune_optuna.study.studies import create_or_resume

    config = StudyConfig(
        model="resnet18", dataset=DatasetSpec("digits", image_size=8), blocks=tuple(BLOCKS), classes=("a", "b"),
        dataset_fingerprint="f", population_size=5, n_elites=2, n_generations=3, sampler_seed=2,
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, _ = create_or_resume(open_storage(url, create_tables=True), "s", config)
    study.sampler = BioTuneSampler(BLOCKS, population_size=5, n_elites=2, n_generations=3, seed=2, poll_interval=0.01)
    study.optimize(lambda t: 1.0 - prefers_empty([t.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]), n_trials=12)
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    assert status.run(argparse.Namespace(storage=url, study_name="s")) == 0
    out = " ".join(capsys.readouterr().out.split())
    # Generation 2 is open: elite 1 selects no block, so its two hill climbs are skipped, not done.
    assert "0 done, 0 running, 5 free, 0 not open yet, 2 skipped" in out
