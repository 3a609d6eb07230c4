"""The final protocol's two halves (spec §8), shared by BioTune's row, the other samplers' rows
and the tuned baselines: train one configuration with every seed on the full splits, then
score the test split with each seed's best-validation weights.

Kept apart so a baseline's learning-rate sweep (:mod:`.tuning`) can train every candidate
exactly as the final protocol does, choose on the validation split, and score only the chosen
candidate's already-trained models on the test split — no retraining, no test peeking.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from biotune_optuna.config import StudyConfig
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.data import Splits
from biotune_optuna.finetune.features import FeatureCache
from biotune_optuna.finetune.training import Method, evaluate, pick_device
from biotune_optuna.objective import train_plan

#: What a configuration is: learning rate per fine-tuned block (others frozen), or a function
#: that builds a baseline :class:`~biotune_optuna.finetune.training.Method` for a fresh backbone.
MethodSpec = Mapping[str, float] | Callable[[Backbone], Method]


@dataclass
class SeedRuns:
    """One configuration trained once per seed on the full training split, early-stopped on the
    full validation split (spec §8 step 2), not yet tested.

    Attributes:
        seeds: the seeds, in order.
        backbones: each seed's model holding its best-validation weights (same order).
        val_accuracies: best validation macro accuracy per seed, in [0, 1].
        epochs: epochs trained per seed (early stopping included).
        seconds: wall time of the training, all seeds.
        trainable_fraction: fraction of parameters fine-tuned, in [0, 1].
    """

    seeds: list[int]
    backbones: list[Backbone] = field(repr=False)
    val_accuracies: list[float]
    epochs: list[int]
    seconds: float
    trainable_fraction: float

    @property
    def val_mean(self) -> float:
        """Mean best validation macro accuracy over the seeds: what a sweep chooses by."""
        return statistics.fmean(self.val_accuracies)

    def cost(self) -> dict[str, float]:
        """``{"fine_tunes", "epochs", "seconds"}`` of these runs."""
        return {"fine_tunes": len(self.seeds), "epochs": sum(self.epochs), "seconds": round(self.seconds, 3)}


def train_seeds(
    config: StudyConfig,
    splits: Splits,
    method: MethodSpec,
    device: str = "auto",
    feature_cache: FeatureCache | None = None,
) -> SeedRuns:
    """Train ``method`` from the pretrained weights once per seed of ``config.seeds`` on
    ``splits.train``, early-stopping on ``splits.val`` (spec §4 recipe). The test split is not
    touched.

    Args:
        feature_cache: frozen-prefix features shared by the seeds and by other configurations
            that freeze the same first blocks (plain per-block learning rates only).
    """
    runs = SeedRuns(list(config.seeds), [], [], [], 0.0, 0.0)
    for seed in config.seeds:
        start = time.perf_counter()
        backbone, result = train_plan(
            config, method, splits.train, splits.val, seed, device,
            feature_cache=feature_cache, data_key=(config.dataset_fingerprint, "full"),
        )
        runs.seconds += time.perf_counter() - start
        runs.backbones.append(backbone)
        runs.val_accuracies.append(result.best_accuracy)
        runs.epochs.append(len(result.history))
        runs.trainable_fraction = result.trainable_fraction
    return runs


def score_test(
    runs: SeedRuns,
    config: StudyConfig,
    splits: Splits,
    device: str = "auto",
    on_seed: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Test macro accuracy of each seed's best-validation model, in [0, 1] (spec §8 step 2).

    Adds the time spent to ``runs.seconds`` and frees the models afterwards.

    Args:
        on_seed: called as ``on_seed(seed, test_accuracy)`` after each seed.
    """
    dev = pick_device(device)
    accs = []
    for seed, backbone in zip(runs.seeds, runs.backbones):
        start = time.perf_counter()
        acc = evaluate(backbone.model, splits.test, backbone, dev, config.recipe.eval_batch_size, config.recipe.amp)
        runs.seconds += time.perf_counter() - start
        accs.append(acc)
        if on_seed is not None:
            on_seed(seed, acc)
    runs.backbones.clear()
    return accs
