"""The ``biotune-optuna`` command line: one thin module per sub-command.

* :mod:`.parser` — every option, default and preset (torch-free);
* :mod:`.main` — parse, log, dispatch, errors → one line;
* :mod:`.common` — console, settings, storage URL, opening a study (torch-free);
* :mod:`.loading` — options → study config, loading the dataset and model;
* :mod:`.run`, :mod:`.create`, :mod:`.worker`, :mod:`.status`, :mod:`.report`,
  :mod:`.compare`, :mod:`.dashboard` — the sub-commands, each with ``run(args) -> int``.
"""

from biotune_optuna.cli.main import main

__all__ = ["main"]
