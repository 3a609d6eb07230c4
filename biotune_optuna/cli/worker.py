"""``biotune-optuna worker``: join a shared study and evaluate trials until the search ends."""

from __future__ import annotations

import argparse

from biotune_optuna.cli.common import console, feature_cache_bytes, storage_url
from biotune_optuna.cli.loading import check_device, dataset_cache
from biotune_optuna.config import ConfigError
from biotune_optuna.worker import run_worker


def run(args: argparse.Namespace) -> int:
    """``worker``: check the options, then :func:`biotune_optuna.worker.run_worker`."""
    if args.max_trials is not None and args.max_trials < 1:
        raise ConfigError(f"--max-trials must be ≥ 1, got {args.max_trials}")
    check_device(args.device)
    if not 0 < args.heartbeat_interval < args.grace_period:
        raise ConfigError("--heartbeat-interval must be > 0 and smaller than --grace-period")
    summary = run_worker(
        storage_url(args), args.study_name, device=args.device, max_trials=args.max_trials,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, wait_seconds=args.wait,
        cache_dir=dataset_cache(vars(args)), feature_cache_bytes=feature_cache_bytes(args.feature_cache_mb),
        strict=args.strict, final_protocol=not args.no_final,
    )
    console.print(f"worker done: {summary}")
    return 0
