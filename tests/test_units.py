"""Work units of one (slot, seed): a slot evaluated as one trial per seed (issue 13, item 1).

In-process studies with the closed-form objective of ``tests/_toy.py``: the seed shifts each
unit's value by a known offset, so the slot's fitness (the mean of its units) is known exactly.
"""

import threading

import optuna
import pytest

from _toy import toy_fitness
from biotune_optuna.config import DatasetSpec, StudyConfig
from biotune_optuna.search import GAConfig, search_state
from biotune_optuna.search.capacity import capacity_text, max_busy_workers
from biotune_optuna.search.genome import param_names
from biotune_optuna.study.attrs import SLOT as SLOT_ATTR, SlotRecord
from biotune_optuna.study.sampler import BioTuneSampler, Unit, longest_first

optuna.logging.set_verbosity(optuna.logging.WARNING)
BLOCKS = ["stem", "b1", "b2", "head"]
#: Value offset of each seed index: the mean over three seeds is 0, so a slot's mean value is
#: 1 − toy_fitness(genome), the value a whole-slot trial returns below.
OFFSETS = (-0.02, 0.0, 0.02)
COMPLETE = optuna.trial.TrialState.COMPLETE


def make_sampler(units=3, **kw):
    return BioTuneSampler(BLOCKS, population_size=5, n_elites=2, n_generations=3, seed=5, poll_interval=0.01, units_per_slot=units, **kw)


def record(trial) -> SlotRecord:
    return SlotRecord.from_attr(trial.study._storage.get_trial_system_attrs(trial._trial_id)[SLOT_ATTR])


def per_seed(trial):
    genome = [trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)]
    return 1.0 - toy_fitness(genome) + OFFSETS[record(trial).seed]


def whole_slot(trial):
    return 1.0 - toy_fitness([trial.suggest_float(n, 0, 1) for n in param_names(BLOCKS)])


def units_of(study) -> dict:
    """(generation, slot, seed) → genome of every COMPLETE trial; fails on a unit done twice."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(COMPLETE,)):
        rec = SlotRecord.from_attr(t.system_attrs[SLOT_ATTR])
        assert rec.unit_key not in out, f"unit {rec.unit_key} evaluated twice"
        out[rec.unit_key] = tuple(round(g, 12) for g in rec.genome)
    return out


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_seed_units_give_the_genomes_and_best_of_whole_slot_trials_each_unit_once(n_jobs):
    whole = optuna.create_study(direction="maximize", sampler=make_sampler(units=1))
    whole.optimize(whole_slot)
    sampler = make_sampler()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(per_seed, n_jobs=n_jobs)

    slots = {(g, s): genome for (g, s, _), genome in units_of(whole).items()}
    units = units_of(study)
    assert len(slots) == 26 and len(units) == 3 * 26
    assert {(g, s, u): genome for (g, s), genome in slots.items() for u in range(3)} == units
    a, b = make_sampler(units=1).search_state(whole), sampler.search_state(study)
    assert b.finished and b.resolved == 26
    assert b.best.genome == a.best.genome and b.best.fitness == pytest.approx(a.best.fitness, abs=1e-12)
    assert sampler.progress(study) == (78, 78)


def test_a_slot_resolves_only_when_all_its_units_are_in():
    sampler = make_sampler()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(per_seed, n_trials=5 * 3 - 1)  # the initial population but one unit
    state = sampler.search_state(study)
    assert state.generation == 0 and state.resolved == 4
    [left] = sampler.free_units(study)
    assert isinstance(left, Unit) and left.proposal.generation == 0
    assert sampler.progress(study) == (14, 78)
    study.optimize(per_seed, n_trials=1)
    state = sampler.search_state(study)
    assert state.generation == 1 and state.resolved == 5
    # Generation 0's fitness of each slot is the mean of its three units.
    trials = study.get_trials(deepcopy=False, states=(COMPLETE,))
    for member in state.populations[0].members:
        values = [t.value for t in trials if record_of(t).key == member.origin]
        assert len(values) == 3 and member.fitness == pytest.approx(1.0 - sum(values) / 3, abs=1e-12)


def record_of(t) -> SlotRecord:
    return SlotRecord.from_attr(t.system_attrs[SLOT_ATTR])


def test_a_failing_unit_is_retried_alone_then_counts_worst_in_its_slots_mean():
    attempts: dict = {}
    lock = threading.Lock()

    def flaky(trial):
        value = per_seed(trial)  # suggests first: the trial that finds the search finished is pruned here
        rec = record(trial)
        with lock:
            attempts[rec.unit_key] = attempts.get(rec.unit_key, 0) + 1
        if rec.unit_key == (0, 2, 1):
            raise RuntimeError("always fails")
        if rec.unit_key == (0, 3, 0) and attempts[rec.unit_key] == 1:
            raise RuntimeError("transient")
        return value

    sampler = make_sampler(max_retries=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(flaky, catch=(RuntimeError,))
    assert attempts[(0, 2, 1)] == 2 and attempts[(0, 3, 0)] == 2  # first try + one retry
    assert attempts[(0, 2, 0)] == attempts[(0, 2, 2)] == attempts[(0, 3, 1)] == 1  # the other units once
    state = sampler.search_state(study)
    assert state.finished
    [member] = [m for m in state.populations[0].members if m.origin == (0, 2)]
    done = [t.value for t in study.get_trials(states=(COMPLETE,)) if record_of(t).key == (0, 2)]
    assert len(done) == 2
    assert member.fitness == pytest.approx(((1 - done[0]) + (1 - done[1]) + 1.0) / 3)  # the lost unit counts Φ = 1


def test_longest_first_hands_out_every_seed_of_the_longest_slot_first():
    state = search_state(GAConfig(4, 5, 2, 3, 5), {})
    units = [Unit(p, seed) for p in state.proposals for seed in range(3)]
    order = []
    while units:
        order.append(longest_first(units))
        units.remove(order[-1])
    slots = [u.proposal.slot for u in order]
    assert [u.seed for u in order] == [0, 1, 2] * 5
    assert slots == [s for s in slots[::3] for _ in range(3)] and sorted(set(slots)) == list(range(5))
    whole = list(state.proposals)
    first = []
    while whole:
        first.append(longest_first(whole).slot)
        whole.remove(state.proposals[first[-1]])
    assert slots[::3] == first  # units follow the whole-slot order


def test_capacity_counts_seed_units():
    assert max_busy_workers(GAConfig(6, 10, 3, 10), units_per_slot=3) == 39
    assert max_busy_workers(GAConfig(6, 10, 3, 0), units_per_slot=3) == 30
    assert capacity_text(GAConfig(6, 10, 3, 10), 3).startswith("39 at most (P + E = 10 + 3 slots per generation × 3 seeds")


def make_config(**kw) -> StudyConfig:
    return StudyConfig(
        model="resnet18", dataset=DatasetSpec("digits", image_size=8), blocks=tuple(BLOCKS), classes=("a", "b"),
        dataset_fingerprint="f", population_size=5, n_elites=2, n_generations=3, sampler_seed=5, **kw,
    )


def test_a_stored_config_without_a_work_unit_reads_as_whole_slot_trials():
    stored = make_config().to_dict()
    del stored["work_unit"]
    assert StudyConfig.from_dict(stored).work_unit == "trial"
    assert StudyConfig.from_dict(make_config(work_unit="seed").to_dict()).units_per_slot == 3
    assert make_config(work_unit="trial").units_per_slot == 1
    with pytest.raises(ValueError, match="work unit"):
        make_config(work_unit="epoch")


def test_search_cost_counts_the_units_of_a_slot_as_one_evaluation(tmp_path):
    from biotune_optuna.report.comparison import search_cost
    from biotune_optuna.study.storage import open_storage
    from biotune_optuna.study.studies import create_or_resume, make_sampler as sampler_of

    config = make_config(work_unit="seed")
    study, _ = create_or_resume(open_storage(f"sqlite:///{tmp_path / 's.db'}", create_tables=True), "s", config)
    study.sampler = sampler_of(config, poll_interval=0.01)

    def reported(trial):
        trial.report(0.5, 0)
        trial.report(0.6, 1)
        return per_seed(trial)

    study.optimize(reported)
    cost = search_cost(study, config)
    assert len(study.get_trials(states=(COMPLETE,))) == 78
    assert cost["evaluations"] == 26 and cost["fine_tunes"] == 78 and cost["epochs"] == 156
