"""Statistics of replicated comparisons: paired differences, spreads, and their tables.

A *replicate* repeats the whole pipeline — data draw, folds, sampler seed, search, final
protocol — and yields, per method, the test macro accuracy of each retraining seed. Two
spreads are kept apart:

* over **retraining seeds** (within one replicate: one configuration retrained with every seed;
  population std, ddof 0, as in the final table, spec §8.3);
* over **replicates** (between whole pipelines: sample std, ddof 1, the one an interval needs).

BioTune against another method is read *paired*: per replicate, d = mean(BioTune) − mean(other)
on the same data draw and seeds; over R replicates the mean of d, its sample std, the 95 %
t-interval mean ± t(0.975, R − 1)·std/√R, and wins / ties / losses (d > 0, = 0, < 0). With
R < 2 there is no std and no interval, and the tables say so.

Pure: the standard library and SciPy's t quantile (SciPy comes with scikit-learn); no torch, no
Optuna. Records are the dicts :mod:`biotune_optuna.report.replicates` writes per replicate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

#: The method every other one is compared with (the first row of ``final_report``).
REFERENCE = "BioTune"
#: Two-sided confidence of the intervals.
CONFIDENCE = 0.95


def t_quantile(df: int, q: float = 0.5 + CONFIDENCE / 2) -> float:
    """Quantile ``q`` of Student's t distribution with ``df`` ≥ 1 degrees of freedom
    (t(0.975, 2) = 4.3027, t(0.975, 9) = 2.2622).

    Raises:
        ValueError: if ``df`` < 1 or ``q`` is not in (0, 1).
    """
    if df < 1 or not 0 < q < 1:
        raise ValueError(f"t quantile needs df ≥ 1 and 0 < q < 1, got df={df}, q={q}")
    from scipy.stats import t  # imported when needed: slow to import

    return float(t.ppf(q, df))


@dataclass(frozen=True)
class Paired:
    """Paired difference reference − other over replicates, in accuracy units ([−1, 1]).

    Attributes:
        n: replicates paired (both methods present).
        mean: mean difference.
        std: sample std (ddof 1) of the differences; None when n < 2.
        ci95: (low, high) t-interval of the mean at :data:`CONFIDENCE`; None when n < 2.
        wins, ties, losses: replicates where the reference is better, equal, worse.
    """

    n: int
    mean: float
    std: float | None
    ci95: tuple[float, float] | None
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict:
        """JSON-safe dict (``ci95`` as a list or None)."""
        d = asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d


def paired(reference: Sequence[float], other: Sequence[float]) -> Paired:
    """Paired difference of two per-replicate scores (same order, same replicates).

    Raises:
        ValueError: on sequences of different lengths or empty ones.
    """
    if len(reference) != len(other) or not reference:
        raise ValueError(f"paired scores need the same number (≥ 1) of replicates, got {len(reference)} and {len(other)}")
    diffs = [a - b for a, b in zip(reference, other)]
    n, mean = len(diffs), statistics.fmean(diffs)
    std = ci = None
    if n >= 2:
        std = statistics.stdev(diffs)
        half = t_quantile(n - 1) * std / math.sqrt(n)
        ci = (mean - half, mean + half)
    return Paired(n, mean, std, ci, sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs))


@dataclass(frozen=True)
class Spread:
    """One method's test accuracy over replicates, both spreads kept apart (accuracy units).

    Attributes:
        n: replicates.
        mean: mean over replicates of the per-replicate mean over seeds.
        std_replicates: sample std (ddof 1) of the per-replicate means; None when n < 2.
        std_seeds: mean over replicates of the population std (ddof 0) over retraining seeds.
    """

    n: int
    mean: float
    std_replicates: float | None
    std_seeds: float


def spread(per_replicate: Sequence[Sequence[float]]) -> Spread:
    """The :class:`Spread` of test accuracies given per replicate, per retraining seed.

    Raises:
        ValueError: with no replicate, or a replicate without any seed.
    """
    if not per_replicate or not all(per_replicate):
        raise ValueError("a spread needs ≥ 1 replicate, each with ≥ 1 seed")
    means = [statistics.fmean(seeds) for seeds in per_replicate]
    std = statistics.stdev(means) if len(means) >= 2 else None
    return Spread(len(means), statistics.fmean(means), std, statistics.fmean(statistics.pstdev(s) for s in per_replicate))


def accuracies(records: Sequence[Mapping]) -> dict[str, list[list[float]]]:
    """Method → per-replicate test accuracies per seed, for the methods of the first record,
    in its order; a method missing from a later record is left out of the whole comparison
    (pairs must share replicates)."""
    if not records:
        return {}
    per = [{m["method"]: list(m["test_accuracies"]) for m in r["methods"]} for r in records]
    names = [m["method"] for m in records[0]["methods"]]
    return {name: [p[name] for p in per] for name in names if all(name in p for p in per)}


def summarize(records: Sequence[Mapping], reference: str = REFERENCE) -> dict:
    """The ``summary`` and ``paired`` sections of a replicated report.

    Returns:
        ``{"summary": {method: Spread as dict}, "paired": {"reference", "confidence",
        "methods": {other method: Paired as dict}}}``; ``paired.methods`` is empty when the
        reference is missing.
    """
    acc = accuracies(records)
    summary = {name: asdict(spread(reps)) for name, reps in acc.items()}
    methods = {}
    if reference in acc:
        ref = [statistics.fmean(s) for s in acc[reference]]
        for name, reps in acc.items():
            if name != reference:
                methods[name] = paired(ref, [statistics.fmean(s) for s in reps]).to_dict()
    return {"summary": summary, "paired": {"reference": reference, "confidence": CONFIDENCE, "methods": methods}}


def _pp(x: float | None, signed: bool = False) -> str:
    """Accuracy units as percentage points ("—" for None)."""
    return "—" if x is None else f"{100 * x:{'+' if signed else ''}.2f}"


def replicate_table(records: Sequence[Mapping]) -> list[str]:
    """Markdown rows: one per replicate and method, spread over retraining seeds only."""
    lines = [
        "| Replicate | Data seed | Sampler seed | Method | Test macro acc. (%), mean ± std over seeds | Trainable (%) | Search evaluations |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        for m in r["methods"]:
            seeds = m["test_accuracies"]
            acc = f"{_pp(statistics.fmean(seeds))} ± {_pp(statistics.pstdev(seeds))} ({len(seeds)} seeds)"
            lines.append(
                f"| {r['replicate']} | {r['data_seed']} | {r['sampler_seed']} | {m['method']} | {acc} | "
                f"{m['trainable_percent']:.2f} | {m.get('evaluations') or '—'} |"
            )
    return lines


def summary_tables(sections: Mapping) -> list[str]:
    """Markdown: spreads per method over replicates, then the paired differences."""
    summary, pair = sections["summary"], sections["paired"]
    lines = [
        "| Method | Replicates | Test macro acc. (%), mean | Std over replicates (pp) | Mean std over retraining seeds (pp) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['n']} | {_pp(s['mean'])} | {_pp(s['std_replicates'])} | {_pp(s['std_seeds'])} |")
    ref = pair["reference"]
    lines += [
        "",
        f"Paired difference {ref} − method, per replicate on the same data and seeds (percentage points):",
        "",
        f"| {ref} − … | Mean | Std over replicates | {round(100 * pair['confidence'])} % interval (t) | {ref} wins |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, p in pair["methods"].items():
        ci = f"[{_pp(p['ci95'][0], True)}, {_pp(p['ci95'][1], True)}]" if p["ci95"] else "— (needs ≥ 2 replicates)"
        ties = f" ({p['ties']} tied)" if p["ties"] else ""
        lines.append(f"| {name} | {_pp(p['mean'], True)} | {_pp(p['std'])} | {ci} | {p['wins']} of {p['n']}{ties} |")
    if not pair["methods"]:
        lines.append(f"| (no {ref} row in every replicate: nothing to pair) | | | | |")
    return lines


def to_markdown(records: Sequence[Mapping], sections: Mapping, title: str) -> str:
    """The whole replicated report as Markdown."""
    n = len(records)
    note = "" if n >= 2 else " With fewer than 2 replicates there is no spread over replicates and no interval."
    lines = [
        f"# {title}",
        "",
        f"{n} replicate(s): each repeats the data draw, folds, sampler seed, searches and final protocol.{note}",
        "",
        "## Per replicate (spread over retraining seeds)",
        "",
        *replicate_table(records),
        "",
        "## Over replicates",
        "",
        *summary_tables(sections),
    ]
    return "\n".join(lines) + "\n"
