"""Scale-out: how the BioTune search and the final protocol keep N workers busy (issue 13, item 5).

Simulation (virtual clock, no sleeping), for N = 1, 4, 8, 16, 32, 64, 256 workers:

* the search, with the project's own slot logic — ``GAConfig`` / ``search_state`` open each
  generation's proposals from the results of the closed ones, ``work_key`` orders them
  longest first as the sampler does — and a replica of how workers claim today: the worker
  loop polls with its Backoff (0.5 s → 10 s), creates a trial when a slot looks free, and the
  trial's ``before_trial`` waits until every lower-numbered trial has claimed (FIFO; polling
  with the sampler's ``CLAIM_POLL``), or for a generation with nothing free (backing off to a
  tenth of the median trial), then claims; the worker whose trial closed a generation redraws
  the dashboard pages; ``poll_s``, ``claim_s`` (time in ``before_trial``), ``tell_s`` and
  ``publish_s`` are measured latencies. Work units are (i) whole trials, as today, or (ii) one (trial, seed) each, a
  trial's value known once all its seeds are in; each taken in slot order or longest first.
* the final protocol (spec §8): its (configuration, seed) units (``report/units.py``),
  listed order or longest first, claims one at a time.

A unit's duration: one seed of one genome takes ``floor + (1 − floor) · s`` full fine-tunes,
``s`` = the share of the forward FLOPs from the genome's first fine-tuned block to the output
(the backward goes down to that block), ``floor`` = 0.28 = a head-only fine-tune over a full one
(bench/README.md: head-only 7.9 s uncached against 16.7 s for the first half frozen, which is
0.593 of a full fine-tune per step by the training-speed bench). The same model gives 0.70 for
Lite0's first-half-frozen genome (measured 0.59) and 0.37 for its last three blocks (0.36).

Real runs (``real=`` lines): N = 2, 4, 8 ``run_worker`` processes on PostgreSQL, a sleep
objective with the same durations, BioTuneSampler as it is; the simulation of the same run
(measured latencies, measured worker start times) beside it, and RandomSampler in plain
``study.optimize`` processes on the same budget.

    .venv/bin/python bench/scale_out.py --simulate-only     # seconds, no database
    .venv/bin/python bench/scale_out.py                     # + real runs, ~12 min
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from biotune_optuna.search import GAConfig, Proposal, fitness_of, search_state
from biotune_optuna.search.capacity import backprop_span, work_key
from biotune_optuna.search.operators import random_genome, slot_rng
from biotune_optuna.study.retry import Backoff
from biotune_optuna.study.sampler import CLAIM_POLL

WORKERS = (1, 4, 8, 16, 32, 64, 256)
FLOOR = 0.28
#: Per-block forward FLOP shares, input block first (torch.utils.flop_counter, one image, eval,
#: new 10-class head; ``python bench/scale_out.py --flops`` recomputes them).
SHARES = {
    "resnet50": (0.029, 0.163, 0.251, 0.358, 0.198, 0.0),  # 224 px: stem, layer1-4, fc
    "tf_efficientnet_lite0": (0.028, 0.026, 0.143, 0.099, 0.113, 0.224, 0.237, 0.077, 0.052, 0.0001),  # 64 px
}


@dataclass(frozen=True)
class Setting:
    """A search to simulate: model (for block FLOP shares), sizes, seeds, and the seconds of one
    full fine-tune of one seed on one fold (a final retraining uses the whole training split:
    ``n_folds`` × that)."""

    name: str
    model: str
    population: int
    elites: int
    generations: int
    seeds: int
    ft_seconds: float
    n_folds: int = 2


SETTINGS = (
    Setting("paper", "resnet50", 10, 3, 10, 3, ft_seconds=300.0),
    Setting("quick", "tf_efficientnet_lite0", 5, 1, 2, 1, ft_seconds=30.0),
)


def unit_cost(genome: Sequence[float], shares: Sequence[float], floor: float = FLOOR) -> float:
    """Full fine-tunes that one seed of ``genome`` costs: 0 when nothing trains, else in [floor, 1]."""
    span = backprop_span(genome)
    return 0.0 if span == 0 else floor + (1.0 - floor) * sum(shares[len(shares) - span :])


def value_of_genome(genome: Sequence[float]) -> float:
    """The sleep objective's value (maximised): 1 − mean squared distance of the genes to 0.6."""
    return 1.0 - sum((g - 0.6) ** 2 for g in genome) / len(genome)


@dataclass(frozen=True)
class Timing:
    """Latencies of the claim path, seconds, and the Backoff (first, max, factor) of each wait.

    poll_s: the worker loop's poll (reap stale trials, replay, free slots) and trial creation.
    claim_s: one pass of ``before_trial`` (read, then the claim's writes); serialised: a trial
        claims only after every lower-numbered one has.
    tell_s: the rest of a trial outside the objective's work (suggests, attributes, tell).
    publish_s: drawing the dashboard pages of a closed generation (worker.py ``publish_quietly``),
        paid by the worker whose trial closed it, before its next poll (``_Loop._redraw_if_due``).

    A trial waiting in ``before_trial`` for an earlier trial's claim polls with ``claiming``; one
    waiting for a generation with nothing free polls with ``wait``, capped at a tenth of the
    median duration of the trials finished so far (the sampler's ``generation_wait_cap``).
    """

    poll_s: float = 0.25
    claim_s: float = 0.30
    tell_s: float = 0.25
    publish_s: float = 2.0
    idle: tuple[float, float, float] = (0.5, 10.0, 1.5)  # worker.py _Loop: no slot free
    wait: tuple[float, float, float] = (0.2, 10.0, 1.5)  # sampler: before_trial, nothing free in the generation
    claiming: tuple[float, float, float] = (*CLAIM_POLL, 1.5)  # sampler: before_trial, an earlier trial claims


class _Poller:
    """Decision instants of a loop that polls with the project's Backoff: after a miss at ``r``
    it sleeps the next pause, then pays ``cost`` before it decides again."""

    def __init__(self, backoff: tuple[float, float, float], cost: float, r: float, cap: float | None = None) -> None:
        self.backoff, self.cost, self.r = Backoff(*backoff), cost, r
        self.cap = backoff[1] if cap is None else min(backoff[1], cap)
        self.capped = 0

    def next_at_or_after(self, t: float) -> float:
        self.r += self._pause()
        while self.r < t:
            if self.capped >= 2:  # deterministic pauses at the cap: jump
                period = self.cap + self.cost
                self.r += period * -(-(t - self.r) // period)
                break
            self.r += self._pause()
        return self.r

    def _pause(self) -> float:
        pause = min(self.backoff.next(), self.cap)
        self.capped = self.capped + 1 if pause == self.cap else 0
        return pause + self.cost


Unit = tuple[int, int, int]  # generation, slot, seed (−1: every seed, a whole trial)


class Search:
    """Event simulation of one search with ``n_workers`` workers (see module docstring).

    Args:
        ga: the search's sizes and seed.
        seconds: ``seconds(proposal, i)``, seconds of seed ``i``'s fine-tune of a proposal.
        n_seeds: seeds per evaluation.
        per_seed: units are (trial, seed) rather than whole trials.
        order: ``"slot"`` or ``"longest"`` (``work_key`` of the genome, ties by slot, seed).
        starts: when each worker's first poll begins (seconds); len = number of workers.
    """

    def __init__(self, ga: GAConfig, seconds: Callable, n_seeds: int, per_seed: bool, order: str,
                 timing: Timing, starts: Sequence[float]) -> None:
        self.ga, self.seconds, self.n_seeds, self.per_seed, self.t = ga, seconds, n_seeds, per_seed, timing
        self.key = (lambda u, p: (u[1], u[2])) if order == "slot" else (lambda u, p: (*(-k for k in work_key(p.genome)), u[1], u[2]))
        self.results, self.cache = {}, {}
        self.held: set[Unit] = set()  # claimed and running
        self.parts: set[Unit] = set()  # done
        self.state = search_state(ga, {}, self.cache)
        self.fifo: list[int] = []  # trials created and not yet claimed (or given up), by number
        self.idle: dict[int, _Poller] = {}  # worker → its loop's poller, while no slot looked free
        self.blocked: dict[int, tuple[int, _Poller]] = {}  # trial → (worker, poller) inside before_trial
        self.durations: list[float] = []  # of finished trials (the generation wait's cap)
        self.heap: list = []
        self.seq = self.trials = 0
        self.work = self.end = 0.0
        self.n_workers = len(starts)
        for w, start in enumerate(starts):
            self._at(start + timing.poll_s, self._poll, w)

    def run(self) -> Search:
        while self.heap and not self.state.finished:
            now, _, fn, args = heapq.heappop(self.heap)
            fn(now, *args)
        return self

    def _at(self, when: float, fn: Callable, *args) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, fn, args))

    def _free(self) -> list[tuple[Unit, Proposal]]:
        seeds = range(self.n_seeds) if self.per_seed else (-1,)
        return [((p.generation, p.slot, i), p) for p in self.state.proposals if p is not None
                for i in seeds if (p.generation, p.slot, i) not in self.held and (p.generation, p.slot, i) not in self.parts]

    def _poll(self, now: float, w: int) -> None:  # worker loop: a slot free? then a new trial
        if not self._free():
            poller = self.idle.get(w) or _Poller(self.t.idle, self.t.poll_s, now)
            poller.r, self.idle[w] = now, poller
            return
        self.idle.pop(w, None)  # the loop's backoff starts over
        self.trials += 1
        self.fifo.append(self.trials)
        self._before_trial(now, w, self.trials)

    def _before_trial(self, now: float, w: int, k: int) -> None:
        if self.fifo[0] != k:  # an earlier trial has not claimed yet
            self.blocked[k] = (w, _Poller(self.t.claiming, self.t.claim_s, now))
            return
        free = self._free()
        if not free:  # nothing free until the generation's running trials finish
            cap = 0.1 * statistics.median(self.durations) if self.durations else None
            self.blocked[k] = (w, _Poller(self.t.wait, self.t.claim_s, now, cap))
            return
        unit, proposal = min(free, key=lambda up: self.key(*up))  # later trials wait for this claim
        self._at(now + self.t.claim_s, self._claimed, w, k, unit, proposal)

    def _claimed(self, now: float, w: int, k: int, unit: Unit, proposal: Proposal) -> None:
        self.fifo.pop(0)
        self.held.add(unit)
        seeds = range(self.n_seeds) if unit[2] < 0 else (unit[2],)
        busy = sum(self.seconds(proposal, i) for i in seeds)
        self.work += busy
        self.durations.append(busy + self.t.claim_s + self.t.tell_s)
        self._at(now + busy + self.t.tell_s, self._done, w, unit, proposal)
        self._wake_head(now)

    def _done(self, now: float, w: int, unit: Unit, proposal: Proposal) -> None:
        self.held.discard(unit)
        self.parts.add(unit)
        key = unit[:2]
        if unit[2] < 0 or all((*key, i) in self.parts for i in range(self.n_seeds)):
            self.results[key] = fitness_of(value_of_genome(proposal.genome), True)
            self.end = now
            g = key[0]  # batched: proposals change only when the whole generation is in
            if all((g, s) in self.results for s in range(self.ga.n_slots(g))):
                self.state = search_state(self.ga, self.results, self.cache)
                for v, poller in list(self.idle.items()):
                    self._at(poller.next_at_or_after(now), self._poll, v)
                self.idle.clear()
                self._wake_head(now)
                self._at(now + self.t.poll_s + self.t.publish_s, self._poll, w)  # this worker redraws the pages
                return
        self._at(now + self.t.poll_s, self._poll, w)

    def _wake_head(self, now: float) -> None:
        if self.fifo and self.fifo[0] in self.blocked:
            k = self.fifo[0]
            w, poller = self.blocked.pop(k)
            self._at(poller.next_at_or_after(now), self._before_trial, w, k)

    @property
    def utilisation(self) -> float:
        """Work done / (workers × wall time): 1 when every worker trains all the time."""
        return self.work / (self.end * self.n_workers)


def final_protocol(durations: Sequence[float], n_workers: int, order: str, claim_s: float) -> float:
    """Wall time of the final protocol's independent retrainings on ``n_workers`` workers,
    each free worker taking the next unit (``"listed"`` order or ``"longest"`` first), claims
    one at a time (``claim_s`` each)."""
    units = list(durations) if order == "listed" else sorted(durations, reverse=True)
    free_at, last_claim, end = [0.0] * n_workers, 0.0, 0.0
    for d in units:
        start = last_claim = max(heapq.heappop(free_at), last_claim) + claim_s
        end = max(end, start + d)
        heapq.heappush(free_at, start + d)
    return end


def final_units(setting: Setting, best: Sequence[float], shares: Sequence[float], methods: str) -> list[float]:
    """Seconds of each (configuration, seed) unit of the final protocol: BioTune's best genome;
    ``methods="default"`` adds full fine-tuning and linear probing (the default ``baselines``)
    with their default sweeps of 3 learning rates each (``report.tuning``); ``"all"`` instead
    every baseline untuned (``--no-tune``: all but linear probing back-propagate to the input,
    cost 1) and four other samplers' bests (random genomes: what their best is cannot be known
    here)."""
    costs = [unit_cost(best, shares)]
    if methods == "default":
        costs += [1.0] * 3 + [FLOOR] * 3
    else:
        costs += [1.0, FLOOR] + [1.0] * 6 + [unit_cost(random_genome(slot_rng(7, 1000, i, "random"), len(shares)), shares) for i in range(4)]
    return [c * setting.ft_seconds * setting.n_folds for c in costs for _ in range(setting.seeds)]


def seed_seconds(setting: Setting, ft_seconds: float, spread: float = 0.0) -> Callable[[Proposal, int], float]:
    """Seconds of seed ``i`` of a proposal: ``unit_cost × ft_seconds``, times a factor uniform in
    [1 − spread, 1 + spread] fixed per (generation, slot, seed) (early stopping varies the
    epochs; 0 = no such spread)."""
    shares = SHARES[setting.model]

    def seconds(p: Proposal, i: int) -> float:
        factor = 1.0 + spread * (2.0 * random.Random(f"{p.generation},{p.slot},{i}").random() - 1.0) if spread else 1.0
        return unit_cost(p.genome, shares) * ft_seconds * factor

    return seconds


def simulate(setting: Setting, n_workers: int, per_seed: bool, order: str, timing: Timing, seed: int,
             starts: Sequence[float] | None = None, ft_seconds: float | None = None, spread: float = 0.0) -> Search:
    """One simulated search of ``setting`` (sampler ``seed``); ``ft_seconds`` overrides the setting's."""
    ga = GAConfig(len(SHARES[setting.model]), setting.population, setting.elites, setting.generations, seed)
    seconds = seed_seconds(setting, setting.ft_seconds if ft_seconds is None else ft_seconds, spread)
    return Search(ga, seconds, setting.seeds, per_seed, order, timing, [0.0] * n_workers if starts is None else starts).run()


def line(**fields) -> str:
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def simulation_lines(timing: Timing, sampler_seeds: Sequence[int], spread: float = 0.0) -> list[str]:
    """The simulation table: one line per setting, unit, order and worker count (means over
    ``sampler_seeds``), then the final protocol's."""
    out = []
    for setting in SETTINGS:
        best = simulate(setting, 1, False, "slot", timing, sampler_seeds[0]).state.best.genome
        for unit, order in (("trial", "slot"), ("trial", "longest"), ("seed", "slot"), ("seed", "longest")):
            for n in WORKERS:
                runs = [simulate(setting, n, unit == "seed", order, timing, s, spread=spread) for s in sampler_seeds]
                u = statistics.mean(r.utilisation for r in runs)
                wall = statistics.mean(r.end for r in runs)
                out.append(line(setting=setting.name, unit=unit, order=order, workers=n, utilisation=u,
                                wall_vs_ideal=statistics.mean(r.end * n / r.work for r in runs), wall_h=wall / 3600))
        for methods in ("default", "all"):
            durations = final_units(setting, best, SHARES[setting.model], methods)
            for order in ("listed", "longest"):
                for n in WORKERS:
                    wall = final_protocol(durations, n, order, timing.claim_s)
                    out.append(line(setting=setting.name, unit=f"final-{methods}", units=len(durations), order=order, workers=n,
                                    utilisation=sum(durations) / (n * wall), wall_vs_ideal=wall * n / sum(durations), wall_h=wall / 3600))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate-only", action="store_true", help="no real runs (no database needed)")
    ap.add_argument("--sampler-seeds", default="0,1,2", help="simulated searches per line (mean)")
    ap.add_argument("--poll-s", type=float, default=Timing.poll_s)
    ap.add_argument("--claim-s", type=float, default=Timing.claim_s)
    ap.add_argument("--tell-s", type=float, default=Timing.tell_s)
    ap.add_argument("--publish-s", type=float, default=Timing.publish_s)
    ap.add_argument("--spread", type=float, default=0.0, help="per-seed duration factor uniform in [1-S, 1+S]")
    ap.add_argument("--real-workers", default="2,4,8")
    ap.add_argument("--unit-seconds", type=float, default=1.0, help="real runs: sleep of one full fine-tune of one seed")
    ap.add_argument("--real-unit", choices=("seed", "trial"), default="seed", help="real runs: the study's work unit")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--user", default="postgres")
    args = ap.parse_args()
    timing = Timing(args.poll_s, args.claim_s, args.tell_s, args.publish_s)
    real = []
    if not args.simulate_only:
        from _scale_real import real_lines  # noqa: PLC0415 - needs PostgreSQL and torch

        real, measured = real_lines(args)
        timing = measured[-1]  # the simulation uses the latencies of the largest real run
    for text in simulation_lines(timing, [int(s) for s in args.sampler_seeds.split(",")], args.spread):
        print(text, flush=True)
    for text in real:
        print(text)


if __name__ == "__main__":
    main()
