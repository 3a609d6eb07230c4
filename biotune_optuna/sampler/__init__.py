"""BioTune's evolutionary sampler for Optuna (spec/biotune-algorithm.md §7, §12).

The operators (:mod:`._operators`) and the generation replay (:mod:`._generations`) are pure
(numpy only); :class:`BioTuneSampler` adds the Optuna side: slot claims in trial system
attributes and state rebuilt from storage.
"""

from biotune_optuna.sampler._generations import GAConfig, Member, Population, Proposal, SearchState, search_state
from biotune_optuna.sampler._sampler import (
    FAILED_ATTR,
    PRUNED_VALUE_ATTR,
    SLOT_ATTR,
    BioTuneSampler,
    fold_of_generation,
    slot_record,
)

__all__ = [
    "FAILED_ATTR",
    "PRUNED_VALUE_ATTR",
    "SLOT_ATTR",
    "BioTuneSampler",
    "GAConfig",
    "Member",
    "Population",
    "Proposal",
    "SearchState",
    "fold_of_generation",
    "search_state",
    "slot_record",
]
