"""Old home of the sampler, kept for one release: import from :mod:`biotune_optuna.study.sampler`.

``from biotune_optuna.sampler import BioTuneSampler`` still works (with a DeprecationWarning).
"""

import warnings

from biotune_optuna.search import GAConfig, Member, Population, Proposal, SearchState, search_state
from biotune_optuna.study.attrs import FAILED as FAILED_ATTR
from biotune_optuna.study.attrs import PRUNED_VALUE as PRUNED_VALUE_ATTR
from biotune_optuna.study.attrs import SLOT as SLOT_ATTR
from biotune_optuna.study.sampler import BioTuneSampler, fold_of_generation, slot_record

warnings.warn(
    "biotune_optuna.sampler moved: import BioTuneSampler from biotune_optuna.study.sampler "
    "(the old path goes away in the next release)",
    DeprecationWarning,
    stacklevel=2,
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
