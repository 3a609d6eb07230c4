"""``biotune-optuna create``: the schema and a shared study, once, for workers on many machines."""

from __future__ import annotations

import argparse

from biotune_optuna.cli.common import console, settings, storage_url
from biotune_optuna.cli.loading import config_from_args
from biotune_optuna.study.storage import open_storage, redact
from biotune_optuna.study.studies import create_or_resume


def run(args: argparse.Namespace) -> int:
    """``create``: store the whole config in a new study (a no-op when it exists with the same one)."""
    url = storage_url(args)
    config, _ = config_from_args(settings(args))
    storage = open_storage(url, create_tables=True)
    study, resumed = create_or_resume(storage, args.study_name, config)
    verb = "exists already with this config" if resumed else "created"
    console.print(
        f"study [bold]{args.study_name}[/] {verb} in {redact(url)}: at most {config.n_evaluations} evaluations × "
        f"{len(config.seeds)} seed(s). Start workers with:\n  biotune-optuna worker --study-name {args.study_name} "
        "--storage URL   (or set BIOTUNE_STORAGE)"
    )
    return 0
