"""Folding a study's trials into slot results: what each (generation, slot) is worth so far.

A trial evaluates one *work unit*: a whole slot (every seed), or — when the study's work unit
is one seed — one (slot, seed) pair (issue 13). Units are tallied by (generation, slot, seed
index); a slot is resolved once every one of its units is, with the mean of their fitness
(spec §6: fitness is 1 − the mean accuracy over seeds, and Φ is linear in the accuracy).

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
#: (generation, slot, seed index): the unit a trial evaluated (seed index 0 for a whole slot).
UnitKey = tuple[int, int, int]


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
    """Results and failure counts folded in from the trials numbered below ``upto``, per unit.

    Attributes:
        upto: trials ``0 … upto − 1`` are folded in.
        results: fitness Φ of each resolved unit (generation, slot, seed index).
        failures: evaluations of a unit that raised (the genome's fault, e.g. NaN loss).
        interruptions: attempts whose worker was stopped or died (not the genome's fault).
    """

    upto: int = 0
    results: dict[UnitKey, float] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    interruptions: Counter = field(default_factory=Counter)

    def copy(self) -> Tally:
        return Tally(self.upto, dict(self.results), self.failures.copy(), self.interruptions.copy())

    def add(self, t: FrozenTrial, maximize: bool, held: set[UnitKey] | None) -> None:
        """Fold in one trial (and add a RUNNING one's unit to ``held``).

        A COMPLETE trial counts with its value; a PRUNED one with its user attribute
        :data:`~attrs.PRUNED_VALUE`, else Optuna's value of a pruned trial, else the worst fitness
        for the study's direction (:func:`~biotune_optuna.search.fitness.worst_fitness`: Φ = 1
        when maximising an accuracy, +∞ when minimising).
        """
        rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
        if rec is None or not rec.claimed:
            return
        key = rec.unit_key
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
        max_retries: failed evaluations of a unit before it counts with the worst fitness for
            the study's direction.
        max_interruptions: interrupted attempts of a unit before it counts with the worst fitness.
        units_per_slot: trials that evaluate one slot (≥ 1): 1 when a trial fine-tunes with
            every seed, the number of seeds when a trial fine-tunes with one.
    """

    def __init__(self, max_retries: int, max_interruptions: int, units_per_slot: int = 1) -> None:
        self.max_retries = max_retries
        self.max_interruptions = max_interruptions
        self.units_per_slot = units_per_slot
        self._base = Tally()
        self._warned: set[UnitKey] = set()
        #: Units resolved at the last :meth:`read` (evaluated, or given up as worst).
        self.resolved_units = 0

    @property
    def upto(self) -> int:
        """Trials below this number are finished and folded in: they cannot block a claim."""
        return self._base.upto

    def read(
        self, trials: Sequence[FrozenTrial], maximize: bool, trial_id: int | None = None
    ) -> tuple[dict[Key, float], set[UnitKey], dict[UnitKey, int]]:
        """Slot results, units taken (resolved or held by a RUNNING trial), failure counts.

        Args:
            trials: the study's trials sorted by number (``trials[i].number == i``).
            maximize: the study's direction.
            trial_id: a trial to ignore (the one asking for a unit).

        Returns:
            ``(results, taken, failures)``: Φ of every slot whose units are all resolved (the
            mean of the units' Φ), keyed by (generation, slot); the (generation, slot, seed
            index) of every unit resolved or held; failed evaluations per unit.
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
                    unit = f" (seed {key[2]})" if self.units_per_slot > 1 else ""
                    _logger.warning(
                        "slot %s of generation %s%s failed %d times (and was interrupted %d times): "
                        "counted with the worst fitness", key[1], key[0], unit, n, m
                    )
                results[key] = worst_fitness(maximize)
        self.resolved_units = len(results)
        return self._slots(results), held | set(results), dict(tally.failures)

    def _slots(self, units: dict[UnitKey, float]) -> dict[Key, float]:
        """Φ of each slot whose ``units_per_slot`` units are all resolved: their mean."""
        by_slot: dict[Key, list[float]] = {}
        for (generation, slot, seed), phi in units.items():
            if seed < self.units_per_slot:
                by_slot.setdefault((generation, slot), []).append(phi)
        n = self.units_per_slot
        return {key: (phis[0] if n == 1 else sum(phis) / n) for key, phis in by_slot.items() if len(phis) == n}
