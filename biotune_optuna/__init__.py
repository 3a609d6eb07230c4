"""biotune-optuna: BioTune's evolutionary selective fine-tuning as an Optuna service."""

__version__ = "0.1.0"
