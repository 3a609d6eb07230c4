"""Generations as fixed slot lists, rebuilt from finished results alone.

Generation 0 is the initial population (P slots, role ``init``); generations 1..G each hold
2E hill-climb slots (``hill+``/``hill-`` for elite e at slots 2e, 2e+1) followed by P − E
child slots (spec §7.3, §7.14: at most P + G·(P + E) evaluations). The proposal of a slot is a
pure function of (seed, generation, slot, results of closed generations) — and, in
``reference`` mode, of the results of the earlier child slots of the same generation.

An elite that selects no block (every gene ≤ threshold) has no gene to hill-climb: its two
slots are *skipped* — resolved at once with the elite's own fitness (which reverts the move),
never proposed, never evaluated (spec §7.4: "If none, skip (0 evaluations)"). Which slots are
skipped follows from the closed previous generation alone, so proposals stay a pure function
of the same inputs.

Modes:

* ``batched`` (default, for many workers): all P + E slots of a generation are open at once.
  Children are bred from the closed population of the previous generation (its sorted
  order, pre-hill-climb elites) with no mating-pool removal — spec §11 variant (b).
* ``reference``: the sequential semantics of spec §7.3/§7.10 — hill-climb slots first, then
  each child from the pool of post-hill-climb elites and earlier members, in the
  pre-hill-climb order, with parents removed when their child beats them. Child c opens
  only when the hill-climb slots and children < c are done.

Departures from the reference (DESIGN.md): extinction is computed after the initial
population, so generation 1 mutates; accepted hill-climb genes are stored clipped.

Pure: no torch, no Optuna, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from biotune_optuna.config import MODES, check_search, n_evaluations
from biotune_optuna.search import operators as ops
from biotune_optuna.search.fitness import WORST_FITNESS

__all__ = ["MODES", "WORST_FITNESS", "GAConfig", "Member", "Population", "Proposal", "SearchState", "initial_proposals", "search_state", "skipped_slots"]


@dataclass(frozen=True)
class GAConfig:
    """Sizes and seed of a BioTune search.

    Attributes:
        n_blocks: B, the number of blocks (genomes have B + 1 genes). ≥ 1.
        population_size: P ≥ 2 (paper: 10).
        n_elites: E, 0 ≤ E < P (paper: 3).
        n_generations: G ≥ 0 generations after the initial population (paper: 10).
        seed: sampler seed (≥ 0); the same seed gives the same genomes.
        mode: ``"batched"`` or ``"reference"`` (module docstring).

    Raises:
        ConfigError: (a ValueError) on sizes outside these ranges, naming the offending value
            (:func:`biotune_optuna.config.check_search`).
    """

    n_blocks: int
    population_size: int = 10
    n_elites: int = 3
    n_generations: int = 10
    seed: int = 0
    mode: str = "batched"

    def __post_init__(self) -> None:
        check_search(self.n_blocks, self.population_size, self.n_elites, self.n_generations, self.seed, self.mode)

    def n_slots(self, generation: int) -> int:
        """Slots of a generation: P for generation 0, 2E + (P − E) after — an upper bound on
        its evaluations (skipped hill-climb slots cost none; :attr:`SearchState.skipped`)."""
        if generation == 0:
            return self.population_size
        return 2 * self.n_elites + self.population_size - self.n_elites

    @property
    def n_evaluations(self) -> int:
        """Total slots of the search: P + G·(P + E) (spec §7.14). An upper bound on the
        evaluations: hill-climb slots of elites that select no block are skipped."""
        return n_evaluations(self.population_size, self.n_elites, self.n_generations)


@dataclass(frozen=True)
class Member:
    """One member of a population.

    Attributes:
        genome: B + 1 genes in [0, 1].
        fitness: Φ, lower is better, in [0, 1].
        extinction: extinction value in [0, 1] (spec §7.13).
        origin: (generation, slot) of the evaluation that measured ``fitness``.
    """

    genome: tuple[float, ...]
    fitness: float
    extinction: float = 0.0
    origin: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Proposal:
    """What one slot evaluates.

    Attributes:
        generation, slot: where it sits.
        role: ``init``, ``hill+``, ``hill-``, ``child`` or ``random``.
        genome: the genome to evaluate.
        parents: (generation, slot) origins of the members it came from: the elite for a
            hill-climb; parent1, parent2, prototype for a child; empty otherwise.
        move: for hill-climbs, ``(gene index, δ)``; None otherwise (an elite that selects no
            block gets no hill-climb proposal: its slots are skipped).
    """

    generation: int
    slot: int
    role: str
    genome: tuple[float, ...]
    parents: tuple[tuple[int, int], ...] = ()
    move: tuple[int, float] | None = None


@dataclass(frozen=True)
class Population:
    """A closed generation: members sorted best first, and the best genome ever seen."""

    generation: int
    members: tuple[Member, ...]
    best: Member

    @property
    def diversity(self) -> float:
        """Standard deviation of all genes of all members."""
        return ops.diversity([m.genome for m in self.members])


@dataclass
class SearchState:
    """Where a search stands, given the results so far.

    Attributes:
        populations: closed generations, oldest first.
        generation: the open generation (== G + 1 when finished).
        proposals: the open generation's slots; None for a slot that cannot be proposed yet
            (reference mode, waiting on earlier slots).
        finished: True when generation G is closed.
        resolved: slots with a result (done, given up as worst, or skipped), all generations
            up to the open one; equals the number of slots, P + G·(P + E), when finished.
        skipped: (generation, slot) of every skipped hill-climb slot so far (elites that
            select no block; module docstring) — resolved without an evaluation.
    """

    populations: list[Population]
    generation: int
    proposals: list[Proposal | None] = field(default_factory=list)
    finished: bool = False
    resolved: int = 0
    skipped: tuple[tuple[int, int], ...] = ()

    @property
    def best(self) -> Member | None:
        """Best member ever (lowest Φ, earliest on ties), or None before generation 0 closes."""
        return self.populations[-1].best if self.populations else None


Results = Mapping[tuple[int, int], float]


def _sort(members: list[Member]) -> list[Member]:
    # Stable: ties keep the order given (elites first, then slot order).
    return sorted(members, key=lambda m: m.fitness)


def _close(config: GAConfig, generation: int, members: list[Member], previous: Population | None) -> Population:
    ranked = _sort(members)
    extinction = ops.extinction_values([m.fitness for m in ranked], [m.extinction for m in ranked])
    ranked = [replace(m, extinction=e) for m, e in zip(ranked, extinction)]
    best = ranked[0]
    if previous is not None and not best.fitness < previous.best.fitness:
        best = previous.best
    return Population(generation, tuple(ranked), best)


def initial_proposals(config: GAConfig) -> list[Proposal]:
    """Generation 0: P random genomes that each select ≥ 1 block (spec §7.2)."""
    return [
        Proposal(0, s, "init", ops.random_genome(ops.slot_rng(config.seed, 0, s, "init"), config.n_blocks))
        for s in range(config.population_size)
    ]


def skipped_slots(config: GAConfig, population: Population) -> dict[int, float]:
    """Hill-climb slots of the generation after ``population`` that cost nothing (spec §7.4):
    slots 2e and 2e+1 of each elite e that selects no block, mapped to the elite's fitness (the
    result that reverts the move)."""
    return {
        2 * e + k: elite.fitness
        for e, elite in enumerate(population.members[: config.n_elites])
        if not ops.has_selected_block(elite.genome)
        for k in (0, 1)
    }


def _hill_climbs(config: GAConfig, generation: int, population: Population) -> list[Proposal]:
    proposals = []
    for e, elite in enumerate(population.members[: config.n_elites]):
        move = ops.hill_climb_move(ops.slot_rng(config.seed, generation, e, "hill_climb"), elite.genome)
        for sign, role in ((1.0, "hill+"), (-1.0, "hill-")):
            genome = elite.genome if move is None else ops.shift_gene(elite.genome, move[0], sign * move[1])
            proposals.append(Proposal(generation, len(proposals), role, genome, (elite.origin,), move))
    return proposals


def _elites_after_hill_climb(config: GAConfig, population: Population, results: list[float]) -> list[Member]:
    elites = []
    for e, elite in enumerate(population.members[: config.n_elites]):
        plus, minus = results[2 * e], results[2 * e + 1]
        move = ops.hill_climb_move(ops.slot_rng(config.seed, population.generation + 1, e, "hill_climb"), elite.genome)
        verdict = ops.accept_hill_climb(elite.fitness, plus, minus)
        if move is None or verdict == 0:
            elites.append(elite)  # revert: genes and (possibly older-fold) fitness kept
            continue
        slot = 2 * e if verdict == 1 else 2 * e + 1
        elites.append(
            replace(
                elite,
                genome=ops.shift_gene(elite.genome, move[0], verdict * move[1]),
                fitness=plus if verdict == 1 else minus,
                origin=(population.generation + 1, slot),
            )
        )
    return elites


def _child(config: GAConfig, generation: int, slot: int, pool: list[Member]) -> Proposal:
    if len(pool) <= 2:
        rng = ops.slot_rng(config.seed, generation, slot, "random")
        return Proposal(generation, slot, "random", ops.random_genome(rng, config.n_blocks))
    rng = ops.slot_rng(config.seed, generation, slot, "child")
    genome, (i1, i2, ip) = ops.breed(rng, [m.genome for m in pool], [m.extinction for m in pool])
    return Proposal(generation, slot, "child", genome, (pool[i1].origin, pool[i2].origin, pool[ip].origin))


def _proposals(
    config: GAConfig, generation: int, population: Population, done: dict[int, float]
) -> tuple[list[Proposal | None], list[Member] | None]:
    """Slots of ``generation`` given the previous population and this generation's results.

    Returns the proposals in slot order (None where not yet proposable; skipped hill-climb slots
    left out) and, when every slot is done, the members of the new population.
    """
    n_hill = 2 * config.n_elites
    skipped = skipped_slots(config, population)
    done = {**done, **skipped}
    proposals: list[Proposal | None] = list(_hill_climbs(config, generation, population))
    n_children = config.population_size - config.n_elites
    hill_done = all(s in done for s in range(n_hill))
    elites = _elites_after_hill_climb(config, population, [done[s] for s in range(n_hill)]) if hill_done else None
    children: list[Member] = []
    if config.mode == "batched":
        pool = list(population.members)
        for c in range(n_children):
            proposals.append(_child(config, generation, n_hill + c, pool))
    else:
        if elites is None:
            proposals.extend([None] * n_children)
        else:
            # Shallow copy of the population in pre-hill-climb order, elites updated in place.
            pool = elites + list(population.members[config.n_elites :])
            for c in range(n_children):
                slot = n_hill + c
                child = _child(config, generation, slot, pool)
                proposals.append(child)
                if slot not in done:
                    proposals.extend([None] * (n_children - c - 1))
                    break
                if child.role == "child":
                    fit = done[slot]
                    parents = {child.parents[0], child.parents[1]}
                    pool = [m for m in pool if not (m.origin in parents and m.fitness > fit)]
    if elites is None or any(s not in done for s in range(len(proposals))) or None in proposals:
        return [p for s, p in enumerate(proposals) if s not in skipped], None
    for p in proposals[n_hill:]:
        assert p is not None
        children.append(Member(p.genome, done[p.slot], 0.0, (generation, p.slot)))
    return [p for s, p in enumerate(proposals) if s not in skipped], elites + children


def search_state(config: GAConfig, results: Results, cache: dict | None = None) -> SearchState:
    """Replay the search from its results and return where it stands.

    Args:
        config: the search's sizes and seed.
        results: Φ of every resolved slot, keyed by (generation, slot); a slot whose attempts
            all failed is resolved with the worst fitness for the study's direction by the
            caller (:func:`~biotune_optuna.search.fitness.worst_fitness`). Skipped hill-climb
            slots need no entry (one there is ignored).
        cache: optional dict reused between calls to skip replaying closed generations. Closed
            generations never change *for one search*: a cache belongs to one study's results
            and config — never share it between studies.

    Returns:
        A :class:`SearchState`; cost grows with the population and the number of generations,
        not with the number of trials.
    """
    cache = {} if cache is None else cache
    populations: list[Population] = []
    skipped: set[tuple[int, int]] = set()
    for generation in range(config.n_generations + 1):
        if generation > 0:
            skipped.update((generation, s) for s in skipped_slots(config, populations[-1]))
        if generation in cache:
            populations.append(cache[generation])
            continue
        done = {s: results[(generation, s)] for s in range(config.n_slots(generation)) if (generation, s) in results}
        if generation == 0:
            proposals: list[Proposal | None] = list(initial_proposals(config))
            members = None
            if len(done) == config.population_size:
                members = [Member(p.genome, done[p.slot], 0.0, (0, p.slot)) for p in proposals if p is not None]
        else:
            proposals, members = _proposals(config, generation, populations[-1], done)
        if members is None:
            return SearchState(populations, generation, proposals, False, len(skipped | set(results)), tuple(sorted(skipped)))
        population = _close(config, generation, members, populations[-1] if populations else None)
        cache[generation] = population
        populations.append(population)
    return SearchState(populations, config.n_generations + 1, [], True, len(skipped | set(results)), tuple(sorted(skipped)))
