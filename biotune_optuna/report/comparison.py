"""Optuna's own samplers on BioTune's search space with BioTune's budget.

Does the evolutionary search earn its cost? TPE, CMA-ES, random search and NSGA-II search the
same params (``gene_<block>``, ``threshold``), with the same objective, folds, seeds and number
of evaluations (P + G·(P + E)), each in its own study ``<study>.<sampler>`` of the same storage;
their best genomes then go through the same final protocol as BioTune's (spec §8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna

from biotune_optuna.config import SAMPLER_LABELS, StudyConfig
from biotune_optuna.search.genome import genome_from_params
from biotune_optuna.study import attrs
from biotune_optuna.study.studies import create_or_resume

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
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    if complete < config.n_evaluations:
        study.optimize(
            objective, n_trials=config.n_evaluations - complete, n_jobs=workers, callbacks=list(callbacks), catch=(Exception,)
        )
    return study


def best_genome(study: optuna.Study, config: StudyConfig) -> tuple[float, ...]:
    """Genome of the study's best trial.

    Raises:
        ValueError: if it has no complete trial.
    """
    return genome_from_params(study.best_trial.params, config.blocks)
