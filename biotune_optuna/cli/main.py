"""Entry point of the ``biotune-optuna`` command: parse, set up logging, run one sub-command,
and turn every user-facing error into one line and a non-zero exit.

Only the chosen sub-command's module is imported, after parsing: ``--help``, argument errors,
``status`` and ``dashboard`` never import torch.

Logs are one event per line — time, level, message — never wrapped at the console width, on a
terminal (coloured) as in a file, a pipe or a scheduler's log.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import datetime

import optuna
from rich.logging import RichHandler
from rich.text import Text

from biotune_optuna.cli.common import console
from biotune_optuna.cli.parser import build_parser
from biotune_optuna.config import ConfigError
from biotune_optuna.study._optuna import OPTIMIZE_LOGGER, FailedTrialLog

#: The signal that stopped the command (SIGTERM raises KeyboardInterrupt, as Ctrl-C does).
_STOPPED_BY: list[int] = []


def _on_sigterm(signum: int, frame) -> None:  # noqa: ANN001
    _STOPPED_BY.append(signum)
    raise KeyboardInterrupt


class _OneLineHandler(RichHandler):
    """RichHandler's colours, one line per record: rich lays records out as a table whose message
    column wraps at the console width (80 columns in a file or pipe), splitting values and paths;
    here the console soft-wraps (never breaks) the line."""

    def render(self, *, record: logging.LogRecord, traceback, message_renderable) -> Text:  # noqa: ANN001
        when = Text(datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S"), style="log.time")
        return Text.assemble(when, " ", self.get_level_text(record), message_renderable)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_OneLineHandler(console=console, show_path=False)])
    for chatty in ("kaleido", "choreographer", "logistro"):  # PNG export logs every browser step at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A stop is the user's, not an error; a trial reaped while it ran is told by the worker / run.
    optimize_log = logging.getLogger(OPTIMIZE_LOGGER)
    optimize_log.addFilter(FailedTrialLog(KeyboardInterrupt, lambda n: f"Trial {n} stopped by the interrupt: its slot will be redone"))
    optimize_log.addFilter(FailedTrialLog(optuna.exceptions.UpdateFinishedTrialError, lambda n: None))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biotune-optuna`` command; returns the exit status (0 done, 2 a
    user-facing error, 130 / 143 interrupted by SIGINT / SIGTERM; ``worker`` exits 0 on both,
    also before it joined its study)."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread (embedded use): keep the default
            pass
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        command = importlib.import_module(f"biotune_optuna.cli.{args.command}")
        return command.run(args)
    except ConfigError as e:  # also DataError and BackboneError
        console.print(f"[red]biotune-optuna: error:[/] {e}", highlight=False)
        return 2
    except OSError as e:  # an --out that is a file, a directory without write permission…
        console.print(f"[red]biotune-optuna: error:[/] {e.strerror or e}: {e.filename or ''}", highlight=False)
        return 2
    except KeyboardInterrupt:
        signum = _STOPPED_BY[-1] if _STOPPED_BY else signal.SIGINT
        if args.command == "worker":  # stopped before it joined (after, run_worker handles it)
            console.print(f"worker stopped by {signal.Signals(signum).name} before it joined the study: nothing to redo")
            return 0
        console.print("interrupted: run the same command again to resume the study")
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
