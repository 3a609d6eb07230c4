"""What a person reads: the final protocol (spec §8), the comparison with other samplers,
plots, and the optuna-dashboard pages.

* :mod:`.final` — retrain the best genome and the baselines with every seed, score the test split;
* :mod:`.comparison` — Optuna's own samplers on BioTune's space with BioTune's budget;
* :mod:`.plots` — figures (PNG + self-contained HTML); :mod:`.dashboard` — dashboard pages.
"""
