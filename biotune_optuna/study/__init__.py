"""Optuna and storage: the sampler's Optuna face, slot claims, studies, storage, retries.

* :mod:`.sampler` — :class:`BioTuneSampler`, BioTune's search as an Optuna sampler;
* :mod:`.tally` — a study's trials folded into slot results;
* :mod:`.attrs` — every attribute name, and the typed :class:`~.attrs.SlotRecord`;
* :mod:`.studies` — create / resume / read a study from its config;
* :mod:`.storage` — opening a storage, hiding passwords; :mod:`.retry` — the one backoff;
* :mod:`._optuna` — the only module that touches Optuna's private API.

Imports no torch.
"""
