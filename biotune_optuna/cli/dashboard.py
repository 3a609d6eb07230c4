"""``biotune-optuna dashboard``: optuna-dashboard on a study's storage, on loopback by default."""

from __future__ import annotations

import argparse

from biotune_optuna.cli.common import console, storage_url
from biotune_optuna.report.dashboard import serve
from biotune_optuna.study.storage import redact


def run(args: argparse.Namespace) -> int:
    """``dashboard``: serve until Ctrl-C."""
    url = storage_url(args)
    console.print(f"optuna-dashboard on {redact(url)} at http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    serve(url, host=args.host, port=args.port, artifact_dir=args.artifact_dir, allow_remote=args.allow_remote)
    return 0
