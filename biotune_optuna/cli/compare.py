"""``biotune-optuna compare``: BioTune's best genome against tuned baselines and Optuna's other
samplers, on the same data, seeds and training loop. Writes into ``OUT/compare/``; results are
kept in the study, so a second compare retrains only what is missing."""

from __future__ import annotations

import argparse

import optuna

from biotune_optuna.cli.common import console, feature_cache_bytes, open_study, parse_list, positive, report_dir, storage_url
from biotune_optuna.cli.loading import check_device, load_checked
from biotune_optuna.cli.report import tune_spec, write_full_report
from biotune_optuna.config import BASELINE_LABELS, SAMPLER_LABELS
from biotune_optuna.objective import Objective
from biotune_optuna.report.comparison import run_search
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
    study, config = open_study(args)
    splits = load_checked(config, args)
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
    write_full_report(study, config, splits, args.device, out, baselines, others, tuning=spec, recompute=args.recompute, title=title)
    return 0
