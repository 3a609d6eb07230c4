"""How long a genome's fine-tune is expected to take, and how many workers a search keeps busy.

Pure: no torch, no Optuna, no database.

*Expected work of a genome.* A fine-tune runs the forward of the whole network, and the
backward from the output down to the FIRST fine-tuned block (autograd stops where no tensor
needs a gradient); with the frozen-prefix feature cache the frozen prefix is not even run. So
the block span from the first fine-tuned block to the output orders genomes by their cost,
whatever the model: a longer span is a strict superset of a shorter one's work. Ties are broken
by the number of fine-tuned blocks (more weight gradients and optimizer state). Measured on
EfficientNet-Lite0 (bench/README.md: training speed, feature cache): one step with the first
half frozen costs 0.59 of a full fine-tune, the last three blocks 0.36, the head only 0.28.

*Workers kept busy.* A worker evaluates one trial: a whole slot (every seed, one after another:
``work_unit = "trial"``) or one (slot, seed) unit (``work_unit = "seed"``, S units per slot).
A generation opens all its slots at once (``batched``) and closes when all are done, so no
more than the open generation's units can run at a time: P·S for the initial population, then
(2E + (P − E))·S = (P + E)·S (spec §7.14). In ``reference`` mode the children open one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from biotune_optuna.search.generations import GAConfig
from biotune_optuna.search.genome import check_genome, selected_blocks

__all__ = ["backprop_span", "capacity_text", "max_busy_workers", "work_key"]


def backprop_span(genome: Sequence[float]) -> int:
    """Blocks from the genome's first fine-tuned block to the output, inclusive.

    Args:
        genome: B + 1 genes in [0, 1] (last = threshold).

    Returns:
        An int in [0, B]: B when the input block trains (backward through everything), 1 when
        only the last block trains, 0 when no block trains (no fine-tune at all).

    Raises:
        ValueError: on a malformed genome (:func:`~biotune_optuna.search.genome.check_genome`).
    """
    genes = check_genome(genome)
    chosen = selected_blocks(genes)
    return len(genes) - 1 - chosen[0] if chosen else 0


def work_key(genome: Sequence[float]) -> tuple[int, int]:
    """Sort key of a genome's expected fine-tune time: larger = longer.

    Returns:
        ``(backprop_span(genome), number of fine-tuned blocks)``, both in [0, B].

    Raises:
        ValueError: on a malformed genome.
    """
    return backprop_span(genome), len(selected_blocks(check_genome(genome)))


def max_busy_workers(config: GAConfig, units_per_slot: int = 1) -> int:
    """The most trials a search can run at once.

    Args:
        config: the search's sizes and mode.
        units_per_slot: trials per slot, ≥ 1: 1 when a trial fine-tunes with every seed, the
            number of seeds S when a trial fine-tunes with one (``StudyConfig.units_per_slot``).

    Returns:
        S × (``batched``: P if G = 0, else P + E; ``reference``: max(P, 2E) if G ≥ 1 —
        hill-climbs open together, children one by one — else P). Workers beyond this wait.
    """
    p, e = config.population_size, config.n_elites
    if config.n_generations == 0:
        slots = p
    else:
        slots = max(p, config.n_slots(1)) if config.mode == "batched" else max(p, 2 * e)
    return slots * units_per_slot


def capacity_text(config: GAConfig, units_per_slot: int = 1) -> str:
    """One line for ``status``: how many workers the search can keep busy, and why.

    Example:
        >>> capacity_text(GAConfig(6, 10, 3, 10))
        '13 at most (P + E = 10 + 3 slots per generation, one trial each); more workers wait'
        >>> capacity_text(GAConfig(6, 10, 3, 10), units_per_slot=3)
        '39 at most (P + E = 10 + 3 slots per generation × 3 seeds, one trial each); more workers wait'
    """
    n = max_busy_workers(config, units_per_slot)
    p, e, s = config.population_size, config.n_elites, units_per_slot
    per = f" × {s} seeds" if s > 1 else ""
    if config.n_generations == 0:
        why = f"P = {p} initial slots{per}, one trial each"
    elif config.mode == "batched":
        why = f"P + E = {p} + {e} slots per generation{per}, one trial each"
    else:
        why = f"reference mode: P = {p} initial slots, then 2E = {2 * e} hill-climbs and one child at a time{per}"
    return f"{n} at most ({why}); more workers wait"
