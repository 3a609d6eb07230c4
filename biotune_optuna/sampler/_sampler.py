"""BioTuneSampler: BioTune's evolutionary search as an Optuna sampler.

How a trial gets its genome (DESIGN.md, "Sampler" contracts):

1. ``before_trial`` waits until every lower-numbered RUNNING trial has claimed a slot (a
   predecessor that has neither claimed nor refreshed its ``waiting`` record — ONE trial system
   attribute, :data:`SLOT_ATTR`, written only when a wait is long — for ``claim_timeout``
   seconds since it started or last refreshed is presumed dead and stops blocking).
2. It replays the search from the finished trials (:func:`search_state`) and claims the lowest
   slot of the open generation that no COMPLETE or RUNNING trial holds, writing the whole
   proposal (generation, slot, role, parents, genome, fold) into the same attribute.
3. If every slot of the open generation is held, it waits with backoff (and says so) until
   the generation closes; it never evaluates a slot twice. A slot whose trial FAILED is free
   again, up to ``max_retries`` times when the evaluation raised and ``max_interruptions``
   times when its worker was stopped or died; then it counts with the worst fitness (and a
   warning).
4. ``sample_relative`` returns the claimed genome as params ``gene_<block>`` / ``threshold``.

Trial numbers are handed out by the storage in one serialised order, so "wait for every lower
number, then take the lowest free slot" gives each slot to exactly one live trial.

When the search is finished, a new trial records ``finished``, asks ``study.stop()`` and is
pruned at its first ``suggest`` call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from biotune_optuna.genome import param_names, params_from_genome
from biotune_optuna.sampler._generations import WORST_FITNESS, GAConfig, SearchState, search_state

_logger = logging.getLogger(__name__)

#: The trial system attribute that holds a trial's slot record.
SLOT_ATTR = "biotune:slot"
#: The user attribute with a readable copy of the claim: generation, slot, role, fold.
SLOT_USER_ATTR = "slot"
#: User attribute of a PRUNED trial: the value (in the study's direction) it stands for in the
#: search. Without it, Optuna's own value of a pruned trial (its last intermediate value) is used,
#: and without that the worst fitness.
PRUNED_VALUE_ATTR = "pruned_value"
#: Set on a FAIL trial whose evaluation raised (told by its worker), as opposed to one that was
#: interrupted (user attribute ``interrupted``) or reaped after its worker died.
FAILED_ATTR = "biotune:failed"


def fold_of_generation(generation: int, n_folds: int) -> int:
    """The data fold a generation is evaluated on (spec §5.1).

    The initial population (generation 0) and the first generation use fold 0; generation
    g ≥ 1 uses fold ``(g − 1) mod n_folds`` (spec: "init + gen 0 → fold 0, gen 1 → fold 1").
    """
    return max(0, generation - 1) % max(1, n_folds)


def slot_record(trial: optuna.trial.BaseTrial | FrozenTrial) -> dict | None:
    """The slot record of a trial (a dict with ``state`` ``"claimed"``, ``"waiting"`` or
    ``"finished"``), or None for a trial BioTuneSampler did not handle (e.g. enqueued)."""
    if isinstance(trial, FrozenTrial):
        return trial.system_attrs.get(SLOT_ATTR)
    return trial.study._storage.get_trial_system_attrs(trial._trial_id).get(SLOT_ATTR)


@dataclass
class _Tally:
    """Results and failure counts folded in from the trials numbered below ``upto``."""

    upto: int = 0
    results: dict[tuple[int, int], float] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    interruptions: Counter = field(default_factory=Counter)

    def copy(self) -> _Tally:
        return _Tally(self.upto, dict(self.results), self.failures.copy(), self.interruptions.copy())


class BioTuneSampler(BaseSampler):
    """Evolutionary freeze / learning-rate search of BioTune (spec/biotune-algorithm.md §7).

    Proposes whole genomes over the params ``gene_<block>`` and ``threshold`` (each
    ``FloatDistribution(0, 1)``). Proposals are a pure function of (seed, generation, slot,
    finished results of earlier generations): the same study gives the same genomes whatever
    the number of workers, their speed and the order in which trials finish. Works in a plain
    ``study.optimize`` (also with ``n_jobs > 1``) and with many processes on one storage.

    The objective's value is read as fitness Φ = 1 − value in a maximised study (a validation
    accuracy in [0, 1]) and Φ = value in a minimised one (a loss ≥ 0). A PRUNED trial counts with
    the value in its user attribute :data:`PRUNED_VALUE_ATTR` (BioTune's objective sets the mean
    best validation accuracy of the seeds it finished, or the best its first seed reached before
    it was stopped), else Optuna's value of a pruned trial (its last intermediate value), else
    the worst fitness.

    Args:
        blocks: block names, input side first (B ≥ 1).
        population_size: P ≥ 2 (paper 10).
        n_elites: E, 0 ≤ E < P (paper 3).
        n_generations: G ≥ 0 (paper 10). The search has P + G·(P + E) slots.
        seed: sampler seed, ≥ 0.
        mode: ``"batched"`` (parallel, default) or ``"reference"`` (spec §7.10 sequential
            semantics); see :mod:`biotune_optuna.sampler._generations`.
        n_folds: number of data folds; the slot record carries ``fold_of_generation``.
        max_retries: times a slot whose evaluation raised is handed out again before it counts
            as worst.
        max_interruptions: times a slot whose worker was stopped (SIGTERM: the trial carries the
            user attribute ``interrupted``) or died (trial reaped as stale) is handed out again;
            these are not the genome's fault, so they have their own, larger limit.
        claim_timeout: seconds after which an unrefreshed waiting/unclaimed trial stops
            blocking later trials (its worker is presumed dead).
        poll_interval, max_poll_interval: backoff bounds (seconds) while waiting.

    Raises:
        ValueError: on sizes outside the ranges above.

    Example:
        >>> import optuna
        >>> sampler = BioTuneSampler(["a", "b"], population_size=3, n_elites=1, n_generations=1)
        >>> study = optuna.create_study(direction="maximize", sampler=sampler)
        >>> study.optimize(lambda t: t.suggest_float("gene_a", 0, 1), n_trials=7)
        >>> len(study.trials)
        7
    """

    def __init__(
        self,
        blocks: Sequence[str],
        *,
        population_size: int = 10,
        n_elites: int = 3,
        n_generations: int = 10,
        seed: int = 0,
        mode: str = "batched",
        n_folds: int = 1,
        max_retries: int = 2,
        max_interruptions: int = 10,
        claim_timeout: float = 120.0,
        poll_interval: float = 0.2,
        max_poll_interval: float = 10.0,
    ) -> None:
        self.blocks = tuple(blocks)
        self.config = GAConfig(len(self.blocks), population_size, n_elites, n_generations, seed, mode)
        if n_folds < 1:
            raise ValueError(f"n_folds must be ≥ 1, got {n_folds}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be ≥ 0, got {max_retries}")
        self.n_folds = n_folds
        self.max_retries = max_retries
        self.max_interruptions = max_interruptions
        self.claim_timeout = claim_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._space = {name: FloatDistribution(0.0, 1.0) for name in param_names(self.blocks)}
        self._claims: dict[int, dict] = {}
        self._cache: dict = {}
        self._tallies: dict[int, _Tally] = {}
        self._warned: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._fallback = RandomSampler(seed=seed)

    # ---------------------------------------------------------------- state from storage
    def _fitness(self, study: optuna.Study, value: float) -> float:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        return 1.0 - value if maximize else value

    def _fold(self, study: optuna.Study, t: FrozenTrial, tally: _Tally, held: set | None) -> None:
        """Add one trial to ``tally`` (and a RUNNING one's slot to ``held``)."""
        rec = t.system_attrs.get(SLOT_ATTR)
        if not rec or rec.get("state") != "claimed":
            return
        key = (rec["generation"], rec["slot"])
        if t.state == TrialState.COMPLETE and t.value is not None:
            tally.results.setdefault(key, self._fitness(study, t.value))
        elif t.state == TrialState.PRUNED:
            value = t.user_attrs.get(PRUNED_VALUE_ATTR, t.value)
            tally.results.setdefault(key, WORST_FITNESS if value is None else self._fitness(study, value))
        elif t.state == TrialState.RUNNING and held is not None:
            held.add(key)
        elif t.state == TrialState.FAIL:
            if t.system_attrs.get(FAILED_ATTR) and not t.user_attrs.get("interrupted"):
                tally.failures[key] += 1  # the evaluation itself failed (exception, NaN…)
            else:
                tally.interruptions[key] += 1  # worker stopped or died: not the genome's fault

    def _tally(
        self, study: optuna.Study, trials: Sequence[FrozenTrial], exclude: int | None = None
    ) -> tuple[SearchState, set, dict]:
        """Search state, slots taken (resolved or held by a RUNNING trial), failure counts.

        ``trials`` is the study's trial list sorted by number (``trials[i].number == i``), as
        the storage returns it. The longest prefix of finished trials is folded in once and
        kept (finished trials never change), so a call costs O(trials after the oldest
        unfinished one + population), not O(history). ``exclude``: a trial id to ignore.
        """
        base = self._tallies.get(study._study_id)
        if base is None or not trials or trials[-1].number != len(trials) - 1 or base.upto > len(trials):
            base = self._tallies[study._study_id] = _Tally()
        i = base.upto
        while i < len(trials) and trials[i].state.is_finished() and trials[i]._trial_id != exclude:
            self._fold(study, trials[i], base, None)
            i += 1
        base.upto = i
        tally, held = base.copy(), set()
        for t in trials[i:]:
            if t._trial_id != exclude:
                self._fold(study, t, tally, held)
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
                results[key] = WORST_FITNESS
        state = search_state(self.config, results, self._cache)
        return state, held | set(results), dict(tally.failures)

    def search_state(self, study: optuna.Study) -> SearchState:
        """Replay the study's finished trials and return where the search stands."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        with self._lock:
            return self._tally(study, trials)[0]

    def free_slots(self, study: optuna.Study) -> list:
        """Proposals of the open generation that no COMPLETE or RUNNING trial holds (and that
        are not given up), in slot order — what the next trial would be offered."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        with self._lock:
            state, taken, _ = self._tally(study, trials)
        return [p for p in state.proposals if p is not None and (p.generation, p.slot) not in taken]

    # ---------------------------------------------------------------- Optuna API
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        rec = self._claims.get(trial._trial_id)
        if rec is None:
            rec = study._storage.get_trial_system_attrs(trial._trial_id).get(SLOT_ATTR)
        if rec is None:
            return {}  # not ours (enqueued trial): fall back to sample_independent
        if rec["state"] == "finished":
            raise optuna.TrialPruned("the BioTune search is finished: no slot left for this trial")
        params = params_from_genome(rec["genome"], self.blocks)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name not in self._space:
            _logger.warning("param %r is not part of the BioTune genome: sampled uniformly", param_name)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's signature
        # Not called for trials reaped as stale: those count as interruptions, not failures.
        if state == TrialState.FAIL and trial._trial_id in self._claims:
            study._storage.set_trial_system_attr(trial._trial_id, FAILED_ATTR, True)
        self._claims.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    # ---------------------------------------------------------------- slot claims
    def _blocks_later_trials(self, t: FrozenTrial, now: float) -> bool:
        if t.state != TrialState.RUNNING:
            return False
        rec = t.system_attrs.get(SLOT_ATTR)
        if rec is None:
            if "fixed_params" in t.system_attrs:
                return False
            age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            return age < self.claim_timeout
        return rec["state"] == "waiting" and now - rec["at"] < self.claim_timeout

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:
            return  # an enqueued trial: evaluated as given, outside the generations
        try:
            self._wait_and_claim(study, trial)
        except KeyboardInterrupt:
            # Stopped (SIGINT/SIGTERM) while waiting inside ask(): Optuna will not fail this trial
            # itself, so do it here, or it would stay RUNNING and block later trials.
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            raise

    def _wait_and_claim(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # No record yet reads as "waiting since the trial started" (see _blocks_later_trials): the
        # record is first written when a wait outlasts claim_timeout / 4, which saves a round trip.
        storage, trial_id = study._storage, trial._trial_id
        delay, refreshed, told = self.poll_interval, time.time(), 0.0
        while True:
            now = time.time()
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            with self._lock:  # trials before the oldest unfinished one cannot block
                start = self._tallies[study._study_id].upto if study._study_id in self._tallies else 0
            earlier_waiting = any(self._blocks_later_trials(t, now) for t in trials[start : trial.number])
            if not earlier_waiting:
                with self._lock:
                    state, taken, _ = self._tally(study, trials, exclude=trial_id)
                if state.finished:
                    storage.set_trial_system_attr(trial_id, SLOT_ATTR, {"state": "finished"})
                    self._claims[trial_id] = {"state": "finished"}
                    try:
                        study.stop()
                    except RuntimeError:
                        pass  # not inside optimize(): the trial is pruned at its first suggest
                    return
                free = [p for p in state.proposals if p is not None and (p.generation, p.slot) not in taken]
                if free:
                    self._claim(study, trial_id, free[0])
                    return
                if now - told > 30.0:
                    _logger.info(
                        "trial %d waits: generation %d has no free slot until running trials finish",
                        trial.number,
                        state.generation,
                    )
                    told = now
            if now - refreshed > self.claim_timeout / 4:
                storage.set_trial_system_attr(trial_id, SLOT_ATTR, {"state": "waiting", "at": now})
                refreshed = now
            if is_heartbeat_enabled(storage):  # Optuna's heartbeat thread starts only after ask()
                storage.record_heartbeat(trial_id)
            time.sleep(min(delay, self.claim_timeout / 4))
            delay = min(delay * 1.5, self.max_poll_interval)

    def _claim(self, study: optuna.Study, trial_id: int, proposal) -> None:  # noqa: ANN001
        record = {
            "state": "claimed",
            "generation": proposal.generation,
            "slot": proposal.slot,
            "role": proposal.role,
            "parents": [list(p) for p in proposal.parents],
            "genome": list(proposal.genome),
            "fold": fold_of_generation(proposal.generation, self.n_folds),
        }
        if is_heartbeat_enabled(study._storage):
            # Beat before claiming: a claimed RUNNING trial without any heartbeat row is never
            # stale to fail_stale_trials, so if the database went away between the claim and
            # Optuna's first beat (its thread starts after ask()), the slot would be held forever.
            study._storage.record_heartbeat(trial_id)
        study._storage.set_trial_system_attr(trial_id, SLOT_ATTR, record)
        self._claims[trial_id] = record
        # A readable copy for people (dashboard); bookkeeping uses the record alone.
        study._storage.set_trial_user_attr(trial_id, SLOT_USER_ATTR, {k: record[k] for k in ("generation", "slot", "role", "fold")})
