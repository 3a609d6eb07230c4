"""``biotune-optuna create``: the schema and a shared study, once, for workers on many machines."""

from __future__ import annotations

import argparse
import shlex

from rich.markup import escape
from sqlalchemy.engine import make_url

from biotune_optuna.cli.common import console, settings, storage_url
from biotune_optuna.cli.loading import config_from_args
from biotune_optuna.study.storage import open_storage, redact
from biotune_optuna.study.studies import create_or_resume


def worker_hint(url: str, study_name: str) -> str:
    """The command that starts a worker on this study. The URL is written out only when it has
    no password; otherwise the hint says where to put it (never the password itself)."""
    command = f"biotune-optuna worker --study-name {shlex.quote(study_name)}"
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - open_storage accepted it; be safe anyway
        password = "?"
    if not password:
        return f"Start workers with:\n  {command} --storage {shlex.quote(url)}"
    return (
        f"Start workers with:\n  {command}\nwith the storage URL ({redact(url)}, password included) in "
        "$BIOTUNE_STORAGE or in the file named by $BIOTUNE_STORAGE_FILE: a password on the command line "
        "is visible to every user of the machine"
    )


def run(args: argparse.Namespace) -> int:
    """``create``: store the whole config in a new study (a no-op when it exists with the same one)."""
    url = storage_url(args)
    # A database server is opened (reachable, credentials right) before the dataset loads; an
    # SQLite file only once the options are known to be good, so a refusal leaves no stray file.
    early = None if url.startswith("sqlite") else open_storage(url, create_tables=True)
    config, _ = config_from_args(settings(args))
    storage = early or open_storage(url, create_tables=True)
    _, resumed = create_or_resume(storage, args.study_name, config)
    verb = "exists already with this config" if resumed else "created"
    console.print(
        f"study [bold]{escape(args.study_name)}[/] {verb} in {escape(redact(url))}: at most {config.n_evaluations} evaluations × "
        f"{len(config.seeds)} seed(s). {escape(worker_hint(url, args.study_name))}",
        highlight=False,
    )
    return 0
