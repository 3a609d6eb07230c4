"""Genome ⇄ fine-tuning plan: which blocks train and at what learning rate.

A genome is a vector of ``B + 1`` floats in [0, 1]: one importance gene per network block
(input side first, classifier last) and a freezing threshold as the last gene
(spec/biotune-algorithm.md §2.1). Decoding (spec §3):

* block ``b`` is fine-tuned iff ``gene_b > threshold`` (strict);
* a fine-tuned block gets ``lr_b = base_lr · 10^(2·(gene_b − 0.5))``, a factor in [0.1, 10];
* a frozen block gets no learning rate and ``requires_grad=False``.

In Optuna the genome is stored as the params ``gene_<block>`` and ``threshold``, each a
``FloatDistribution(0, 1)``, so any Optuna sampler can search the same space.

Pure Python: no torch, no Optuna, no database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from biotune_optuna.config import check_learning_rate

GENE_PREFIX = "gene_"
THRESHOLD_PARAM = "threshold"


def gene_param(block: str) -> str:
    """The Optuna param name of ``block``'s gene, e.g. ``"gene_layer3"``."""
    return GENE_PREFIX + block


def param_names(blocks: Sequence[str]) -> list[str]:
    """Param names of a genome over ``blocks``: one ``gene_<block>`` each, then ``threshold``."""
    return [gene_param(b) for b in blocks] + [THRESHOLD_PARAM]


def lr_factor(gene: float) -> float:
    """Learning-rate multiplier of a fine-tuned block: ``10^(2·(gene − 0.5))``.

    Args:
        gene: the block's gene, in [0, 1].

    Returns:
        A factor in [0.1, 10] (spec §3.2, method ``adaptive_block_normexp``).
    """
    return 10.0 ** (2.0 * (gene - 0.5))


def check_genome(genome: Sequence[float], n_blocks: int | None = None) -> tuple[float, ...]:
    """Validate a genome and return it as a tuple.

    Raises:
        ValueError: if it has fewer than 2 genes, a length other than ``n_blocks + 1``, or a
            gene outside [0, 1] or not finite.
    """
    genes = tuple(float(g) for g in genome)
    if len(genes) < 2:
        raise ValueError(f"a genome needs at least one block gene and a threshold, got {len(genes)} genes")
    if n_blocks is not None and len(genes) != n_blocks + 1:
        raise ValueError(f"genome has {len(genes)} genes, expected {n_blocks + 1} ({n_blocks} blocks + threshold)")
    for i, g in enumerate(genes):
        if not 0.0 <= g <= 1.0:  # also rejects NaN
            raise ValueError(f"gene {i} is {g}, outside [0, 1]")
    return genes


def selected_blocks(genome: Sequence[float]) -> list[int]:
    """Indices of the blocks a genome fine-tunes: ``{b : gene_b > threshold}`` (spec §3.1)."""
    threshold = genome[-1]
    return [b for b, g in enumerate(genome[:-1]) if g > threshold]


@dataclass(frozen=True)
class Plan:
    """A decoded genome: what to fine-tune and how fast.

    Attributes:
        blocks: block names, input side first.
        trainable: one flag per block; True = fine-tune, False = freeze.
        learning_rates: one learning rate per block (same units as ``base_lr``); 0.0 for a
            frozen block.
    """

    blocks: tuple[str, ...]
    trainable: tuple[bool, ...]
    learning_rates: tuple[float, ...]

    @property
    def trainable_blocks(self) -> list[str]:
        """Names of the fine-tuned blocks, input side first."""
        return [b for b, t in zip(self.blocks, self.trainable) if t]

    @property
    def lr_by_block(self) -> dict[str, float]:
        """Learning rate of each fine-tuned block."""
        return {b: lr for b, t, lr in zip(self.blocks, self.trainable, self.learning_rates) if t}

    @property
    def is_empty(self) -> bool:
        """True when no block is fine-tuned (spec §3.1: no training, worst fitness)."""
        return not any(self.trainable)


def decode(genome: Sequence[float], blocks: Sequence[str], base_lr: float = 1e-3) -> Plan:
    """Decode a genome into a :class:`Plan` (spec §3.1–3.2).

    Args:
        genome: ``len(blocks) + 1`` genes in [0, 1]; the last is the threshold.
        blocks: block names, input side first.
        base_lr: the base learning rate (> 0); fine-tuned blocks get ``base_lr`` times a factor
            in [0.1, 10].

    Raises:
        ValueError: on a malformed genome or a non-positive ``base_lr``.

    Example:
        >>> decode([0.9, 0.2, 0.5], ["body", "head"]).lr_by_block
        {'body': 0.00630957344480193}
    """
    genes = check_genome(genome, len(blocks))
    check_learning_rate(base_lr, "base_lr")
    chosen = set(selected_blocks(genes))
    trainable = tuple(b in chosen for b in range(len(blocks)))
    lrs = tuple(base_lr * lr_factor(g) if t else 0.0 for g, t in zip(genes, trainable))
    return Plan(tuple(blocks), trainable, lrs)


def genome_from_params(params: Mapping[str, float], blocks: Sequence[str]) -> tuple[float, ...]:
    """Read a genome from Optuna params ``gene_<block>`` and ``threshold``.

    Raises:
        KeyError: naming the first missing param.
    """
    names = param_names(blocks)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"params lack {missing[0]!r} (expected {names})")
    return check_genome([params[n] for n in names], len(blocks))


def params_from_genome(genome: Sequence[float], blocks: Sequence[str]) -> dict[str, float]:
    """The Optuna params of a genome: ``{"gene_<block>": g_b, ..., "threshold": t}``."""
    genes = check_genome(genome, len(blocks))
    return dict(zip(param_names(blocks), genes))
