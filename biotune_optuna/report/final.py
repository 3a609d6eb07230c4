"""Final evaluation (spec §8): BioTune's best genome next to the baselines, on the test split.

Every method is trained from the pretrained weights on the full training split with every seed,
early-stopped on the full validation split, and scored once on the held-out test split with its
best-validation weights. Baselines are tuned first under that same protocol (:mod:`.tuning`:
learning rate and own knob chosen on the validation split; ``NO_TUNING`` for the paper's fixed
protocol). Each row says what was chosen and what it cost: for BioTune and the other samplers
the search (:func:`~biotune_optuna.report.comparison.search_cost`), for a baseline the
candidates it did not choose; then the final runs.

Rows are stored in the study as they finish (:mod:`.stored`): a second report shows them
without retraining, an interrupted one resumes with the methods it had not finished.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import optuna

from biotune_optuna.config import BASELINE_LABELS, SAMPLER_LABELS, ConfigError, StudyConfig
from biotune_optuna.finetune.data import Splits
from biotune_optuna.finetune.features import FeatureCache
from biotune_optuna.report import stored
from biotune_optuna.report.comparison import EVALUATED, best_genome, search_cost
from biotune_optuna.report.protocol import MethodSpec, SeedRuns, score_test, train_seeds
from biotune_optuna.report.tables import to_markdown, write_report
from biotune_optuna.report.tuning import TuneSpec, describe, tune_baseline
from biotune_optuna.search import decode
from biotune_optuna.study.studies import search_state

__all__ = ["EVALUATED", "MethodResult", "evaluate_method", "final_report", "search_summary", "to_markdown", "write_report"]


@dataclass
class MethodResult:
    """One row of the final table.

    Attributes:
        method: display name.
        test_accuracies: test macro accuracy per seed, in [0, 1].
        trainable_percent: fine-tuned parameters, % of all.
        train_seconds: wall time of the final runs (training and testing, all seeds).
        search_seconds: wall time of the search that chose the configuration (searches only).
        evaluations: search evaluations used (searches only).
        trainable_blocks: the blocks fine-tuned (per-block configurations only).
        key: ``biotune``, ``sampler:<key>`` or ``baseline:<key>`` (the stored attribute's name).
        val_accuracies: best validation macro accuracy per seed in the final runs, in [0, 1].
        chosen: the configuration chosen — a search's ``genome`` and ``lr_by_block``; a
            baseline's ``lr`` and swept options — never chosen on the test split.
        cost: ``{"selection": …, "final": …}``. ``selection``: for a search
            :func:`~biotune_optuna.report.comparison.search_cost` (plus ``slots``, its budget);
            for a baseline ``{"configs", "fine_tunes", "epochs", "seconds"}`` of the candidates
            not chosen (``configs`` counts all). ``final``: ``{"fine_tunes", "epochs",
            "seconds"}`` of the final runs. Their sum is all the compute the row took.
        tuning: a baseline's candidates in order, ``{"params", "val_accuracy"}`` each.
        stored: True when the row was read from the study, not computed by this call.
    """

    method: str
    test_accuracies: list[float]
    trainable_percent: float
    train_seconds: float
    search_seconds: float = 0.0
    evaluations: int = 0
    trainable_blocks: list[str] | None = None
    key: str = ""
    val_accuracies: list[float] = field(default_factory=list)
    chosen: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    tuning: list[dict] = field(default_factory=list)
    stored: bool = False

    @property
    def mean(self) -> float:
        """Mean test macro accuracy."""
        return statistics.fmean(self.test_accuracies)

    @property
    def std(self) -> float:
        """Population standard deviation (ddof 0) of the test macro accuracy."""
        return statistics.pstdev(self.test_accuracies)

    @property
    def accuracy_text(self) -> str:
        """``"95.12 ± 0.31"`` in percent, or ``"95.12 (1 seed)"`` when there is no spread to show."""
        if len(self.test_accuracies) == 1:
            return f"{100 * self.mean:.2f} (1 seed)"
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"

    def to_dict(self) -> dict:
        """JSON-safe dict with the mean and std (report.json's per-method entry)."""
        return {**asdict(self), "test_accuracy_mean": self.mean, "test_accuracy_std": self.std}

    @classmethod
    def from_dict(cls, d: Mapping) -> MethodResult:
        """Inverse of :meth:`to_dict` (extra keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _tested(
    name: str, key: str, runs: SeedRuns, config: StudyConfig, splits: Splits, device: str,
    on_seed: Callable[[str, int, float], None] | None,
) -> MethodResult:
    """The row of ``runs`` once their models are scored on the test split."""
    hook = None if on_seed is None else (lambda seed, acc: on_seed(name, seed, acc))
    accs = score_test(runs, config, splits, device, hook)
    return MethodResult(
        name, accs, 100.0 * runs.trainable_fraction, runs.seconds, key=key,
        val_accuracies=list(runs.val_accuracies), cost={"final": runs.cost()},
    )


def evaluate_method(
    name: str,
    config: StudyConfig,
    splits: Splits,
    method: MethodSpec,
    device: str = "auto",
    on_seed: Callable[[str, int, float], None] | None = None,
    feature_cache: FeatureCache | None = None,
) -> MethodResult:
    """Retrain one configuration with every seed on the full splits and score the test split.

    Args:
        name: display name of the method.
        method: learning rate per fine-tuned block (others frozen), or a function building a
            baseline :class:`~biotune_optuna.finetune.training.Method` for each fresh backbone.
        on_seed: called as ``on_seed(name, seed, test_accuracy)`` after each seed.
        feature_cache: frozen-prefix features shared by the seeds (and by other methods that
            freeze the same first blocks); the test split always runs through the whole model.
    """
    row = _tested(name, "", train_seeds(config, splits, method, device, feature_cache), config, splits, device, on_seed)
    if isinstance(method, Mapping):
        row.trainable_blocks = [b for b in config.blocks if b in method]
    return row


def search_summary(study: optuna.Study, config: StudyConfig) -> tuple[tuple[float, ...], float, int]:
    """Best-ever genome of a BioTune search, its wall time (s) and evaluations used.

    Raises:
        ConfigError: if the search has not closed its initial population yet.
    """
    state = search_state(study, config)
    if state.best is None:
        raise ConfigError(f"study {study.study_name!r} has no closed generation yet: run workers first")
    cost = search_cost(study, config)
    return state.best.genome, cost["seconds"], cost["evaluations"]


def _search_row(
    name: str, key: str, study: optuna.Study, genome: Sequence[float], config: StudyConfig,
    data: Callable[[], Splits], device: str, on_seed: Callable | None, cache: FeatureCache,
) -> MethodResult:
    """The final protocol for a search's best genome, with the search's cost."""
    plan = decode(genome, config.blocks, config.recipe.base_lr)
    row = evaluate_method(name, config, data(), plan.lr_by_block, device, on_seed, cache)
    row.key, row.chosen = key, {"genome": list(genome), "lr_by_block": plan.lr_by_block}
    return _refresh_search_cost(row, study, config)


def _baseline_row(
    key: str, config: StudyConfig, data: Callable[[], Splits], spec: TuneSpec, device: str,
    on_seed: Callable | None, cache: FeatureCache, on_event: Callable[[str], None],
) -> MethodResult:
    """Tune baseline ``key`` on the validation split, then score the chosen runs on test."""
    label, splits = BASELINE_LABELS[key], data()

    def on_candidate(params: dict, val: float) -> None:
        on_event(f"tune · {label} · {describe(params)} · val {val:.4f}")

    tuned = tune_baseline(key, config, splits, spec, device, cache, on_candidate if spec.enabled else None)
    row = _tested(label, f"baseline:{key}", tuned.runs, config, splits, device, on_seed)
    row.chosen, row.tuning = tuned.chosen, tuned.trace if spec.enabled else []
    row.cost["selection"] = tuned.selection
    return row


def _stored_or_computed(
    study: optuna.Study, key: str, label: str, basis: Mapping, compute: Callable[[], MethodResult],
    recompute: bool, store: bool, on_event: Callable[[str], None],
) -> MethodResult:
    """The row stored in the study for ``basis``, else a computed one (then stored)."""
    if not recompute and (row := stored.load(study, key, basis)) is not None:
        result = MethodResult.from_dict(row)
        result.stored = True
        on_event(f"{result.method}: stored result (not retrained; --recompute retrains)")
        return result
    if not recompute and stored.has_other(study, key):
        on_event(f"{label}: the stored result was computed for another configuration or sweep: recomputing")
    row = compute()
    if store:
        stored.save(study, key, basis, {k: v for k, v in row.to_dict().items() if k != "stored"})
    return row


def final_report(
    study: optuna.Study,
    config: StudyConfig,
    splits: Splits | Callable[[], Splits],
    device: str = "auto",
    on_seed: Callable[[str, int, float], None] | None = None,
    baselines: Sequence[str] | None = None,
    sampler_studies: Mapping[str, optuna.Study] | None = None,
    *,
    tuning: TuneSpec | None = None,
    recompute: bool = False,
    store: bool = True,
    on_event: Callable[[str], None] | None = None,
) -> list[MethodResult]:
    """The final protocol (spec §8) for BioTune's best-ever genome, the best genome of each
    other sampler's study (read as BioTune reads its own: pruned evaluations count with their
    stand-in value), and each baseline (default ``config.baselines``), tuned by ``tuning``.

    Args:
        splits: the dataset, or a function returning it (called only if a method must be
            trained: a report whose rows are all stored loads no data).
        tuning: the baselines' sweep (default :class:`~biotune_optuna.report.tuning.TuneSpec`;
            ``tuning.NO_TUNING`` for the paper's fixed learning rate).
        recompute: retrain every method even when the study holds its result.
        store: keep each row in the study as it finishes (:mod:`.stored`).
        on_event: called with one log line per stored row reused and per tuning candidate.

    Returns:
        One row per method: BioTune, the samplers (in the order given), the baselines.

    Raises:
        ConfigError: if BioTune's search has not closed its initial population yet.
    """
    spec = TuneSpec() if tuning is None else tuning
    say = on_event or (lambda line: None)
    data = splits if callable(splits) else (lambda: splits)
    cache = FeatureCache()
    genome, _, _ = search_summary(study, config)
    seeds = list(config.seeds)
    searches = {"biotune": ("BioTune", study, genome)}
    for key, other in (sampler_studies or {}).items():
        searches[f"sampler:{key}"] = (f"{SAMPLER_LABELS[key]} (same budget)", other, best_genome(other, config))
    rows = []
    for key, (label, source, best) in searches.items():
        compute = functools.partial(_search_row, label, key, source, best, config, data, device, on_seed, cache)
        row = _stored_or_computed(study, key, label, {"genome": list(best), "seeds": seeds}, compute, recompute, store, say)
        rows.append(_refresh_search_cost(row, source, config))
    for key in config.baselines if baselines is None else baselines:
        basis = {**spec.basis(key, config.recipe.base_lr), "seeds": seeds}
        compute = functools.partial(_baseline_row, key, config, data, spec, device, on_seed, cache, say)
        rows.append(_stored_or_computed(study, f"baseline:{key}", BASELINE_LABELS[key], basis, compute, recompute, store, say))
    return rows


def _refresh_search_cost(row: MethodResult, study: optuna.Study, config: StudyConfig) -> MethodResult:
    """Read a search row's cost from its study now (a stored row's search may have gone on)."""
    cost = {**search_cost(study, config), "slots": config.n_evaluations}
    row.search_seconds, row.evaluations = cost["seconds"], cost["evaluations"]
    row.cost["selection"] = cost
    return row
