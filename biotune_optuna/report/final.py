"""Final evaluation (spec §8): BioTune's best genome next to the baselines, on the test split.

Every method is trained from the pretrained weights on the full training split with every seed,
early-stopped on the full validation split, and scored once on the held-out test split with its
best-validation weights. Baselines are tuned first under that same protocol (:mod:`.tuning`:
learning rate and own knob chosen on the validation split; ``NO_TUNING`` for the paper's fixed
protocol). Each row says what was chosen and what it cost: for BioTune and the other samplers
the search (:func:`~biotune_optuna.report.comparison.search_cost`), for a baseline the
candidates it did not choose; then the final runs.

Each (configuration, seed) is a work unit (:mod:`.units`) that workers and the report share;
an interrupted report resumes with the units it had not finished. Decided rows are stored in
the study (:mod:`.stored`): a second report shows them without loading data.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields

import optuna

from biotune_optuna.config import BASELINE_LABELS, SAMPLER_LABELS, ConfigError, StudyConfig
from biotune_optuna.finetune.data import Splits
from biotune_optuna.finetune.features import FeatureCache
from biotune_optuna.report import stored, units
from biotune_optuna.report.comparison import EVALUATED, best_genome, search_cost
from biotune_optuna.report.protocol import run_unit
from biotune_optuna.report.tables import to_markdown, write_report
from biotune_optuna.report.tuning import Tuned, TuneSpec, describe, plan_sweep, run_cost
from biotune_optuna.report.units import Unit, seed_results
from biotune_optuna.search import decode
from biotune_optuna.study.studies import search_state

__all__ = ["EVALUATED", "MethodResult", "final_report", "search_summary", "to_markdown", "write_report"]


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


def _row(label: str, key: str, results: Sequence[dict], **extra) -> MethodResult:
    """A table row from one configuration's unit results (one per seed)."""
    return MethodResult(
        label, [r["test_accuracy"] for r in results], 100.0 * results[0]["trainable_fraction"],
        round(sum(r["seconds"] for r in results), 3), key=key, val_accuracies=[r["val_accuracy"] for r in results],
        cost={"final": run_cost(results)}, **extra,
    )


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


@dataclass
class _Method:
    """One row to compute: its stored-result basis, its units' plan and how to build the row."""

    key: str
    label: str
    basis: dict
    decide: Callable[[Mapping[str, dict]], tuple[list[Unit], object | None]]
    build: Callable[[object], MethodResult]
    source: optuna.Study | None = None  # a search's study (its cost is read from it)


def _search_method(key: str, label: str, source: optuna.Study, genome: Sequence[float], config: StudyConfig, round_: int) -> _Method:
    """A search's best genome: one unit per seed, no choice to make."""
    lr_by_block = decode(genome, config.blocks, config.recipe.base_lr).lr_by_block
    todo = [Unit(key, {"lr_by_block": lr_by_block}, seed, round_) for seed in config.seeds]

    def decide(done: Mapping[str, dict]) -> tuple[list[Unit], list[dict] | None]:
        return [u for u in todo if u.ident not in done], seed_results(todo, done)

    def build(results: list[dict]) -> MethodResult:
        row = _row(label, key, results, trainable_blocks=[b for b in config.blocks if b in lr_by_block],
                   chosen={"genome": list(genome), "lr_by_block": lr_by_block})
        return _refresh_search_cost(row, source, config)

    return _Method(key, label, {"genome": list(genome), "seeds": list(config.seeds)}, decide, build, source)


def _baseline_method(key: str, config: StudyConfig, spec: TuneSpec, round_: int) -> _Method:
    """A baseline: its sweep's units (:func:`~biotune_optuna.report.tuning.plan_sweep`), then the row of the chosen candidate."""
    label, base = BASELINE_LABELS[key], config.recipe.base_lr

    def decide(done: Mapping[str, dict]) -> tuple[list[Unit], Tuned | None]:
        return plan_sweep(key, spec, base, config.seeds, done, round_)

    def build(tuned: Tuned) -> MethodResult:
        row = _row(label, f"baseline:{key}", tuned.results, chosen=tuned.chosen, tuning=tuned.trace if spec.enabled else [])
        row.cost["selection"] = tuned.selection
        return row

    return _Method(f"baseline:{key}", label, {**spec.basis(key, base), "seeds": list(config.seeds)}, decide, build)


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
    workers: int = 1,
) -> list[MethodResult]:
    """The final protocol (spec §8) for BioTune's best-ever genome, the best genome of each
    other sampler's study (read as BioTune reads its own: pruned evaluations count with their
    stand-in value), and each baseline (default ``config.baselines``), tuned by ``tuning``.

    Every (configuration, seed) is a work unit in the study's companion ``<study>:final``
    (:mod:`.units`): this process trains units until none is needed, sharing them with any
    worker doing the same (``worker`` does, once the search is finished), and alone does them
    all. Units already finished — by an interrupted report, or by workers — are not retrained.

    Args:
        splits: the dataset, or a function returning it (called only if a unit must be
            trained here: a report whose rows or units are all stored loads no data).
        on_seed: called as ``on_seed(method, seed, best validation accuracy)`` after each unit
            this process trained, but a tuned baseline's candidates (those go to ``on_event``).
        tuning: the baselines' sweep (default :class:`~biotune_optuna.report.tuning.TuneSpec`;
            ``tuning.NO_TUNING`` for the paper's fixed learning rate).
        recompute: retrain every method even when the study holds its result (a new round of
            units: :func:`~biotune_optuna.report.units.new_round`).
        store: keep each row in the study once decided (:mod:`.stored`).
        on_event: called with one log line per stored row reused and per sweep candidate × seed
            trained (``tune · …``).
        workers: threads of this process taking units side by side (``run --workers``), ≥ 1.

    Returns:
        One row per method: BioTune, the samplers (in the order given), the baselines.

    Raises:
        ConfigError: if BioTune's search has not closed its initial population yet.
        UnitFailed: a unit's training raised :data:`~biotune_optuna.report.units.MAX_FAILURES` times.
    """
    spec = TuneSpec() if tuning is None else tuning
    say = on_event or (lambda line: None)
    data = _once(splits if callable(splits) else (lambda: splits))
    genome, _, _ = search_summary(study, config)
    round_ = units.new_round(study) if recompute else units.current_round(study)
    methods = [_search_method("biotune", "BioTune", study, genome, config, round_)]
    for key, other in (sampler_studies or {}).items():
        label = f"{SAMPLER_LABELS[key]} (same budget)"
        methods.append(_search_method(f"sampler:{key}", label, other, best_genome(other, config), config, round_))
    methods += [_baseline_method(key, config, spec, round_) for key in (config.baselines if baselines is None else baselines)]
    rows: dict[str, MethodResult] = {}
    for m in methods:
        if not recompute and (row := stored.load(study, m.key, m.basis)) is not None:
            rows[m.key] = MethodResult.from_dict(row)
            rows[m.key].stored = True
            say(f"{m.label}: stored result (not retrained; --recompute retrains)")
        elif not recompute and stored.has_other(study, m.key):
            say(f"{m.label}: the stored result was computed for another configuration or sweep: recomputing")
    todo = [m for m in methods if m.key not in rows]
    if todo:
        labels, cache = {m.key: m.label for m in todo}, FeatureCache()

        def on_done(unit: Unit, result: dict) -> None:
            if unit.method.startswith("baseline:") and spec.enabled:  # a sweep's candidate
                say(f"tune · {labels[unit.method]} · {describe(unit.params)} · seed {unit.seed} · val {result['val_accuracy']:.4f}")
            elif on_seed is not None:
                on_seed(labels[unit.method], unit.seed, result["val_accuracy"])

        final = units.final_study(study)

        def share(_: int = 0) -> dict:
            return units.work(
                final, lambda d: [u for m in todo for u in m.decide(d)[0]],
                lambda unit: run_unit(unit, config, data(), device, cache), on_done,
            )

        if workers <= 1:
            done = share()
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="final") as pool:
                done = list(pool.map(share, range(workers)))[0]
        for m in todo:
            rows[m.key] = m.build(m.decide(done)[1])
            if store:
                stored.save(study, m.key, m.basis, {k: v for k, v in rows[m.key].to_dict().items() if k != "stored"})
    return [rows[m.key] if m.source is None else _refresh_search_cost(rows[m.key], m.source, config) for m in methods]


def _once(load: Callable[[], Splits]) -> Callable[[], Splits]:
    """``load``, called at most once even from several threads; later calls return its result."""
    lock, box = threading.Lock(), []

    def get() -> Splits:
        with lock:
            if not box:
                box.append(load())
            return box[0]

    return get


def _refresh_search_cost(row: MethodResult, study: optuna.Study, config: StudyConfig) -> MethodResult:
    """Read a search row's cost from its study now (a stored row's search may have gone on)."""
    cost = {**search_cost(study, config), "slots": config.n_evaluations}
    row.search_seconds, row.evaluations = cost["seconds"], cost["evaluations"]
    row.cost["selection"] = cost
    return row
