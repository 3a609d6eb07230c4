"""BioTune's operators against values computed by hand from the spec's formulas (§7)."""

import numpy as np
import pytest

from biotune_optuna.search import operators as ops


class ScriptedRng:
    """A stand-in generator that returns the numbers a test wrote down, in order."""

    def __init__(self, uniform=(), choice=(), integers=()):
        self._uniform = [np.asarray(u, dtype=float) for u in uniform]
        self._choice = list(choice)
        self._integers = list(integers)

    def uniform(self, low, high, size=None):
        value = self._uniform.pop(0)
        assert np.all(value >= low) and np.all(value <= high)
        return value if size is not None else float(value)

    def choice(self, m, p=None):
        return self._choice.pop(0)

    def integers(self, n):
        value = self._integers.pop(0)
        assert 0 <= value < n
        return value


def test_rank_weights_follow_the_reference_integer_scheme():
    assert ops.rank_weights(5) == pytest.approx([0.35, 0.25, 0.20, 0.15, 0.05])
    assert ops.rank_weights(3) == pytest.approx([5 / 9, 3 / 9, 1 / 9])
    w10 = ops.rank_weights(10)
    assert w10 == pytest.approx(np.array([12, 10, 9, 8, 7, 6, 5, 4, 3, 1]) / 65)
    with pytest.raises(ValueError):
        ops.rank_weights(1)


def test_select_parents_redraws_a_second_parent_equal_to_the_first():
    rng = ScriptedRng(choice=[1, 1, 1, 2, 1])
    assert ops.select_parents(rng, 4) == (1, 2, 1)


def test_blend_crossover_mixes_each_gene_by_its_own_weight():
    rng = ScriptedRng(uniform=[[0.25, 0.5, 1.0]])
    child = ops.blend_crossover(rng, (0.8, 0.2, 0.4), (0.0, 0.6, 0.9))
    assert child == pytest.approx((0.25 * 0.8, 0.5 * 0.2 + 0.5 * 0.6, 0.4))


def test_mutation_probability_goes_from_one_over_n_to_one():
    assert ops.mutation_probability(0.0, 7) == pytest.approx(1 / 7)
    assert ops.mutation_probability(1.0, 7) == pytest.approx(1.0)
    assert ops.mutation_probability(0.5, 4) == pytest.approx(0.625)


def test_mutate_moves_masked_genes_by_extinction_times_noise_and_clips():
    # ē = 0.5, n = 4 → p_mut = 0.625: draws 0.1 and 0.6 mutate, 0.7 and 0.9 do not.
    rng = ScriptedRng(uniform=[[0.1, 0.7, 0.6, 0.9], [1.0, -1.0, -0.5, 0.2]])
    child = ops.mutate(rng, (0.7, 0.5, 0.1, 0.3), extinction=0.5)
    assert child == pytest.approx((1.0, 0.5, 0.0, 0.3))  # 0.7 + 0.5 clipped to 1; 0.1 − 0.25 clipped to 0


def test_mutate_is_a_no_op_without_extinction_amplitude():
    rng = ScriptedRng(uniform=[[0.0, 0.0], [1.0, -1.0]])
    assert ops.mutate(rng, (0.3, 0.6), extinction=0.0) == pytest.approx((0.3, 0.6))


def test_adoption_pulls_towards_parent_mean_and_prototype():
    rng = ScriptedRng(uniform=[[0.5, 0.4, 0.25]])  # a, b, λ
    c = (0.2, 0.8)
    mean = ((0.0 + 1.0) / 2, (1.0 + 0.0) / 2)
    proto = (1.0, 1.0)
    expected = [ci + 0.25 * 0.5 * (mi - ci) + 0.75 * 0.4 * (pi - ci) for ci, mi, pi in zip(c, mean, proto)]
    assert ops.adopt(rng, c, (0.0, 1.0), (1.0, 0.0), proto) == pytest.approx(expected)
    assert expected == pytest.approx([0.2 + 0.0375 + 0.24, 0.8 - 0.0375 + 0.06])


def test_hill_climb_picks_a_selected_gene_and_a_quarter_step():
    genome = (0.9, 0.1, 0.7, 0.5)  # threshold 0.5: blocks 0 and 2 are selected
    rng = ScriptedRng(integers=[1], uniform=[-0.4])
    i, delta = ops.hill_climb_move(rng, genome)
    assert (i, delta) == (2, pytest.approx(-0.1))
    assert ops.shift_gene(genome, 0, 0.2) == pytest.approx((1.0, 0.1, 0.7, 0.5))  # stored clipped
    assert ops.hill_climb_move(ScriptedRng(), (0.1, 0.2, 0.9)) is None


@pytest.mark.parametrize(
    "old, plus, minus, verdict",
    [(0.3, 0.2, 0.25, 1), (0.3, 0.25, 0.2, -1), (0.3, 0.3, 0.35, 0), (0.3, 0.2, 0.2, 0), (0.1, 0.2, 0.3, 0)],
)
def test_hill_climb_acceptance_needs_strict_improvement_and_reverts_ties(old, plus, minus, verdict):
    assert ops.accept_hill_climb(old, plus, minus) == verdict


def test_extinction_blends_fitness_gap_and_rank():
    e = ops.extinction_values([0.1, 0.2, 0.4], [0.0, 0.0, 0.0])
    assert e == pytest.approx((0.0, 0.1 / 0.4 + 0.25 * 0.5, 1.0))
    assert ops.extinction_values([0.2, 0.2], [0.3, 0.7]) == (0.3, 0.7)  # no spread: values kept


def test_random_genome_always_selects_a_block_and_is_seed_determined():
    genomes = [ops.random_genome(ops.slot_rng(7, 0, s, "init"), 3) for s in range(50)]
    assert all(ops.has_selected_block(g) and len(g) == 4 for g in genomes)
    assert genomes[0] == ops.random_genome(ops.slot_rng(7, 0, 0, "init"), 3)
    assert genomes[0] != ops.random_genome(ops.slot_rng(8, 0, 0, "init"), 3)
