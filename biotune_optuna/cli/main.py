"""Entry point of the ``biotune-optuna`` command: parse, set up logging, run one sub-command,
and turn every user-facing error into one line and a non-zero exit.

Only the chosen sub-command's module is imported, after parsing: ``--help``, argument errors,
``status`` and ``dashboard`` never import torch.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import optuna
from rich.logging import RichHandler

from biotune_optuna.cli.common import console
from biotune_optuna.cli.parser import build_parser
from biotune_optuna.config import ConfigError
from biotune_optuna.study._optuna import OPTIMIZE_LOGGER

_INTERRUPTED: set[str] = set()


def _no_interrupt_traceback(record: logging.LogRecord) -> bool:
    """Optuna logs a trial stopped by Ctrl-C / SIGTERM as failed, with a traceback and a second
    "failed with value None" line; the stop is the user's, not an error: say so in one line."""
    text = record.getMessage()
    number = text.split(" ")[1] if text.startswith("Trial ") else ""
    if record.exc_info and record.exc_info[0] is KeyboardInterrupt:
        _INTERRUPTED.add(number)
        record.msg = f"Trial {number} stopped by the interrupt: its slot will be redone"
        record.args, record.exc_info, record.exc_text = (), None, None
        return True
    return not (number in _INTERRUPTED and "failed with value None" in text)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    for chatty in ("kaleido", "choreographer", "logistro"):  # PNG export logs every browser step at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger(OPTIMIZE_LOGGER).addFilter(_no_interrupt_traceback)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biotune-optuna`` command; returns the exit status (0 done, 2 a
    user-facing error, 130 interrupted)."""
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
        console.print("interrupted: run the same command again to resume the study")
        return 130


if __name__ == "__main__":
    sys.exit(main())
