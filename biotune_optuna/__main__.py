from biotune_optuna.cli import main
import sys

sys.exit(main())
