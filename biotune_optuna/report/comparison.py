"""Optuna's own samplers on BioTune's search space with BioTune's budget.

Does the evolutionary search earn its cost? TPE, CMA-ES, random search and NSGA-II search the
same params (``gene_<block>``, ``threshold``), with the same objective, folds, seeds and number
of evaluations (P + G·(P + E), BioTune's number of slots — an upper bound on BioTune's own
evaluations), each in its own study ``<study>.<sampler>`` of the same storage; their best genomes
then go through the same final protocol as BioTune's (spec §8).

Every search is measured the same way (:func:`search_cost`: evaluations, those that trained
nothing, epochs, wall time) and its best is read the same way (:func:`best_trial`: a pruned
evaluation counts with the value it stands for, as in BioTune's own search).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna

from biotune_optuna.config import SAMPLER_LABELS, StudyConfig
from biotune_optuna.search.genome import genome_from_params
from biotune_optuna.study import attrs
from biotune_optuna.study.studies import create_or_resume
from biotune_optuna.study.attrs import SlotRecord
from biotune_optuna.study.tally import stand_in_value

#: Samplers on offer: key → display name.
SAMPLERS = SAMPLER_LABELS


def make_sampler(key: str, config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``key`` seeded with the study's sampler seed.

    Raises:
        ValueError: on an unknown key (the message lists the valid ones).
    """
    seed = config.sampler_seed
    if key == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if key == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if key == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if key == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population_size, seed=seed)
    raise ValueError(f"unknown sampler {key!r}; choose from {', '.join(SAMPLERS)}")


def study_name_for(name: str, key: str) -> str:
    """Name of the study where sampler ``key`` searches the space of study ``name``."""
    return f"{name}.{key}"


def run_search(
    storage: optuna.storages.BaseStorage,
    name: str,
    config: StudyConfig,
    key: str,
    objective: Callable[[optuna.Trial], float],
    workers: int = 1,
    callbacks: Sequence[Callable] = (),
) -> optuna.Study:
    """Run (or resume) sampler ``key`` until it has BioTune's number of evaluations (complete or pruned).

    Returns:
        The sampler's study.
    """
    study, _ = create_or_resume(storage, study_name_for(name, key), config, sampler=make_sampler(key, config))
    study.set_user_attr(attrs.SAMPLER, key)
    # A pruned trial is an evaluation too (stopped early by the study's pruner).
    complete = len(evaluated_trials(study))
    if complete < config.n_evaluations:
        study.optimize(
            objective, n_trials=config.n_evaluations - complete, n_jobs=workers, callbacks=list(callbacks), catch=(Exception,)
        )
    return study


#: Trial states that used an evaluation (a pruned one stopped early, but it trained).
EVALUATED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def evaluated_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials of a search that used an evaluation: COMPLETE and PRUNED ones, less the
    bookkeeping trials BioTune's sampler prunes once its search is finished (their slot record
    says ``finished``). The same rule for BioTune's study and every other sampler's."""
    out = []
    for t in study.get_trials(deepcopy=False, states=EVALUATED):
        rec = attrs.SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
        if rec is None or rec.claimed:
            out.append(t)
    return out


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best evaluation of a search, reading every trial as BioTune's search does: a PRUNED
    trial counts with the value it stands for (:func:`~biotune_optuna.study.tally.stand_in_value`),
    as BioTune's best-ever genome can be a pruned one. Ties go to the earliest trial.

    Raises:
        ValueError: if no evaluation has a value yet.
    """
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    scored = [(t, v) for t in evaluated_trials(study) if (v := stand_in_value(t)) is not None]
    if not scored:
        raise ValueError(f"study {study.study_name!r} has no evaluated trial with a value yet")
    return max(scored, key=lambda tv: (sign * tv[1], -tv[0].number))[0]


def best_genome(study: optuna.Study, config: StudyConfig) -> tuple[float, ...]:
    """Genome of the study's best evaluation (:func:`best_trial`: pruned trials included, with
    the value they stand for — the rule BioTune's search applies to its own best).

    Raises:
        ValueError: if it has no evaluated trial with a value.
    """
    return genome_from_params(best_trial(study).params, config.blocks)


def wall_time(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    """Seconds from the first trial's start to the last one's end (0 without trials)."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def _evaluation(t: optuna.trial.FrozenTrial) -> tuple:
    """What a trial is a part of: its slot when it is one seed's work unit of a BioTune slot
    (``work_unit == "seed"``: the slot's S trials are one evaluation), else the trial itself."""
    rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
    if rec is not None and rec.claimed and rec.seed is not None:
        return ("slot", rec.key)
    return ("trial", t.number)


def search_cost(study: optuna.Study, config: StudyConfig) -> dict[str, float]:
    """What a search spent, counted the same way for BioTune and every other sampler.

    Returns:
        ``evaluations`` (COMPLETE + PRUNED evaluations, :func:`evaluated_trials`; the seed
        units of one BioTune slot count as one evaluation, as a whole-slot trial does),
        ``trained_nothing`` (evaluations whose genome fine-tunes no block: every gene ≤
        threshold; scored without training), ``pruned``, ``fine_tunes`` (seeds started),
        ``epochs`` (epochs trained, all seeds: one reported validation accuracy each),
        ``seconds`` (wall time, first start to last end) and ``trial_seconds`` (the
        evaluations' durations summed: compute time whatever the number of workers).
    """
    trials = evaluated_trials(study)
    per_seed = max(1, config.recipe.max_epochs)
    return {
        "evaluations": len({_evaluation(t) for t in trials}),
        "trained_nothing": len({_evaluation(t) for t in trials if attrs.SKIPPED in t.user_attrs}),
        "pruned": len({_evaluation(t) for t in trials if t.state == optuna.trial.TrialState.PRUNED}),
        "fine_tunes": sum(len({step // per_seed for step in t.intermediate_values}) for t in trials),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "seconds": round(wall_time(trials), 3),
        "trial_seconds": round(sum(t.duration.total_seconds() for t in trials if t.duration is not None), 3),
    }
