"""Fitness Φ ⇄ objective value: the one place where "lower is better" meets Optuna's direction.

BioTune minimises a fitness Φ in [0, 1] (spec/biotune-algorithm.md §6): Φ = 1 − validation macro
accuracy. The Optuna study of a BioTune search maximises the accuracy itself; a minimised study
(a loss ≥ 0) is read with Φ = value.

Pure: no torch, no Optuna, no database.
"""

from __future__ import annotations

#: Fitness of a slot whose every attempt failed: Φ of 0 % accuracy, the worst a maximised
#: study can give. For a minimised study use :func:`worst_fitness` (the worst is unbounded).
WORST_FITNESS = 1.0


def accuracy_of(fitness: float) -> float:
    """Validation macro accuracy in [0, 1] of a fitness Φ = 1 − accuracy (spec §6)."""
    return 1.0 - fitness


def fitness_of(value: float, maximize: bool = True) -> float:
    """Fitness Φ (lower is better) of an objective value: 1 − value in a maximised study, the
    value itself in a minimised one."""
    return 1.0 - value if maximize else value


def worst_fitness(maximize: bool = True) -> float:
    """The worst fitness for the study's direction: :data:`WORST_FITNESS` (0 % accuracy) when
    maximising, +∞ when minimising (any real loss is better)."""
    return WORST_FITNESS if maximize else float("inf")


def value_of(fitness: float, maximize: bool = True) -> float:
    """The objective value a fitness Φ stands for: the inverse of :func:`fitness_of`
    (:func:`accuracy_of` in a maximised study, Φ itself in a minimised one)."""
    return accuracy_of(fitness) if maximize else fitness
