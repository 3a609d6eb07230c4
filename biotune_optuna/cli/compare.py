"""``biotune-optuna compare``: BioTune's best genome against tuned baselines and Optuna's other
samplers, on the same data, seeds and training loop. Writes into ``OUT/compare/``; results are
kept in the study, so a second compare retrains only what is missing."""

from __future__ import annotations

import argparse

import optuna

from biotune_optuna.cli.common import console, feature_cache_bytes, open_study, parse_list, positive, report_dir, storage_url
from biotune_optuna.cli.loading import check_device, dataset_cache, load_checked
from biotune_optuna.cli.report import tune_spec, write_full_report
from biotune_optuna.config import BASELINE_LABELS, SAMPLER_LABELS, StudyConfig
from biotune_optuna.finetune.data import Splits
from biotune_optuna.objective import Objective
from biotune_optuna.report.comparison import run_search
from biotune_optuna.report.replicates import Request, Runner, plan_replicates, run_replicates, write_replicated_report
from biotune_optuna.study import _optuna
from biotune_optuna.worker import describe_pruned


def run(args: argparse.Namespace) -> int:
    """``compare``: run the chosen samplers' searches (resumable), then the final protocol for all."""
    baselines = parse_list(args.baselines, list(BASELINE_LABELS), "baseline")
    samplers = parse_list(args.samplers, list(SAMPLER_LABELS), "sampler")
    positive("workers", args.workers)
    check_device(args.device)
    cache_bytes = feature_cache_bytes(args.feature_cache_mb)
    spec = tune_spec(args)
    positive("replicates", args.replicates)
    positive("data-seed", args.data_seed, 0)
    study, config = open_study(args)
    splits = load_checked(config, args)
    if args.replicates is not None or args.data_seed is not None:
        return run_replicated(args, study, config, splits, samplers, baselines, cache_bytes)
    others = {}
    for key in samplers:
        console.rule(f"{SAMPLER_LABELS[key]} on the same space: {config.n_evaluations} evaluations")

        def on_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial, key: str = key) -> None:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                console.print(f"{key} · trial {trial.number:>3} · val {trial.value:.4f}")
            elif trial.state == optuna.trial.TrialState.PRUNED:
                console.print(f"{key} · trial {trial.number:>3} · {describe_pruned(trial.user_attrs)}")

        objective = Objective(config, splits, args.device, feature_cache_bytes=cache_bytes)
        others[key] = run_search(_optuna.storage_of(study), study.study_name, config, key, objective, args.workers, [on_trial])
    # Its own folder: run's and report's report.* next to the study are not replaced (README "Comparing").
    out = report_dir(args, storage_url(args), study.study_name) / "compare"
    title = f"{study.study_name}: {config.model} on {config.dataset.name} — comparison"
    write_full_report(study, config, splits, args.device, out, baselines, others, tuning=spec, recompute=args.recompute, title=title,
                      workers=args.workers)
    return 0


def run_replicated(
    args: argparse.Namespace, study: optuna.Study, config: StudyConfig, splits: Splits,
    samplers: tuple[str, ...], baselines: tuple[str, ...], cache_bytes: int,
) -> int:
    """``compare --replicates R [--data-seed S]``: every replicate (resumable), then the
    replicated report (per-replicate rows, spreads, paired differences) in report.json / report.md."""
    plans = plan_replicates(study.study_name, config, args.replicates or 1, args.data_seed)
    out = report_dir(args, storage_url(args), study.study_name)
    runner = Runner(
        _optuna.storage_of(study), args.device, args.workers, cache_bytes, dataset_cache(vars(args)), log=console.print,
    )
    request = Request(samplers, baselines, config.seeds)
    records = run_replicates(runner, study.study_name, config, splits, plans, request, out / "replicates")
    title = f"{study.study_name}: {config.model} on {config.dataset.name}, {len(records)} replicate(s)"
    json_path, md_path, text = write_replicated_report(records, out, title, {"study": study.study_name, "config": config.to_dict()})
    print(text)
    console.print(f"report written: {json_path}, {md_path} (raw results per replicate in {out / 'replicates'})")
    return 0
