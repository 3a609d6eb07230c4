"""The final protocol's one step (spec §8): train one configuration with one seed on the full
training split, early-stopped on the full validation split, then score the test split with the
best-validation weights — one work unit of :mod:`.units`.

BioTune's row, the other samplers' rows and every candidate of a baseline's sweep
(:mod:`.tuning`) are trained exactly alike; a sweep chooses on the validation accuracy alone.
"""

from __future__ import annotations

import time

from biotune_optuna.config import StudyConfig
from biotune_optuna.finetune.baselines import make_baseline
from biotune_optuna.finetune.data import Splits
from biotune_optuna.finetune.features import FeatureCache
from biotune_optuna.finetune.training import evaluate, pick_device
from biotune_optuna.objective import train_plan
from biotune_optuna.report.units import Result, Unit


def method_of(unit: Unit):  # noqa: ANN201 - a MethodSpec of objective.train_plan
    """What :func:`~biotune_optuna.objective.train_plan` trains for ``unit``: a search's learning
    rate per fine-tuned block, or a function building the baseline for a fresh backbone.

    Raises:
        ValueError: on a unit of an unknown method.
    """
    if unit.method == "biotune" or unit.method.startswith("sampler:"):
        return {b: float(lr) for b, lr in unit.params["lr_by_block"].items()}
    kind, _, key = unit.method.partition(":")
    if kind != "baseline" or not key:
        raise ValueError(f"not a final-protocol method: {unit.method!r}")
    opts = {k: v for k, v in unit.params.items() if k != "lr"}
    return lambda backbone: make_baseline(key, backbone, float(unit.params["lr"]), **opts)


def run_unit(
    unit: Unit, config: StudyConfig, splits: Splits, device: str = "auto", feature_cache: FeatureCache | None = None
) -> Result:
    """Fine-tune ``unit`` from the pretrained weights with its seed on ``splits.train``,
    early-stopping on ``splits.val`` (spec §4 recipe), and score ``splits.test`` once with the
    best-validation weights (spec §8 step 2).

    Args:
        feature_cache: frozen-prefix features shared with other units of this process that
            freeze the same first blocks (plain per-block learning rates only); the test split
            always runs through the whole model.

    Returns:
        ``{"val_accuracy", "test_accuracy"}`` (macro accuracies in [0, 1]), ``"epochs"``
        (trained, early stopping included), ``"seconds"`` (wall time, training and testing),
        ``"trainable_fraction"`` (fine-tuned parameters, in [0, 1]).
    """
    start = time.perf_counter()
    backbone, result = train_plan(
        config, method_of(unit), splits.train, splits.val, unit.seed, device,
        feature_cache=feature_cache, data_key=(config.dataset_fingerprint, "full"),
    )
    test = evaluate(backbone.model, splits.test, backbone, pick_device(device), config.recipe.eval_batch_size, config.recipe.amp)
    return {
        "val_accuracy": float(result.best_accuracy),
        "test_accuracy": float(test),
        "epochs": len(result.history),
        "seconds": round(time.perf_counter() - start, 3),
        "trainable_fraction": float(result.trainable_fraction),
    }
