"""BioTune's evolutionary operators (spec/biotune-algorithm.md §7), one function each.

Genomes are tuples of floats in [0, 1], the threshold last; fitness Φ is minimised
(Φ = 1 − mean validation macro accuracy, spec §6). Every operator takes its random numbers
from an explicit ``numpy.random.Generator``: callers derive that generator from
(sampler seed, generation, slot, purpose) with :func:`slot_rng`, so a proposal never depends
on a shared random stream or on the order in which trials finish.

Pure: numpy only; no torch, no Optuna, no database.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Hill-climb step scale: δ = HILL_CLIMB_RATE · U(−1, 1) (spec §7.4, "exploration rate 0.25").
HILL_CLIMB_RATE = 0.25

_PURPOSES = {"init": 1, "hill_climb": 2, "child": 3, "random": 4}


def slot_rng(seed: int, generation: int, slot: int, purpose: str) -> np.random.Generator:
    """An independent random generator for one (generation, slot, purpose).

    Args:
        seed: the sampler seed (any non-negative int).
        generation: 0 for the initial population, 1..G after.
        slot: slot index inside the generation (or elite index for ``"hill_climb"``).
        purpose: one of ``"init"``, ``"hill_climb"``, ``"child"``, ``"random"``.

    Returns:
        ``numpy.random.Generator`` seeded by ``SeedSequence([seed, generation, slot, purpose])``.
    """
    return np.random.default_rng([seed, generation, slot, _PURPOSES[purpose]])


def clip(genome: Sequence[float]) -> tuple[float, ...]:
    """Clip every gene to [0, 1]."""
    return tuple(float(min(1.0, max(0.0, g))) for g in genome)


def has_selected_block(genome: Sequence[float]) -> bool:
    """True if at least one block gene is strictly above the threshold (spec §3.1)."""
    return any(g > genome[-1] for g in genome[:-1])


def random_genome(rng: np.random.Generator, n_blocks: int) -> tuple[float, ...]:
    """A uniform genome of ``n_blocks + 1`` genes that selects ≥ 1 block (spec §7.2).

    The whole vector is redrawn until some block gene exceeds the threshold (expected
    rejection rate 1/(B+1)).
    """
    while True:
        genome = tuple(float(x) for x in rng.uniform(0.0, 1.0, n_blocks + 1))
        if has_selected_block(genome):
            return genome


def rank_weights(m: int) -> np.ndarray:
    """Linear-rank selection probabilities over a pool of ``m`` ≥ 2 members sorted best first.

    Weights (spec §7.5): index 0 → m + 2; 1 ≤ k ≤ m − 2 → m + 1 − k; k = m − 1 → 1;
    total m(m + 3)/2. For m = 5: 0.35, 0.25, 0.20, 0.15, 0.05.

    Raises:
        ValueError: if ``m < 2``.
    """
    if m < 2:
        raise ValueError(f"rank selection needs a pool of at least 2, got {m}")
    w = np.array([m + 1 - k for k in range(m)], dtype=float)
    w[0] = m + 2
    w[-1] = 1
    return w / w.sum()


def select_parents(rng: np.random.Generator, m: int) -> tuple[int, int, int]:
    """Draw (parent1, parent2, prototype) pool indices by linear rank (spec §7.5).

    parent2 is redrawn until it differs from parent1; the prototype may equal either.
    """
    p = rank_weights(m)
    first = int(rng.choice(m, p=p))
    second = first
    while second == first:
        second = int(rng.choice(m, p=p))
    prototype = int(rng.choice(m, p=p))
    return first, second, prototype


def blend_crossover(rng: np.random.Generator, p1: Sequence[float], p2: Sequence[float]) -> tuple[float, ...]:
    """Per-gene blend: ``c_j = u_j·p1_j + (1 − u_j)·p2_j``, ``u_j ~ U(0, 1)`` (spec §7.6)."""
    u = rng.uniform(0.0, 1.0, len(p1))
    return tuple(float(x) for x in u * np.asarray(p1) + (1.0 - u) * np.asarray(p2))


def mutation_probability(extinction: float, n_genes: int) -> float:
    """Per-gene mutation probability ``ē + (1 − ē)/n`` (spec §7.7), from 1/n at ē = 0 to 1 at ē = 1."""
    return extinction + (1.0 - extinction) / n_genes


def mutate(rng: np.random.Generator, genome: Sequence[float], extinction: float) -> tuple[float, ...]:
    """Extinction-scaled mutation (spec §7.7), clipped to [0, 1].

    Each gene, with probability :func:`mutation_probability`, gets ``+ ē·U(−1, 1)``.

    Args:
        extinction: ē, the parents' mean extinction value, in [0, 1].
    """
    n = len(genome)
    mask = rng.uniform(0.0, 1.0, n) < mutation_probability(extinction, n)
    noise = rng.uniform(-1.0, 1.0, n)
    child = np.asarray(genome, dtype=float) + np.where(mask, extinction * noise, 0.0)
    return clip(child)


def adopt(
    rng: np.random.Generator,
    child: Sequence[float],
    p1: Sequence[float],
    p2: Sequence[float],
    prototype: Sequence[float],
) -> tuple[float, ...]:
    """Adoption (spec §7.8): pull the child towards the parents' mean and a prototype.

    ``c ← c + λ·a·(m̄ − c) + (1 − λ)·b·(prototype − c)`` with scalar a, b, λ ~ U(0, 1) and
    ``m̄ = (p1 + p2)/2``; the result is clipped to [0, 1].
    """
    a, b, lam = rng.uniform(0.0, 1.0, 3)
    c = np.asarray(child, dtype=float)
    mean = (np.asarray(p1, dtype=float) + np.asarray(p2, dtype=float)) / 2.0
    c = c + lam * a * (mean - c) + (1.0 - lam) * b * (np.asarray(prototype, dtype=float) - c)
    return clip(c)


def breed(
    rng: np.random.Generator,
    genomes: Sequence[Sequence[float]],
    extinctions: Sequence[float],
) -> tuple[tuple[float, ...], tuple[int, int, int]]:
    """One child from a mating pool sorted best first (spec §7.5–7.8).

    Selection → blend crossover → extinction-scaled mutation → adoption.

    Args:
        genomes: the pool's genomes, best fitness first (≥ 3 members, spec §7.3).
        extinctions: their extinction values, same order.

    Returns:
        (child genome, (parent1, parent2, prototype) indices into the pool).
    """
    i1, i2, ip = select_parents(rng, len(genomes))
    child = blend_crossover(rng, genomes[i1], genomes[i2])
    child = mutate(rng, child, (extinctions[i1] + extinctions[i2]) / 2.0)
    child = adopt(rng, child, genomes[i1], genomes[i2], genomes[ip])
    return child, (i1, i2, ip)


def hill_climb_move(rng: np.random.Generator, genome: Sequence[float]) -> tuple[int, float] | None:
    """Choose the elite hill-climb move (spec §7.4): a selected block gene i and a step δ.

    Returns:
        ``(i, δ)`` with δ = 0.25·U(−1, 1), or None if the genome selects no block.
    """
    chosen = [b for b, g in enumerate(genome[:-1]) if g > genome[-1]]
    if not chosen:
        return None
    i = int(chosen[int(rng.integers(len(chosen)))])
    return i, float(HILL_CLIMB_RATE * rng.uniform(-1.0, 1.0))


def shift_gene(genome: Sequence[float], i: int, delta: float) -> tuple[float, ...]:
    """``genome`` with gene ``i`` moved by ``delta`` and clipped to [0, 1]."""
    moved = list(genome)
    moved[i] = min(1.0, max(0.0, moved[i] + delta))
    return tuple(float(g) for g in moved)


def accept_hill_climb(old: float, plus: float, minus: float) -> int:
    """Hill-climb acceptance (spec §7.4) on fitness Φ (lower is better).

    Returns:
        +1 to keep the +δ move, −1 to keep −δ, 0 to revert. Exact ties revert.
    """
    if plus < old and plus < minus:
        return 1
    if minus < old and minus < plus:
        return -1
    return 0


def extinction_values(fitness: Sequence[float], previous: Sequence[float]) -> tuple[float, ...]:
    """Extinction of a population sorted best first (spec §7.13).

    ``e_i = (f_i − f_min)/f_max + (f_min/f_max)·i/(P − 1)``: 0 for the best, 1 for the worst.
    If ``f_max == f_min`` (or f_max ≤ 0) the ``previous`` values are kept.

    Members with Φ = +∞ (every attempt failed, in a minimised study:
    :func:`~biotune_optuna.search.fitness.worst_fitness`) get extinction 1; the formula runs
    over the finite ones (so nothing becomes NaN).

    Args:
        fitness: Φ of each member, ascending, all ≥ 0 (+∞ allowed, last).
        previous: their current extinction values, same order.
    """
    finite = [f for f in fitness if f != float("inf")]
    tail = (1.0,) * (len(fitness) - len(finite))
    n = len(finite)
    f_min, f_max = (min(finite), max(finite)) if finite else (0.0, 0.0)
    if n < 2 or not f_max > f_min or f_max <= 0:
        return tuple(float(e) for e in previous[:n]) + tail
    return tuple(float((f - f_min) / f_max + (f_min / f_max) * i / (n - 1)) for i, f in enumerate(finite)) + tail


def diversity(genomes: Sequence[Sequence[float]]) -> float:
    """Population diversity: standard deviation of all genes together (spec §7.3 step 8)."""
    return float(np.std(np.asarray(genomes, dtype=float)))
