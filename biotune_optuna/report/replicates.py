"""Replicated comparisons: the whole pipeline repeated R times, BioTune read paired against the rest.

Replicate r (0 ≤ r < R) draws its data with seed ``data_seed + r`` (the stratified subsamples and
carved validation split of :func:`~biotune_optuna.finetune.data.load_dataset`, hence its folds
too), searches with sampler seed ``sampler_seed + r``, runs BioTune's search and each chosen
Optuna sampler's search on the same budget (:func:`~biotune_optuna.report.comparison.run_search`),
then the final protocol (:func:`~biotune_optuna.report.final.final_report`) for BioTune's best
genome, each sampler's best genome and each baseline, with every retraining seed.

Each replicate is its own study: the replicate whose seeds are the study's own *is* that study;
the others are ``<study>.data<D>.sampler<S>`` (and ``<that>.<sampler>`` for the other samplers)
in the same storage, so a rerun resumes every search where it stopped. When a replicate's final
protocol is done its raw results are written at once to ``replicate-<r>.json`` in the results
folder; a rerun with the same request (samplers, baselines, final seeds, seeds of the plan) reads
that file instead of redoing the replicate. The statistics live in :mod:`.paired`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from biotune_optuna.config import MAX_LISTED_FILES, SAMPLER_LABELS, StudyConfig, check_int
from biotune_optuna.finetune.data import Splits, load_dataset
from biotune_optuna.finetune.features import DEFAULT_MAX_BYTES
from biotune_optuna.objective import Objective
from biotune_optuna.report import paired
from biotune_optuna.report.comparison import run_search
from biotune_optuna.report.final import final_report
from biotune_optuna.search import decode
from biotune_optuna.study import attrs
from biotune_optuna.study.sampler import BioTuneSampler
from biotune_optuna.study.studies import create_or_resume, fail_trials_of_gone_processes, make_sampler, search_state
from biotune_optuna.worker import describe_pruned

Log = Callable[[str], None]


@dataclass(frozen=True)
class ReplicatePlan:
    """Where replicate ``index`` runs: its study and its two seeds."""

    index: int
    study_name: str
    data_seed: int
    sampler_seed: int


def plan_replicates(study_name: str, config: StudyConfig, n: int, data_seed: int | None = None) -> list[ReplicatePlan]:
    """The ``n`` replicates of study ``study_name``: data seed ``data_seed + r`` (default: the
    study's dataset seed), sampler seed ``config.sampler_seed + r``.

    Raises:
        ConfigError: "replicates must be ≥ 1, got N" / "data seed must be ≥ 0, got S".
    """
    check_int("replicates", n, 1)
    base = config.dataset.seed if data_seed is None else check_int("data seed", data_seed, 0)
    plans = []
    for r in range(n):
        d, s = base + r, config.sampler_seed + r
        own = (d, s) == (config.dataset.seed, config.sampler_seed)
        plans.append(ReplicatePlan(r, study_name if own else f"{study_name}.data{d}.sampler{s}", d, s))
    return plans


def replicate_data(config: StudyConfig, plan: ReplicatePlan, loaded: Splits, cache_dir: str | os.PathLike | None) -> tuple[StudyConfig, Splits]:
    """The config and the splits of a replicate: ``loaded`` (the study's own data) when the data
    seed is the study's, else a fresh draw of the same dataset spec with the plan's seed."""
    if plan.data_seed == config.dataset.seed and plan.sampler_seed == config.sampler_seed:
        return config, loaded
    splits = loaded
    if plan.data_seed != config.dataset.seed:
        splits = load_dataset(dataclasses.replace(config.dataset, seed=plan.data_seed), cache_dir)
    files = dict(splits.files) if len(splits.files) <= MAX_LISTED_FILES else {}
    rep = dataclasses.replace(
        config, dataset=dataclasses.replace(config.dataset, seed=plan.data_seed), dataset_fingerprint=splits.fingerprint,
        dataset_files=files, sampler_seed=plan.sampler_seed,
    )
    return rep, splits


def trial_logger(log: Log, label: str) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """An Optuna callback that logs ``"LABEL · trial N · val V"``, or where a pruner stopped it
    (trials past the end of a BioTune search, which its sampler stops at once, are not logged)."""

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            log(f"{label} · trial {trial.number:>3} · val {trial.value:.4f}")
        elif trial.state == optuna.trial.TrialState.PRUNED and attrs.PRUNED_AT in trial.user_attrs:
            log(f"{label} · trial {trial.number:>3} · {describe_pruned(trial.user_attrs)}")

    return on_trial


def search_biotune(study: optuna.Study, config: StudyConfig, objective: Objective, workers: int, callbacks: Sequence[Callable]) -> None:
    """Run (or finish) BioTune's search of ``study`` in ``workers`` threads; it stops by itself
    after P + G·(P + E) evaluations (a failed slot is redone, then counted worst)."""
    if not isinstance(study.sampler, BioTuneSampler):
        study.sampler = make_sampler(config)
    if study.sampler.search_state(study).finished:
        return
    study.optimize(objective, n_jobs=workers, callbacks=list(callbacks), catch=(Exception,))


@dataclass(frozen=True)
class Request:
    """What a replicate computes besides its plan; a stored replicate is reused only for the same.

    Attributes:
        samplers: Optuna samplers searched next to BioTune (keys of ``SAMPLER_LABELS``).
        baselines: baselines of the final protocol (keys of ``BASELINE_LABELS``).
        final_seeds: retraining seeds of the final protocol (the search keeps ``config.seeds``).
    """

    samplers: tuple[str, ...]
    baselines: tuple[str, ...]
    final_seeds: tuple[int, ...]

    def to_dict(self) -> dict:
        """JSON-safe dict (lists)."""
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Runner:
    """How replicates run: storage, device, threads, caches, logging.

    Attributes:
        storage: the storage of every replicate's studies.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…
        workers: threads per search.
        feature_cache_bytes: frozen-prefix feature memory per search (0: off).
        cache_dir: dataset cache folder for fresh data draws (None: no cache).
        exclusive: this process is the storage's only user. A trial left RUNNING by a killed
            run holds its BioTune slot, so on resume it is failed (its slot redone): in every
            replicate's BioTune study when exclusive, else only in those made for replicates,
            never in the study given (its workers may be running). Optuna's other samplers need
            nothing: their searches count finished trials.
        log: one line of progress.
    """

    storage: optuna.storages.BaseStorage
    device: str = "auto"
    workers: int = 1
    feature_cache_bytes: int = DEFAULT_MAX_BYTES
    cache_dir: str | os.PathLike | None = None
    exclusive: bool = False
    log: Log = print


def run_replicate(runner: Runner, plan: ReplicatePlan, base_name: str, config: StudyConfig, splits: Splits, request: Request) -> dict:
    """One whole replicate (searches resumed from the storage, then the final protocol).

    Returns:
        Its record: plan, request, dataset fingerprint, BioTune's best learning rate per block,
        and ``methods``: one dict per final-table row (``MethodResult`` fields plus
        ``test_accuracy_mean`` / ``test_accuracy_std``).
    """
    log, tag = runner.log, f"replicate {plan.index}"
    study, resumed = create_or_resume(runner.storage, plan.study_name, config)
    if resumed and (runner.exclusive or plan.study_name != base_name):
        fail_trials_of_gone_processes(study)
    log(f"{tag}: study {plan.study_name} (data seed {plan.data_seed}, sampler seed {plan.sampler_seed}), "
        f"{config.n_evaluations} evaluations per search")

    def objective() -> Objective:
        return Objective(config, splits, runner.device, feature_cache_bytes=runner.feature_cache_bytes)

    search_biotune(study, config, objective(), runner.workers, [trial_logger(log, f"{tag} · BioTune")])
    others = {}
    for key in request.samplers:
        label = f"{tag} · {SAMPLER_LABELS[key]}"
        others[key] = run_search(runner.storage, plan.study_name, config, key, objective(), runner.workers, [trial_logger(log, label)])

    def on_seed(name: str, seed: int, acc: float) -> None:
        log(f"{tag} · final · {name} · seed {seed} · val {acc:.4f}")

    final = dataclasses.replace(config, seeds=request.final_seeds)
    rows = final_report(study, final, splits, runner.device, on_seed, request.baselines, others, workers=runner.workers)
    best = decode(search_state(study, config).best.genome, config.blocks, config.recipe.base_lr)
    return {
        "replicate": plan.index, "study": plan.study_name, "data_seed": plan.data_seed, "sampler_seed": plan.sampler_seed,
        "request": request.to_dict(),
        "dataset_fingerprint": config.dataset_fingerprint, "best_lr_by_block": best.lr_by_block,
        "methods": [{**asdict(r), "test_accuracy_mean": r.mean, "test_accuracy_std": r.std} for r in rows],
    }


def read_json(path: Path) -> dict | None:
    """The JSON object stored at ``path``; None if it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stored_record(path: Path, plan: ReplicatePlan, request: Request) -> dict | None:
    """The record at ``path`` if it is this plan's with this request, else None (redo it)."""
    record = read_json(path) or {}
    same = record.get("study") == plan.study_name and record.get("request") == request.to_dict()
    return record if same and record.get("data_seed") == plan.data_seed else None


def write_json(path: Path, payload: object) -> Path:
    """Write ``payload`` as indented JSON atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(payload, indent=2))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def run_replicates(
    runner: Runner, base_name: str, config: StudyConfig, splits: Splits, plans: Sequence[ReplicatePlan],
    request: Request, results_dir: Path,
) -> list[dict]:
    """Every replicate of ``plans`` in order, each written to ``results_dir/replicate-<r>.json``
    as soon as it is done; replicates already stored there for the same request are read back.

    Args:
        config, splits: the study ``base_name``'s config and loaded dataset.
    """
    records = []
    for plan in plans:
        path = Path(results_dir) / f"replicate-{plan.index}.json"
        record = stored_record(path, plan, request)
        if record is not None:
            runner.log(f"replicate {plan.index}: done in an earlier run ({path}); not redone")
        else:
            rep_config, rep_splits = replicate_data(config, plan, splits, runner.cache_dir)
            record = run_replicate(runner, plan, base_name, rep_config, rep_splits, request)
            write_json(path, record)
            runner.log(f"replicate {plan.index}: results written to {path}")
        records.append(record)
    return records


def write_replicated_report(records: Sequence[dict], directory: Path, title: str, extra: dict | None = None) -> tuple[Path, Path, str]:
    """``report.json`` (``replicates``: the raw records; ``summary``; ``paired``) and
    ``report.md`` in ``directory``.

    Returns:
        (JSON path, Markdown path, the Markdown text).
    """
    sections = paired.summarize(records)
    text = paired.to_markdown(records, sections, title)
    json_path = write_json(Path(directory) / "report.json", {"title": title, **(extra or {}), "replicates": list(records), **sections})
    md_path = Path(directory) / "report.md"
    tmp = md_path.with_name("report.md.tmp")
    tmp.write_text(text)
    tmp.replace(md_path)
    return json_path, md_path, text
