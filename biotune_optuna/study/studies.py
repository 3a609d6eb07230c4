"""Creating, opening and reading a BioTune study: config in, sampler and pruner out.

The whole configuration of a search lives in the study's user attribute
:data:`~biotune_optuna.study.attrs.CONFIG`, so a worker needs nothing but the storage URL and
the study name (DESIGN.md, flow step 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings

import optuna

from biotune_optuna.config import ConfigError, StudyConfig
from biotune_optuna.search import SearchState
from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.sampler import BioTuneSampler

_logger = logging.getLogger(__name__)
#: Config fields that only record the dataset's files (covered by ``dataset_fingerprint``, and
#: kept differently by other versions): not compared when a study is resumed.
_FILE_RECORDS = ("dataset_files", "dataset_sketch")


def make_sampler(config: StudyConfig, **overrides) -> BioTuneSampler:
    """The :class:`BioTuneSampler` of a study with ``config`` (overrides: timing knobs such as
    ``poll_interval`` or ``claim_timeout``)."""
    return BioTuneSampler(
        config.blocks,
        population_size=config.population_size,
        n_elites=config.n_elites,
        n_generations=config.n_generations,
        seed=config.sampler_seed,
        mode=config.mode,
        n_folds=config.n_folds,
        units_per_slot=config.units_per_slot,
        max_retries=config.max_retries,
        **overrides,
    )


def search_state(study: optuna.Study, config: StudyConfig) -> SearchState:
    """Where the BioTune search of ``study`` stands: its finished trials replayed
    (closed generations, the open one's proposals, best-ever genome)."""
    sampler = study.sampler if isinstance(study.sampler, BioTuneSampler) else make_sampler(config)
    return sampler.search_state(study)


def make_pruner(config: StudyConfig, whole_slots: bool = False) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a study with ``config`` (its field ``pruner``). Intermediate values are the validation macro
    accuracy after each epoch, at step ``seed_index · max_epochs + epoch − 1`` when a trial
    fine-tunes with every seed (``work_unit == "trial"``), so trials are compared at the same
    seed and epoch; at step ``epoch − 1`` when a trial fine-tunes with one seed (``"seed"``), so
    one-seed trials are compared at the same epoch.

    * ``"none"``: :class:`optuna.pruners.NopPruner` (every evaluation runs to its own early
      stop, as in the paper).
    * ``"median"``: :class:`optuna.pruners.MedianPruner` — stop a trial whose best accuracy
      so far (over all its seeds) is below the median of earlier trials at the same step;
      not before the initial population's trials (``population_size`` × units per slot) have
      completed (the initial population always runs in full), from the first epoch on.
      ``whole_slots=True`` (a study of another sampler, whose trials always fine-tune with
      every seed): ``population_size`` trials.
    * ``"successive-halving"``: :class:`optuna.pruners.SuccessiveHalvingPruner` (asynchronous
      successive halving, min resource 1, reduction factor 3): rungs at steps 1, 3, 9…, i.e.
      after 2, 4, 10… epochs counted along the evaluation (seed 2's first epoch is step
      ``max_epochs``); a trial goes on past a rung only if it is in the top third of the
      trials that reached it.

    Optuna's HyperbandPruner is not offered: it shows the sampler only the trials of one
    bracket, and BioTune's slot claims need every trial of the study.

    Pruning decisions depend on which trials had finished when they were taken, so with a
    pruner a search no longer gives the same genomes whatever the number of workers.
    """
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.population_size * (1 if whole_slots else config.units_per_slot), n_warmup_steps=0)
    if config.pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_config(study: optuna.Study) -> StudyConfig:
    """The config stored in ``study``.

    Raises:
        ConfigError: if the study is not a BioTune study.
    """
    raw = study.user_attrs.get(attrs.CONFIG)
    if raw is None:
        raise ConfigError(f"study {study.study_name!r} has no BioTune config: it was not made by biotune-optuna")
    return StudyConfig.from_dict(raw)


def create_or_resume(
    storage: optuna.storages.BaseStorage,
    name: str,
    config: StudyConfig,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study with ``config``, or open it if it exists with the same config.

    ``sampler`` defaults to the study's :class:`BioTuneSampler` (others: comparison runs).

    Returns:
        (study, resumed): ``resumed`` is True when the study already existed.

    Raises:
        ConfigError: if a study of that name exists with a different config (it is left as is).
    """
    wanted = json.loads(json.dumps(config.to_dict()))  # as stored: tuples become lists
    pruner = make_pruner(config, whole_slots=sampler is not None and not isinstance(sampler, BioTuneSampler))
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler or make_sampler(config), pruner=pruner)
    except KeyError:
        study = None
    if study is not None:
        stored = study.user_attrs.get(attrs.CONFIG)
        if not isinstance(stored, dict):
            raise ConfigError(
                f"study {name!r} already exists and was not made by biotune-optuna (it has no config); "
                "choose another --study-name"
            )
        with contextlib.suppress(ConfigError):  # fields added since (e.g. pruner) take their defaults
            stored = json.loads(json.dumps(StudyConfig.from_dict(stored).to_dict()))
        if {k: v for k, v in stored.items() if k not in _FILE_RECORDS} != {k: v for k, v in wanted.items() if k not in _FILE_RECORDS}:
            diff = sorted(k for k in set(wanted) | set(stored) if stored.get(k) != wanted.get(k) and k not in _FILE_RECORDS)

            def shown(k: str) -> str:
                old, new = stored.get(k), wanted.get(k)
                simple = all(isinstance(v, (str, int, float, type(None))) for v in (old, new))
                return f"{k}: stored {old!r}, given {new!r}" if simple else k

            raise ConfigError(
                f"study {name!r} already exists with another config (differs in: {'; '.join(map(shown, diff))}); "
                "choose another --study-name or repeat the original options"
            )
        return study, True
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=sampler or make_sampler(config), pruner=pruner
    )
    try:
        study.set_user_attr(attrs.CONFIG, wanted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_macro_accuracy"])
    except Exception:
        optuna.delete_study(study_name=name, storage=storage)  # never leave a half-made study
        raise
    return study, False


def fail_trials_of_gone_processes(study: optuna.Study) -> int:
    """Mark FAIL the RUNNING trials whose owner (user attribute ``worker`` = ``host:pid``,
    recorded with a trial's first heartbeat) ran on this host and no longer exists, so that
    ``run`` resumes a study left by a killed run without waiting for the grace period. Every
    other trial is left to stale-trial reaping (heartbeats): a live worker's trial — on another
    host, or here — is never touched. Their slots are handed out again. Returns how many were
    failed.

    Only for a storage this host alone uses (``run`` on the embedded SQLite default): another
    machine may run a process of the same pid.
    """
    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner_host, _, pid = str(t.user_attrs.get(attrs.WORKER, "")).rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # reaped meanwhile
                _optuna.fail_trial(study, _optuna.trial_id(t))
                n += 1
    if n:
        _logger.warning("%d trial(s) left RUNNING by a stopped process marked FAIL; their slots will be redone", n)
    return n


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user
        return True
    return True
