"""BioTuneSampler: BioTune's evolutionary search as an Optuna sampler.

How a trial gets its genome (DESIGN.md, "Sampler" contracts):

1. ``before_trial`` waits until every lower-numbered RUNNING trial has claimed a slot (a
   predecessor that has neither claimed nor refreshed its ``waiting`` record — ONE trial system
   attribute, :data:`~biotune_optuna.study.attrs.SLOT`, written only when a wait is long — for ``claim_timeout``
   seconds since it started or last refreshed is presumed dead and stops blocking).
2. It replays the search from the finished trials (:func:`search_state`) and claims, among the
   slots of the open generation that no COMPLETE or RUNNING trial holds, the one expected to
   take longest (:func:`longest_first`; ties: the lowest slot), writing the whole
   proposal (generation, slot, role, parents, genome, fold) into the same attribute.
3. If every slot of the open generation is held, it waits with backoff (and says so) until
   the generation closes; it never evaluates a slot twice. Waiting on an earlier trial's claim
   polls fast (:data:`CLAIM_POLL`: claims take milliseconds); waiting on a generation backs off
   to a tenth of the typical trial's duration, at most ``max_poll_interval``
   (:func:`generation_wait_cap`). A slot whose trial FAILED is free
   again, up to ``max_retries`` times when the evaluation raised and ``max_interruptions``
   times when its worker was stopped or died; then it counts with the worst fitness (and a
   warning).
4. ``sample_relative`` returns the claimed genome as params ``gene_<block>`` / ``threshold``.

What a trial claims is a *work unit*: a whole slot, or — with ``units_per_slot = S > 1`` (the
study config's ``work_unit = "seed"``) — one (slot, seed) pair, so that a generation offers
(P + E)·S units at once instead of P + E trials (issue 13). Everything above then reads "unit"
for "slot": a unit is claimed once, retried alone, and the slot resolves when all S are in.

Trial numbers are handed out by the storage in one serialised order, so "wait for every lower
number, then take the lowest free slot" gives each slot to exactly one live trial.

When the search is finished, a new trial records ``finished`` (and says so in the user
attribute :data:`~biotune_optuna.study.attrs.NOT_AN_EVALUATION`), asks ``study.stop()`` and is
pruned at its first ``suggest`` call. ``run`` (:class:`~biotune_optuna.study.pacing.StopWhenFinished`)
and workers look before they ask, so only the loser of a race for the very last slot makes one.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from biotune_optuna.config import check_int
from biotune_optuna.search import GAConfig, SearchState, param_names, params_from_genome, search_state
from biotune_optuna.search.capacity import work_key
from biotune_optuna.search.generations import Proposal
from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.attrs import SlotRecord
from biotune_optuna.study.retry import Backoff
from biotune_optuna.study.tally import Ledger

_logger = logging.getLogger(__name__)

#: (first, longest) pause in seconds while an earlier trial claims its slot: claims land in milliseconds.
CLAIM_POLL = (0.005, 0.05)

#: Why a trial that found the search finished is pruned (its user attribute NOT_AN_EVALUATION).
NO_SLOT_LEFT = "the BioTune search was already finished when this trial started: no slot, nothing trained"


def fold_of_generation(generation: int, n_folds: int) -> int:
    """The data fold a generation is evaluated on (spec §5.1).

    The initial population (generation 0) and the first generation use fold 0; generation
    g ≥ 1 uses fold ``(g − 1) mod n_folds`` (spec: "init + gen 0 → fold 0, gen 1 → fold 1").
    """
    return max(0, generation - 1) % max(1, n_folds)


class Unit(NamedTuple):
    """A unit of work a trial claims: one slot's proposal and, when a slot is evaluated as one
    trial per seed, the index of the seed (None: the trial fine-tunes with every seed)."""

    proposal: Proposal
    seed: int | None = None


def longest_first(free: Sequence[Proposal] | Sequence[Unit]) -> Proposal | Unit:
    """The free slot (or unit) a claiming trial takes: the one expected to take longest, so that
    a generation's slowest trials start first and its tail is short (issue 13, item 2).

    Args:
        free: proposals of the open generation that nobody holds, or its free :class:`Unit` values;
            non-empty.

    Returns:
        The element with the largest :func:`~biotune_optuna.search.capacity.work_key` of its
        genome (longest back-propagation span, then most fine-tuned blocks); ties by lowest
        slot, then lowest seed index. Only which free unit a trial takes depends on this: every
        slot's genome is still a pure function of (seed, generation, slot, results).
    """

    def key(item: Proposal | Unit) -> tuple:
        proposal, seed = (item.proposal, item.seed or 0) if isinstance(item, Unit) else (item, 0)
        return (*(-k for k in work_key(proposal.genome)), proposal.slot, seed)

    return min(free, key=key)


def generation_wait_cap(trials: Sequence[FrozenTrial], maximum: float, recent: int = 20) -> float:
    """The longest pause (s) of a trial waiting for the open generation's running trials:
    a tenth of the median duration of the last ``recent`` COMPLETE trials, at most ``maximum``
    (and ``maximum`` before any trial completed). Fine-tunes of minutes keep a waiting trial at
    ``maximum`` (quiet on the database); trials of milliseconds (a cheap objective) are not left
    sleeping through many generations' worth of work."""
    done = [t.duration.total_seconds() for t in trials[::-1] if t.state == TrialState.COMPLETE and t.duration is not None][:recent]
    if not done:
        return maximum
    return min(maximum, 0.1 * statistics.median(done))


def _is_waiting(t: FrozenTrial) -> bool:
    """True for a trial whose slot record says it waits for the generation (not claiming now)."""
    rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
    return rec is not None and rec.state == "waiting"


def _started(trial: FrozenTrial) -> float:
    """When ``trial`` started, seconds since the epoch (now if unknown)."""
    return trial.datetime_start.timestamp() if trial.datetime_start else time.time()


def slot_record(trial: optuna.trial.BaseTrial | FrozenTrial) -> SlotRecord | None:
    """The slot record of a trial, or None for a trial BioTuneSampler did not handle (e.g.
    enqueued). A live trial's record is read from storage."""
    if isinstance(trial, FrozenTrial):
        return SlotRecord.from_attr(trial.system_attrs.get(attrs.SLOT))
    return SlotRecord.from_attr(_optuna.trial_system_attrs(trial).get(attrs.SLOT))


class BioTuneSampler(BaseSampler):
    """Evolutionary freeze / learning-rate search of BioTune (spec/biotune-algorithm.md §7).

    Proposes whole genomes over the params ``gene_<block>`` and ``threshold`` (each
    ``FloatDistribution(0, 1)``). Proposals are a pure function of (seed, generation, slot,
    finished results of earlier generations): the same study gives the same genomes whatever
    the number of workers, their speed and the order in which trials finish. Works in a plain
    ``study.optimize`` (also with ``n_jobs > 1``) and with many processes on one storage.

    The objective's value is read as fitness Φ = 1 − value in a maximised study (a validation
    accuracy in [0, 1]) and Φ = value in a minimised one (a loss ≥ 0). A PRUNED trial counts with
    the value in its user attribute :data:`~biotune_optuna.study.attrs.PRUNED_VALUE` (BioTune's objective sets the mean
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
            semantics); see :mod:`biotune_optuna.search.generations`.
        n_folds: number of data folds; the slot record carries ``fold_of_generation``.
        units_per_slot: trials that evaluate one slot, ≥ 1. With 1 (default) a trial evaluates
            its slot with every fine-tuning seed. With S > 1 (one per seed: ``StudyConfig.
            work_unit == "seed"``) a slot is S work units: each trial's slot record carries the
            index of its seed (``SlotRecord.seed``), so S workers can evaluate one genome at once,
            and the slot's fitness is the mean of its units' once all are in (spec §6
            unchanged). Retries, interruptions and the worst fitness apply per unit.
        max_retries: times a slot whose evaluation raised is handed out again before it counts
            as worst.
        max_interruptions: times a slot whose worker was stopped (SIGTERM: the trial carries the
            user attribute ``interrupted``) or died (trial reaped as stale) is handed out again;
            these are not the genome's fault, so they have their own, larger limit.
        claim_timeout: seconds after which an unrefreshed waiting/unclaimed trial stops
            blocking later trials (its worker is presumed dead).
        poll_interval, max_poll_interval: backoff bounds (seconds) while waiting.

    Raises:
        ConfigError: (a ValueError) on sizes outside the ranges above.

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
        units_per_slot: int = 1,
        max_retries: int = 2,
        max_interruptions: int = 10,
        claim_timeout: float = 120.0,
        poll_interval: float = 0.2,
        max_poll_interval: float = 10.0,
    ) -> None:
        self.blocks = tuple(blocks)
        self.config = GAConfig(len(self.blocks), population_size, n_elites, n_generations, seed, mode)
        check_int("folds", n_folds, 1)
        check_int("max retries", max_retries, 0)
        check_int("units per slot", units_per_slot, 1)
        self.n_folds = n_folds
        self.units_per_slot = units_per_slot
        self.max_retries = max_retries
        self.max_interruptions = max_interruptions
        self.claim_timeout = claim_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._space = {name: FloatDistribution(0.0, 1.0) for name in param_names(self.blocks)}
        # Per-study state, keyed by _key(study) = (id(storage), study id): in-memory studies all
        # have study id 0, so the id alone would let a reused sampler carry one study's
        # generations into the next. Entries of a storage go when the storage is collected
        # (before its id can be reused). Claims are keyed by (id(storage), trial id) likewise.
        self._claims: dict[tuple[int, int], SlotRecord] = {}
        self._cache: dict[tuple[int, int], dict] = {}
        self._ledgers: dict[tuple[int, int], Ledger] = {}
        self._storages: dict[int, weakref.ref] = {}
        self._lock = threading.Lock()
        self._fallback = RandomSampler(seed=seed)

    # ---------------------------------------------------------------- state from storage
    def _key(self, study: optuna.Study, trial_id: int | None = None) -> tuple[int, int]:
        """``(id(storage), study id)`` of ``study`` — or ``(id(storage), trial_id)`` for a claim."""
        storage = _optuna.storage_of(study)
        sid = id(storage)
        if sid not in self._storages:
            self._storages[sid] = weakref.ref(storage, lambda _ref, sid=sid: self._forget(sid))
        return (sid, _optuna.study_id(study) if trial_id is None else trial_id)

    def _forget(self, sid: int) -> None:
        """Drop the state of a collected storage (its id may be reused by a new one)."""
        for table in (self._claims, self._cache, self._ledgers):
            for key in [k for k in tuple(table) if k[0] == sid]:
                table.pop(key, None)
        self._storages.pop(sid, None)

    def _tally(
        self, study: optuna.Study, trials: Sequence[FrozenTrial], exclude: int | None = None
    ) -> tuple[SearchState, set, dict]:
        """Search state, units taken (resolved or held by a RUNNING trial), failure counts.

        ``trials``: the study's trials sorted by number; ``exclude``: a trial id to ignore.
        """
        key = self._key(study)
        ledger = self._ledgers.setdefault(key, Ledger(self.max_retries, self.max_interruptions, self.units_per_slot))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        results, taken, failures = ledger.read(trials, maximize, exclude)
        return search_state(self.config, results, self._cache.setdefault(key, {})), taken, failures

    def search_state(self, study: optuna.Study) -> SearchState:
        """Replay the study's finished trials and return where the search stands."""
        trials = _optuna.all_trials(study)
        with self._lock:
            return self._tally(study, trials)[0]

    def progress(self, study: optuna.Study) -> tuple[int, int]:
        """``(units resolved, units of the whole search)``: trials' worth of work done so far
        (evaluated, given up as worst, or skipped hill climbs × ``units_per_slot``) out of
        (P + G·(P + E)) × ``units_per_slot`` — an upper bound until the search ends, when the
        two are equal (skipped slots count as resolved)."""
        trials = _optuna.all_trials(study)
        with self._lock:
            state = self._tally(study, trials)[0]
            done = self._ledgers[self._key(study)].resolved_units
        total = self.config.n_evaluations * self.units_per_slot
        return (total if state.finished else done + len(state.skipped) * self.units_per_slot), total

    def free_units(self, study: optuna.Study) -> list[Unit]:
        """Units of the open generation that no COMPLETE or RUNNING trial holds (and that are
        not given up), in slot then seed order — what the next trial would be offered."""
        trials = _optuna.all_trials(study)
        with self._lock:
            state, taken, _ = self._tally(study, trials)
        return self._free(state, taken)

    def _free(self, state: SearchState, taken: set) -> list[Unit]:
        if self.units_per_slot == 1:
            return [Unit(p) for p in state.proposals if p is not None and (p.generation, p.slot, 0) not in taken]
        return [
            Unit(p, seed)
            for p in state.proposals
            if p is not None
            for seed in range(self.units_per_slot)
            if (p.generation, p.slot, seed) not in taken
        ]

    # ---------------------------------------------------------------- Optuna API
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        tid = _optuna.trial_id(trial)
        rec = self._claims.get(self._key(study, tid)) or SlotRecord.from_attr(_optuna.storage_of(study).get_trial_system_attrs(tid).get(attrs.SLOT))
        if rec is None:
            return {}  # not ours (enqueued trial): fall back to sample_independent
        if rec.state == "finished":
            raise optuna.TrialPruned(NO_SLOT_LEFT)
        params = params_from_genome(rec.genome, self.blocks)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name not in self._space:
            _logger.warning("param %r is not part of the BioTune genome: sampled uniformly", param_name)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's signature
        # Not called for trials reaped as stale: those count as interruptions, not failures.
        key = self._key(study, _optuna.trial_id(trial))
        if state == TrialState.FAIL and key in self._claims:
            _optuna.set_system_attr(study, _optuna.trial_id(trial), attrs.FAILED, True)
        self._claims.pop(key, None)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    # ---------------------------------------------------------------- slot claims
    def _blocks_later_trials(self, t: FrozenTrial, now: float) -> bool:
        if t.state != TrialState.RUNNING:
            return False
        rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
        if rec is None:
            if "fixed_params" in t.system_attrs:
                return False
            age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            return age < self.claim_timeout
        return rec.state == "waiting" and now - rec.at < self.claim_timeout

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:
            return  # an enqueued trial: evaluated as given, outside the generations
        try:
            self._wait_and_claim(study, trial)
        except KeyboardInterrupt:
            # Stopped (SIGINT/SIGTERM) while waiting inside ask(): Optuna will not fail this trial
            # itself, so do it here, or it would stay RUNNING and block later trials.
            _optuna.set_user_attr(study, _optuna.trial_id(trial), attrs.INTERRUPTED, True)
            _optuna.fail_trial(study, _optuna.trial_id(trial))
            raise

    def _wait_and_claim(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # No record yet reads as "claiming since the trial started" (see _blocks_later_trials): the
        # "waiting" record is first written when the trial waits for the generation, or when its
        # wait in line outlasts claim_timeout / 4 (a trial that claims at once writes only its claim).
        trial_id = _optuna.trial_id(trial)
        refreshed, told, beaten = None, 0.0, 0.0
        # Two waits, two paces: an earlier trial's claim lands within milliseconds, so that wait
        # polls fast (CLAIM_POLL); a generation with nothing free waits for its running trials,
        # so that one backs off to generation_wait_cap (max_poll_interval for fine-tunes of
        # minutes: quiet on the database). A trial that waits for the generation says so at
        # once (its "waiting" record), and trials in line behind waiting trials wait at the
        # generation's pace too: a crowd in line does not poll fast.
        claiming = Backoff(*CLAIM_POLL, 1.5)
        pause = Backoff(self.poll_interval, self.max_poll_interval, 1.5)
        while True:
            now = time.time()
            trials = _optuna.all_trials(study)
            with self._lock:  # trials before the oldest unfinished one cannot block
                ledger = self._ledgers.get(self._key(study))
                start = ledger.upto if ledger is not None else 0
            wait, cap = claiming, self.claim_timeout / 4
            blockers = [t for t in trials[start : trial.number] if self._blocks_later_trials(t, now)]
            if blockers and all(_is_waiting(t) for t in blockers):  # in line behind the generation
                wait, cap = pause, min(cap, generation_wait_cap(trials, self.max_poll_interval))
            if not blockers:
                claiming.reset()
                with self._lock:
                    state, taken, _ = self._tally(study, trials, exclude=trial_id)
                if state.finished:
                    self._record(study, trial_id, SlotRecord("finished"))
                    _optuna.set_user_attr(study, trial_id, attrs.NOT_AN_EVALUATION, NO_SLOT_LEFT)
                    try:
                        study.stop()
                    except RuntimeError:
                        pass  # not inside optimize(): the trial is pruned at its first suggest
                    return
                free = self._free(state, taken)
                if free:
                    self._claim(study, trial_id, longest_first(free))
                    return
                if now - told > 30.0:
                    _logger.info(
                        "trial %d waits: generation %d has nothing free until running trials finish",
                        trial.number,
                        state.generation,
                    )
                    told = now
                wait, cap = pause, min(cap, generation_wait_cap(trials, self.max_poll_interval))
            since = _started(trial) if refreshed is None else refreshed
            if (wait is pause and refreshed is None) or now - since > self.claim_timeout / 4:  # say so / stay alive
                _optuna.set_system_attr(study, trial_id, attrs.SLOT, SlotRecord("waiting", at=now).to_attr())
                refreshed = now
            if now - beaten >= 1.0:  # Optuna's heartbeat thread starts only after ask()
                _optuna.record_heartbeat(study, trial_id)
                beaten = now
            wait.sleep(cap=cap)

    def _record(self, study: optuna.Study, trial_id: int, record: SlotRecord) -> None:
        _optuna.set_system_attr(study, trial_id, attrs.SLOT, record.to_attr())
        self._claims[self._key(study, trial_id)] = record

    def _claim(self, study: optuna.Study, trial_id: int, unit: Unit) -> None:
        proposal = unit.proposal
        record = SlotRecord(
            "claimed",
            generation=proposal.generation,
            slot=proposal.slot,
            role=proposal.role,
            parents=tuple(tuple(p) for p in proposal.parents),
            genome=tuple(proposal.genome),
            fold=fold_of_generation(proposal.generation, self.n_folds),
            seed=unit.seed,
        )
        # Beat before claiming: a claimed RUNNING trial without any heartbeat row is never
        # stale to fail_stale_trials, so if the database went away between the claim and
        # Optuna's first beat (its thread starts after ask()), the slot would be held forever.
        _optuna.record_heartbeat(study, trial_id)
        self._record(study, trial_id, record)
        # A readable copy for people (dashboard); bookkeeping uses the record alone.
        _optuna.set_user_attr(study, trial_id, attrs.SLOT_COPY, record.readable())
