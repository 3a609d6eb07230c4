"""BioTune's genetic algorithm, pure: genome ⇄ fine-tuning plan, operators, generations, fitness.

Imports neither torch nor Optuna nor a database (spec/biotune-algorithm.md §2–3, §7).

* :mod:`.genome` — a genome of B + 1 genes decoded into trained blocks and learning rates;
* :mod:`.operators` — hill-climb, selection, crossover, mutation, extinction, adoption;
* :mod:`.generations` — generations as fixed slot lists, replayed from results alone;
* :mod:`.fitness` — fitness Φ ⇄ validation accuracy.
"""

from biotune_optuna.search.fitness import WORST_FITNESS, accuracy_of, fitness_of, value_of, worst_fitness
from biotune_optuna.search.generations import GAConfig, Member, Population, Proposal, SearchState, search_state
from biotune_optuna.search.genome import Plan, decode, genome_from_params, param_names, params_from_genome

__all__ = [
    "WORST_FITNESS",
    "GAConfig",
    "Member",
    "Plan",
    "Population",
    "Proposal",
    "SearchState",
    "accuracy_of",
    "decode",
    "fitness_of",
    "genome_from_params",
    "param_names",
    "params_from_genome",
    "search_state",
    "value_of",
    "worst_fitness",
]
