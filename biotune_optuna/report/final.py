"""Final evaluation (spec §8): BioTune's best genome next to the baselines, on the test split.

Every method is retrained from the pretrained weights on the full training split with every
seed, early-stopped on the full validation split, and scored once on the held-out test split
with its best-validation weights. The table gives test macro accuracy mean ± std (ddof 0,
spec §8.3), the trainable-parameter percentage, wall time, and evaluations used.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from biotune_optuna.config import BASELINE_LABELS, SAMPLER_LABELS, ConfigError, StudyConfig
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.baselines import make_baseline
from biotune_optuna.finetune.data import Splits
from biotune_optuna.finetune.features import FeatureCache
from biotune_optuna.finetune.training import Method, evaluate, pick_device
from biotune_optuna.objective import train_plan
from biotune_optuna.report.comparison import best_genome
from biotune_optuna.search import decode
from biotune_optuna.study.sampler import slot_record
from biotune_optuna.study.studies import search_state

@dataclass
class MethodResult:
    """One row of the final table.

    Attributes:
        method: display name.
        test_accuracies: test macro accuracy per seed, in [0, 1].
        trainable_percent: fine-tuned parameters, % of all.
        train_seconds: wall time of the final retraining, all seeds.
        search_seconds: wall time of the search that chose the configuration (BioTune only).
        evaluations: search evaluations used (BioTune only).
        trainable_blocks: the blocks fine-tuned.
    """

    method: str
    test_accuracies: list[float]
    trainable_percent: float
    train_seconds: float
    search_seconds: float = 0.0
    evaluations: int = 0
    trainable_blocks: list[str] | None = None

    @property
    def mean(self) -> float:
        """Mean test macro accuracy."""
        return statistics.fmean(self.test_accuracies)

    @property
    def accuracy_text(self) -> str:
        """``"95.12 ± 0.31"`` in percent, or ``"95.12 (1 seed)"`` when there is no spread to show."""
        if len(self.test_accuracies) == 1:
            return f"{100 * self.mean:.2f} (1 seed)"
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"

    @property
    def std(self) -> float:
        """Population standard deviation (ddof 0) of the test macro accuracy."""
        return statistics.pstdev(self.test_accuracies)


def evaluate_method(
    name: str,
    config: StudyConfig,
    splits: Splits,
    method: Mapping[str, float] | Callable[[Backbone], Method],
    device: str = "auto",
    on_seed: Callable[[str, int, float], None] | None = None,
    feature_cache: FeatureCache | None = None,
) -> MethodResult:
    """Retrain one configuration with every seed on the full splits and score the test split.

    Args:
        name: display name of the method.
        method: learning rate per fine-tuned block (others frozen), or a function building a
            baseline :class:`~biotune_optuna.training.Method` for each fresh backbone.
        on_seed: called as ``on_seed(name, seed, test_accuracy)`` after each seed.
        feature_cache: frozen-prefix features shared by the seeds (and by other methods that
            freeze the same first blocks); the test split always runs through the whole model.
    """
    accs, seconds, fraction = [], 0.0, 0.0
    dev = pick_device(device)
    for seed in config.seeds:
        start = time.perf_counter()
        backbone, result = train_plan(
            config, method, splits.train, splits.val, seed, device,
            feature_cache=feature_cache, data_key=(config.dataset_fingerprint, "full"),
        )
        acc = evaluate(backbone.model, splits.test, backbone, dev, config.recipe.eval_batch_size, config.recipe.amp)
        seconds += time.perf_counter() - start
        fraction = result.trainable_fraction
        accs.append(acc)
        if on_seed is not None:
            on_seed(name, seed, acc)
    blocks = [b for b in config.blocks if b in method] if isinstance(method, Mapping) else None
    return MethodResult(name, accs, 100.0 * fraction, seconds, trainable_blocks=blocks)


#: Trial states that used an evaluation (a pruned one stopped early, but it trained).
EVALUATED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def search_summary(study: optuna.Study, config: StudyConfig) -> tuple[tuple[float, ...], float, int]:
    """Best-ever genome of a finished search, its wall time (s) and evaluations used.

    Raises:
        ConfigError: if the search has not closed its initial population yet.
    """
    state = search_state(study, config)
    if state.best is None:
        raise ConfigError(f"study {study.study_name!r} has no closed generation yet: run workers first")
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=EVALUATED)
        if (rec := slot_record(t)) is not None and rec.claimed
    ]
    return state.best.genome, _wall_time(trials), len(trials)


def _wall_time(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    """Seconds from the first trial's start to the last one's end (0 without trials)."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def _search_row(name: str, study: optuna.Study, config: StudyConfig, genome, splits, device, on_seed, cache) -> MethodResult:  # noqa: ANN001
    trials = study.get_trials(deepcopy=False, states=EVALUATED)
    plan = decode(genome, config.blocks, config.recipe.base_lr)
    row = evaluate_method(name, config, splits, plan.lr_by_block, device, on_seed, cache)
    row.search_seconds, row.evaluations = _wall_time(trials), len(trials)
    return row


def final_report(
    study: optuna.Study,
    config: StudyConfig,
    splits: Splits,
    device: str = "auto",
    on_seed: Callable[[str, int, float], None] | None = None,
    baselines: Sequence[str] | None = None,
    sampler_studies: Mapping[str, optuna.Study] | None = None,
) -> list[MethodResult]:
    """The final protocol (spec §8) for BioTune's best-ever genome, the best genome of each
    other sampler's study, and each baseline (default ``config.baselines``)."""
    genome, seconds, n_eval = search_summary(study, config)
    plan = decode(genome, config.blocks, config.recipe.base_lr)
    cache = FeatureCache()
    rows = [evaluate_method("BioTune", config, splits, plan.lr_by_block, device, on_seed, cache)]
    rows[0].search_seconds, rows[0].evaluations = seconds, n_eval
    for key, other in (sampler_studies or {}).items():
        label = f"{SAMPLER_LABELS[key]} (same budget)"
        rows.append(_search_row(label, other, config, best_genome(other, config), splits, device, on_seed, cache))
    base_lr = config.recipe.base_lr
    for key in config.baselines if baselines is None else baselines:
        rows.append(
            evaluate_method(
                BASELINE_LABELS[key], config, splits, lambda bb, key=key: make_baseline(key, bb, base_lr), device, on_seed, cache
            )
        )
    return rows


def to_markdown(rows: list[MethodResult], title: str) -> str:
    """The final table as Markdown."""
    lines = [
        f"# {title}",
        "",
        "| Method | Test macro accuracy (%) | Trainable params (%) | Wall time (s) | Search evaluations |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        wall = f"{r.train_seconds:.0f}" + (f" (+ {r.search_seconds:.0f} search)" if r.search_seconds else "")
        lines.append(
            f"| {r.method} | {r.accuracy_text} | {r.trainable_percent:.2f} | {wall} | "
            f"{r.evaluations or '—'} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[MethodResult], directory: Path, title: str, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``directory`` (atomically: temp file, then rename).

    Returns:
        (JSON path, Markdown path).
    """
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "title": title,
        **(extra or {}),
        "methods": [
            {**asdict(r), "test_accuracy_mean": r.mean, "test_accuracy_std": r.std} for r in rows
        ],
    }
    out = []
    for name, text in (("report.json", json.dumps(payload, indent=2)), ("report.md", to_markdown(rows, title))):
        path = directory / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        out.append(path)
    return out[0], out[1]
