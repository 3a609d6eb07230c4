"""Trial ⇄ training: decode a trial's genome, fine-tune once per seed, report, return fitness.

A pure function of (genome, fold, seeds, config): nothing is shared between trials but the
read-only dataset in memory; best weights stay in memory (DESIGN.md, "Objective and worker").
The value returned is the mean over seeds of the best validation macro accuracy (spec §6; the
study maximises it, the sampler reads Φ = 1 − value).

With a pruner in the study config (``StudyConfig.pruner``), the accuracy after each epoch is
checked with ``trial.should_prune()``. A pruned genome stands in the search for (user attribute
``pruned_value``; the sampler reads Φ = 1 − that):

* the mean best validation accuracy of the seeds it finished, if it was stopped after its first
  seed (the fitness it would have had, estimated from fewer seeds: a later seed stopped after
  one epoch from a fresh model says little about the genome);
* else the best validation accuracy its first seed reached before it was stopped — a lower
  bound of that seed's result, since the best accuracy can only grow with more epochs.

Where it stopped is in user attribute ``pruned_at`` = ``{"seed": 0-based seed index, "epoch":
1-based epoch}``, and ``seed_accuracies`` holds each started seed's best accuracy.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
from collections.abc import Callable, Hashable, Mapping

import optuna

from biotune_optuna.config import StudyConfig
from biotune_optuna.finetune.backbones import Backbone, load_backbone
from biotune_optuna.finetune.data import Splits, fold_split
from biotune_optuna.finetune.features import DEFAULT_MAX_BYTES, FeatureCache
from biotune_optuna.finetune.training import Method, TrainResult, fine_tune, seed_everything
from biotune_optuna.search.genome import decode, param_names
from biotune_optuna.study import attrs
from biotune_optuna.study.sampler import fold_of_generation, slot_record


_BUILD_LOCK = threading.Lock()


def build_backbone(config: StudyConfig, seed: int) -> Backbone:
    """A fresh pretrained model with a new head, seeded as spec §4 says (seed, then build).

    Seeding and building happen under one lock, so threads of one process (``run --workers N``)
    get the same head initialisation as a single worker. Dropout during training still draws
    from torch's process-wide generator: for bit-exact repeats across worker counts, run
    workers as separate processes (``biotune-optuna worker``).
    """
    with _BUILD_LOCK:
        seed_everything(seed)
        return load_backbone(config.model, len(config.classes), weights_file=config.weights_file)


def train_plan(
    config: StudyConfig,
    method: Mapping[str, float] | Callable[[Backbone], Method],
    train,
    val,
    seed: int,
    device: str = "auto",
    on_epoch: Callable[[int, float, float], None] | None = None,
    feature_cache: FeatureCache | None = None,
    data_key: Hashable | None = None,
) -> tuple[Backbone, TrainResult]:
    """One fine-tune of a fresh model.

    Args:
        method: learning rate per fine-tuned block, or a function that builds a
            :class:`~biotune_optuna.training.Method` for the fresh backbone (baselines).
        feature_cache, data_key: reuse frozen-prefix features (see
            :func:`~biotune_optuna.training.fine_tune`); ``data_key`` names ``train``/``val``.

    Returns:
        (the backbone, now holding its best-epoch weights; the training result).
    """
    backbone = build_backbone(config, seed)
    chosen = method(backbone) if callable(method) else method
    return backbone, fine_tune(backbone, chosen, train, val, config.recipe, seed, device, on_epoch, feature_cache, data_key)


def generation_of_number(number: int, population_size: int, n_elites: int) -> int:
    """The BioTune generation a trial number would fall in (P, then P + E per generation):
    trials of Optuna's own samplers on the same budget rotate folds like BioTune's do."""
    if number < population_size:
        return 0
    return 1 + (number - population_size) // (population_size + n_elites)


class Objective:
    """The Optuna objective of a BioTune study.

    Args:
        config: the study's config.
        splits: the loaded dataset (must match ``config.dataset_fingerprint``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…
        on_epoch: optional progress hook ``(trial_number, seed_index, epoch, val_acc)``.
        feature_cache_bytes: memory budget of this worker's frozen-prefix feature cache
            (bytes; 0 turns it off). Trials on the same fold that freeze the same first blocks
            compute those blocks once (:mod:`biotune_optuna.finetune.features`).

    Returns (when called with a trial):
        Mean validation macro accuracy over ``config.seeds``, in [0, 1] — or, for a trial whose
        slot record names one seed (a work unit, ``config.work_unit == "seed"``), that seed's
        best validation macro accuracy (the sampler averages a slot's units); 0.0 without
        training for a genome that fine-tunes no block (spec §3.1). Per-epoch values are
        reported at step ``i · max_epochs + epoch − 1`` for the i-th seed the trial trains.

    Raises:
        ValueError: if ``splits`` is not the dataset the study was made with.
    """

    def __init__(
        self,
        config: StudyConfig,
        splits: Splits,
        device: str = "auto",
        on_epoch: Callable[[int, int, int, float], None] | None = None,
        feature_cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if splits.fingerprint != config.dataset_fingerprint:
            raise ValueError("the dataset differs from the one the study was made with (fingerprint mismatch)")
        self.config = config
        self.splits = splits
        self.device = device
        self.on_epoch = on_epoch
        self.feature_cache = FeatureCache(feature_cache_bytes)

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.config
        genome = [trial.suggest_float(name, 0.0, 1.0) for name in param_names(cfg.blocks)]
        record = slot_record(trial)
        if record is not None and record.claimed:
            fold = record.fold
        else:  # another sampler on the same space: rotate folds by the equivalent generation
            generation = generation_of_number(trial.number, cfg.population_size, cfg.n_elites)
            fold = fold_of_generation(generation, cfg.n_folds)
        plan = decode(genome, cfg.blocks, cfg.recipe.base_lr)
        trial.set_user_attr(attrs.WORKER, f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr(attrs.FOLD, fold)
        trial.set_user_attr(attrs.TRAINABLE_BLOCKS, plan.trainable_blocks)
        trial.set_user_attr(attrs.LR_BY_BLOCK, {b: float(f"{lr:.3g}") for b, lr in plan.lr_by_block.items()})
        if plan.is_empty:
            trial.set_user_attr(attrs.SKIPPED, "no block is fine-tuned (every gene ≤ threshold)")
            trial.set_user_attr(attrs.TRAINABLE_FRACTION, 0.0)
            return 0.0
        if record is not None and record.claimed and record.seed is not None:
            seeds = [(record.seed, cfg.seeds[record.seed])]  # one work unit: this slot's genome with one seed
        else:
            seeds = list(enumerate(cfg.seeds))
        try:
            return self._train(trial, plan, fold, seeds)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(attrs.INTERRUPTED, True)  # the worker was stopped: not the genome's fault
            raise
        except Exception as e:
            trial.set_user_attr(attrs.ERROR, f"{type(e).__name__}: {e}"[:500])
            raise

    def _train(self, trial: optuna.Trial, plan, fold: int, seeds: list[tuple[int, int]]) -> float:  # noqa: ANN001
        """Fine-tune ``plan`` once per (index into config.seeds, seed) of ``seeds``; the mean best accuracy."""
        cfg = self.config
        train, val = fold_split(self.splits, fold, cfg.n_folds)
        accuracies, epochs, best_so_far = [], [], []
        for i, (index, seed) in enumerate(seeds):
            step0 = i * cfg.recipe.max_epochs
            best_so_far.append(0.0)

            def report(epoch: int, acc: float, loss: float, i: int = i, index: int = index, step0: int = step0) -> None:
                trial.report(acc, step0 + epoch - 1)
                best_so_far[i] = max(best_so_far[i], acc)
                if self.on_epoch is not None:
                    self.on_epoch(trial.number, index, epoch, acc)
                last = i == len(seeds) - 1 and epoch == cfg.recipe.max_epochs  # nothing left to save
                if cfg.pruner != "none" and not last and trial.should_prune():
                    value = statistics.fmean(accuracies) if accuracies else best_so_far[0]
                    trial.set_user_attr(attrs.PRUNED_VALUE, round(value, 6))
                    trial.set_user_attr(attrs.PRUNED_AT, {"seed": index, "epoch": epoch})
                    trial.set_user_attr(attrs.SEED_ACCURACIES, [round(a, 6) for a in best_so_far])
                    raise optuna.TrialPruned(f"pruned at seed {index + 1}, epoch {epoch}: best validation accuracy {value:.4f}")

            data_key = (cfg.dataset_fingerprint, fold, cfg.n_folds)
            _, result = train_plan(
                cfg, plan.lr_by_block, train, val, seed, self.device, report, self.feature_cache, data_key
            )
            accuracies.append(result.best_accuracy)
            epochs.append(result.best_epoch)
            trial.set_user_attr(attrs.TRAINABLE_FRACTION, round(result.trainable_fraction, 6))
            trial.set_user_attr(attrs.CACHED_PREFIX, result.cached_prefix)
        trial.set_user_attr(attrs.SEED_ACCURACIES, [round(a, 6) for a in accuracies])
        trial.set_user_attr(attrs.BEST_EPOCHS, epochs)
        return statistics.fmean(accuracies)
