"""What a person reads: the final protocol (spec §8), the comparison with other samplers,
plots, and the optuna-dashboard pages.

* :mod:`.final` — BioTune's best genome, each other sampler's best and the baselines, retrained
  with every seed and scored on the test split; rows stored in the study (:mod:`.stored`);
* :mod:`.protocol` — train one configuration with every seed, then score the test split;
* :mod:`.tuning` — each baseline's learning rate (and own knob) chosen on the validation split;
* :mod:`.comparison` — Optuna's own samplers on BioTune's space with BioTune's budget, and every
  search's cost and best counted the same way;
* :mod:`.tables` — the table as Markdown / report.json;
* :mod:`.plots` — figures (PNG + self-contained HTML); :mod:`.dashboard` — dashboard pages.
"""
