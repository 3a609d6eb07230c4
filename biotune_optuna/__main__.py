"""python -m biotune_optuna: the biotune-optuna command."""

import sys

from biotune_optuna.cli.main import main

sys.exit(main())
