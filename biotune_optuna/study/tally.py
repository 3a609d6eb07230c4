"""Folding a study's trials into slot results: what each (generation, slot) is worth so far.

A finished trial never changes, so the longest prefix of finished trials is folded in once and
kept; a call then costs O(trials after the oldest unfinished one), not O(history) (DESIGN.md,
"It rebuilds all state from storage … cheaply").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from biotune_optuna.search.fitness import fitness_of, worst_fitness
from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.attrs import SlotRecord

_logger = logging.getLogger(__name__)

Key = tuple[int, int]


def stand_in_value(t: FrozenTrial) -> float | None:
    """The objective value a finished evaluation stands for, in the study's direction.

    A COMPLETE trial: its value. A PRUNED one: its user attribute :data:`~attrs.PRUNED_VALUE`
    (what BioTune's objective sets), else Optuna's value of a pruned trial (its last
    intermediate value), else None (nothing known). Any other state: None. BioTune's search and
    every other sampler's best (``report.comparison.best_genome``) read trials this one way.
    """
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.state == TrialState.PRUNED:
        return t.user_attrs.get(attrs.PRUNED_VALUE, t.value)
    return None


def interrupted(t: FrozenTrial) -> bool:
    """True for a FAIL trial that is not the genome's fault: its worker was stopped (user
    attribute :data:`~attrs.INTERRUPTED`) or died and the trial was reaped as stale (no
    :data:`~attrs.FAILED`, which only the trial's own worker writes when its evaluation raised)."""
    return not t.system_attrs.get(attrs.FAILED) or bool(t.user_attrs.get(attrs.INTERRUPTED))


@dataclass
class Tally:
    """Results and failure counts folded in from the trials numbered below ``upto``.

    Attributes:
        upto: trials ``0 … upto − 1`` are folded in.
        results: fitness Φ of each resolved (generation, slot).
        failures: evaluations of a slot that raised (the genome's fault, e.g. NaN loss).
        interruptions: attempts whose worker was stopped or died (not the genome's fault).
    """

    upto: int = 0
    results: dict[Key, float] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    interruptions: Counter = field(default_factory=Counter)

    def copy(self) -> Tally:
        return Tally(self.upto, dict(self.results), self.failures.copy(), self.interruptions.copy())

    def add(self, t: FrozenTrial, maximize: bool, held: set[Key] | None) -> None:
        """Fold in one trial (and add a RUNNING one's slot to ``held``).

        A COMPLETE trial counts with its value; a PRUNED one with its user attribute
        :data:`~attrs.PRUNED_VALUE`, else Optuna's value of a pruned trial, else the worst fitness
        for the study's direction (:func:`~biotune_optuna.search.fitness.worst_fitness`: Φ = 1
        when maximising an accuracy, +∞ when minimising).
        """
        rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
        if rec is None or not rec.claimed:
            return
        key = rec.key
        if t.state == TrialState.COMPLETE and t.value is not None:
            self.results.setdefault(key, fitness_of(t.value, maximize))
        elif t.state == TrialState.PRUNED:
            value = stand_in_value(t)
            self.results.setdefault(key, worst_fitness(maximize) if value is None else fitness_of(value, maximize))
        elif t.state == TrialState.RUNNING and held is not None:
            held.add(key)
        elif t.state == TrialState.FAIL:
            if interrupted(t):
                self.interruptions[key] += 1
            else:
                self.failures[key] += 1


class Ledger:
    """The slot results of one study, kept between calls.

    Args:
        max_retries: failed evaluations of a slot before it counts with the worst fitness for
            the study's direction.
        max_interruptions: interrupted attempts of a slot before it counts with the worst fitness.
    """

    def __init__(self, max_retries: int, max_interruptions: int) -> None:
        self.max_retries = max_retries
        self.max_interruptions = max_interruptions
        self._base = Tally()
        self._warned: set[Key] = set()

    @property
    def upto(self) -> int:
        """Trials below this number are finished and folded in: they cannot block a claim."""
        return self._base.upto

    def read(
        self, trials: Sequence[FrozenTrial], maximize: bool, trial_id: int | None = None
    ) -> tuple[dict[Key, float], set[Key], dict[Key, int]]:
        """Results, slots taken (resolved or held by a RUNNING trial) and failure counts.

        Args:
            trials: the study's trials sorted by number (``trials[i].number == i``).
            maximize: the study's direction.
            trial_id: a trial to ignore (the one asking for a slot).
        """
        base = self._base
        if not trials or trials[-1].number != len(trials) - 1 or base.upto > len(trials):
            base = self._base = Tally()
        i = base.upto
        while i < len(trials) and trials[i].state.is_finished() and _optuna.trial_id(trials[i]) != trial_id:
            base.add(trials[i], maximize, None)
            i += 1
        base.upto = i
        tally, held = base.copy(), set()
        for t in trials[i:]:
            if _optuna.trial_id(t) != trial_id:
                tally.add(t, maximize, held)
        results = tally.results
        for key in set(tally.failures) | set(tally.interruptions):
            n, m = tally.failures[key], tally.interruptions[key]
            if key not in results and key not in held and (n > self.max_retries or m > self.max_interruptions):
                if key not in self._warned:
                    self._warned.add(key)
                    _logger.warning(
                        "slot %s of generation %s failed %d times (and was interrupted %d times): "
                        "counted with the worst fitness", key[1], key[0], n, m
                    )
                results[key] = worst_fitness(maximize)
        return results, held | set(results), dict(tally.failures)
