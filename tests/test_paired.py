"""Statistics of replicated comparisons (report/paired.py) against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from biotune_optuna.report.paired import paired, spread, summarize, t_quantile, to_markdown


def test_t_quantiles_match_the_printed_tables():
    # Student's t, two-sided 95 %: t(0.975, df) from any statistics table.
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(9) == pytest.approx(2.262, abs=1e-3)
    assert t_quantile(30) == pytest.approx(2.042, abs=1e-3)
    with pytest.raises(ValueError, match="df ≥ 1"):
        t_quantile(0)


def test_paired_difference_of_three_replicates():
    # differences 0.02, 0.04, 0.00: mean 0.02; sample std sqrt((0 + 0.02² + 0.02²) / 2) = 0.02;
    # half-width 4.3027 · 0.02 / √3 = 0.049683.
    p = paired([0.90, 0.92, 0.85], [0.88, 0.88, 0.85])
    assert p.n == 3
    assert p.mean == pytest.approx(0.02)
    assert p.std == pytest.approx(0.02)
    assert p.ci95 == pytest.approx((0.02 - 0.049683, 0.02 + 0.049683), abs=1e-6)
    assert (p.wins, p.ties, p.losses) == (2, 1, 0)


def test_paired_difference_of_two_replicates_uses_one_degree_of_freedom():
    # differences 0.01, 0.03: mean 0.02, std 0.01·√2, half-width 12.706 · 0.01·√2 / √2 = 0.12706
    p = paired([0.81, 0.73], [0.80, 0.70])
    assert p.std == pytest.approx(0.01 * math.sqrt(2))
    assert p.ci95 == pytest.approx((0.02 - 0.127062, 0.02 + 0.127062), abs=1e-5)
    assert (p.wins, p.ties, p.losses) == (2, 0, 0)


def test_one_replicate_has_no_std_and_no_interval():
    p = paired([0.7], [0.8])
    assert p.mean == pytest.approx(-0.1)
    assert p.std is None and p.ci95 is None
    assert (p.wins, p.ties, p.losses) == (0, 0, 1)
    assert p.to_dict()["ci95"] is None


def test_paired_refuses_unpaired_scores():
    with pytest.raises(ValueError, match="same number"):
        paired([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="same number"):
        paired([], [])


def test_spread_keeps_seeds_and_replicates_apart():
    # replicate means 0.91, 0.82, 0.85 → mean 0.86, sample std sqrt((.05² + .04² + .01²) / 2) = sqrt(.0021);
    # seed stds (ddof 0) 0.01, 0.02, 0 → mean 0.01
    s = spread([[0.90, 0.92], [0.80, 0.84], [0.85]])
    assert s.n == 3
    assert s.mean == pytest.approx(0.86)
    assert s.std_replicates == pytest.approx(math.sqrt(0.0021))
    assert s.std_seeds == pytest.approx(0.01)
    assert spread([[0.5, 0.7]]).std_replicates is None


def _record(r: int, accs: dict[str, list[float]]) -> dict:
    methods = [{"method": k, "test_accuracies": v, "trainable_percent": 1.0, "evaluations": 0} for k, v in accs.items()]
    return {"replicate": r, "data_seed": r, "sampler_seed": r, "methods": methods}


def test_summary_pairs_biotune_with_every_method_present_in_every_replicate():
    records = [
        _record(0, {"BioTune": [0.90, 0.92], "Linear probing": [0.80, 0.80], "LoRA": [0.5]}),
        _record(1, {"BioTune": [0.80, 0.80], "Linear probing": [0.81, 0.83]}),
    ]
    out = summarize(records)
    assert list(out["summary"]) == ["BioTune", "Linear probing"]  # LoRA is not in replicate 1
    lp = out["paired"]["methods"]["Linear probing"]
    # per replicate: 0.91 − 0.80 = 0.11, 0.80 − 0.82 = −0.02
    assert lp["mean"] == pytest.approx(0.045)
    assert lp["std"] == pytest.approx(math.sqrt((0.065**2 * 2) / 1))
    assert (lp["wins"], lp["losses"], lp["n"]) == (1, 1, 2)
    assert out["paired"]["reference"] == "BioTune" and "BioTune" not in out["paired"]["methods"]
    text = to_markdown(records, out, "t")
    assert "| Linear probing | +4.50 |" in text and "1 of 2" in text


def test_one_replicate_report_says_there_is_no_interval():
    records = [_record(0, {"BioTune": [0.9], "Full fine-tuning": [0.85]})]
    out = summarize(records)
    assert out["paired"]["methods"]["Full fine-tuning"]["ci95"] is None
    text = to_markdown(records, out, "t")
    assert "needs ≥ 2 replicates" in text and "fewer than 2 replicates" in text


def test_without_a_biotune_row_nothing_is_paired():
    out = summarize([_record(0, {"Full fine-tuning": [0.85]})])
    assert out["paired"]["methods"] == {}
    assert "nothing to pair" in to_markdown([_record(0, {"Full fine-tuning": [0.85]})], out, "t")
