"""Genome decoding (spec §3) on known genes."""

import math

import pytest

from biotune_optuna.search.genome import decode, genome_from_params, lr_factor, param_names, params_from_genome

BLOCKS = ["stem", "layer1", "layer2", "fc"]


def test_lr_factor_spans_a_tenth_to_ten_times():
    assert lr_factor(0.0) == pytest.approx(0.1)
    assert lr_factor(0.5) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(10.0)
    assert lr_factor(0.75) == pytest.approx(10**0.5)


def test_decode_trains_blocks_strictly_above_threshold_at_their_own_rate():
    plan = decode([0.9, 0.3, 0.6, 0.6, 0.6], BLOCKS, base_lr=1e-3)
    # 0.6 is not strictly above the threshold 0.6: layer2 and fc stay frozen.
    assert plan.trainable == (True, False, False, False)
    assert plan.trainable_blocks == ["stem"]
    assert plan.lr_by_block == {"stem": pytest.approx(1e-3 * 10 ** (2 * 0.4))}
    assert plan.learning_rates[1:] == (0.0, 0.0, 0.0)


def test_decode_low_threshold_reaches_sub_base_learning_rates():
    plan = decode([0.2, 0.35, 0.5, 1.0, 0.1], BLOCKS, base_lr=2e-3)
    assert plan.trainable_blocks == BLOCKS
    expected = [2e-3 * 10 ** (2 * (g - 0.5)) for g in (0.2, 0.35, 0.5, 1.0)]
    assert list(plan.lr_by_block.values()) == pytest.approx(expected)
    assert plan.lr_by_block["stem"] == pytest.approx(2e-3 * 10**-0.6)


def test_zero_block_genome_is_empty():
    plan = decode([0.1, 0.2, 0.3, 0.4, 0.9], BLOCKS)
    assert plan.is_empty and plan.lr_by_block == {}


@pytest.mark.parametrize(
    "genome, message",
    [([0.5] * 4, "expected 5"), ([0.5, 0.5, 1.2, 0.5, 0.1], r"outside \[0, 1\]"), ([0.5, math.nan, 0.5, 0.5, 0.1], "outside")],
)
def test_decode_rejects_malformed_genomes(genome, message):
    with pytest.raises(ValueError, match=message):
        decode(genome, BLOCKS)


def test_params_round_trip_and_names():
    genome = (0.1, 0.2, 0.3, 0.4, 0.25)
    params = params_from_genome(genome, BLOCKS)
    assert list(params) == ["gene_stem", "gene_layer1", "gene_layer2", "gene_fc", "threshold"] == param_names(BLOCKS)
    assert genome_from_params(params, BLOCKS) == genome
    del params["gene_fc"]
    with pytest.raises(KeyError, match="gene_fc"):
        genome_from_params(params, BLOCKS)
