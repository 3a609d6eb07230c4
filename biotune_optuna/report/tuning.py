"""Tuned baselines: each baseline's learning rate (and its own knob) chosen on the validation
split, under the final protocol itself.

BioTune searches per-block learning rates from 0.1× to 10× the base rate; a baseline run at the
one base rate would make "BioTune wins" partly "tuned beats untuned". So every baseline gets a
small sweep (spec/baselines.md names the grids), each candidate trained exactly as the final
protocol trains (full training split, every seed, same loop, epochs and early stopping), and
the candidate with the best mean validation macro accuracy over the seeds is chosen — the test
split is never looked at for the choice. The chosen candidate's runs *are* its final runs, so
tuning costs the other candidates and nothing more. Each (candidate, seed) is one work unit of
:mod:`.units` (:func:`plan_sweep`), so workers share a sweep.

Default grids (base = the study's base learning rate):

=========  =====================================  ===================================
baseline   learning rates                         its own knob
=========  =====================================  ===================================
full       base × {0.1, 1, 10}                    —
linear     base × {0.1, 1, 10}                    —
autorgn    base × {0.1, 1, 10, 100}               — (its rates are ``w_i·lr``, w_i ≤ 1)
l2sp       base × {0.1, 1, 10}                    α ∈ {1e-3, 1e-2, 1e-1, 1} (spec §1.5)
l1sp       base × {0.1, 1, 10}                    α ∈ {1e-5, 1e-4, 1e-3, 1e-2} [1]
lora       base × {0.1, 1, 10}                    r ∈ {4, 8, 16} (spec §1.4)
bitfit     base × {0.1, 1, 10}                    —
llrd       base × {0.1, 1, 10}                    decay ∈ {0.65, 0.75, 0.9} (spec §1.6)
=========  =====================================  ===================================

[1] L1-SP's penalty gradient is α·sign(θ − θ⁰) for every parameter, whatever its distance, so
its useful α is far below L2-SP's (at α = 0.1 it pins the network: 36 % on digits, issue 12).

Strategies: ``coordinate`` (default) sweeps the learning rate at the knob's anchor (the
method's default when the grid holds it, else the grid's middle value), then each knob at the
chosen learning rate (L2-SP: 3 + 3 candidates); ``grid`` tries the full product (3 × 4).
Ties go to the earlier candidate. ``TuneSpec(enabled=False)`` is the paper's fixed protocol:
every baseline at the base learning rate with its default options.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from biotune_optuna.config import BASELINE_LABELS, ConfigError, check_choice, check_learning_rate
from biotune_optuna.finetune.baselines import options
from biotune_optuna.report.units import Unit, seed_results

STRATEGIES = ("coordinate", "grid")
#: Learning rates tried, as multiples of the base learning rate (BioTune's per-block range).
DEFAULT_LR_FACTORS = (0.1, 1.0, 10.0)
LR_FACTORS = {"autorgn": (0.1, 1.0, 10.0, 100.0)}
#: Each baseline's own knob and its default grid (module docstring).
KNOB_GRIDS: dict[str, dict[str, tuple]] = {
    "l2sp": {"alpha": (1e-3, 1e-2, 1e-1, 1.0)},
    "l1sp": {"alpha": (1e-5, 1e-4, 1e-3, 1e-2)},
    "lora": {"r": (4, 8, 16)},
    "llrd": {"decay": (0.65, 0.75, 0.9)},
}


@dataclass(frozen=True)
class TuneSpec:
    """What each baseline's sweep tries.

    Attributes:
        enabled: False for the paper's fixed protocol (base learning rate, default options).
        lrs: learning rates tried for every baseline (absolute); None for the defaults
            (base × :data:`DEFAULT_LR_FACTORS`, or :data:`LR_FACTORS`).
        grids: per baseline key, option → values, replacing the defaults (``"lr"`` replaces
            that baseline's learning rates); see :func:`parse_tune_grid`.
        strategy: ``"coordinate"`` or ``"grid"`` (module docstring).
    """

    enabled: bool = True
    lrs: tuple[float, ...] | None = None
    grids: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    strategy: str = "coordinate"

    def __post_init__(self) -> None:
        check_choice("tuning strategy", self.strategy, STRATEGIES)
        if not self.enabled and (self.lrs or self.grids):
            raise ConfigError("--no-tune cannot be combined with --lr-grid or --tune-grid")

    def grid(self, key: str, base_lr: float) -> dict[str, tuple]:
        """``{"lr": (…), knob: (…), …}`` for baseline ``key``; one base-rate candidate when
        disabled."""
        if not self.enabled:
            return {"lr": (base_lr,)}
        factors = LR_FACTORS.get(key, DEFAULT_LR_FACTORS)
        lrs = self.lrs or tuple(float(f"{base_lr * f:.6g}") for f in factors)
        out = {"lr": tuple(lrs), **KNOB_GRIDS.get(key, {})}
        out.update(self.grids.get(key, {}))
        return {k: tuple(v) for k, v in out.items()}

    def basis(self, key: str, base_lr: float) -> dict:
        """A JSON description of the sweep, stored with the result: a stored result is reused
        only for the same sweep."""
        return {"strategy": self.strategy if self.enabled else "fixed", "grid": {k: list(v) for k, v in self.grid(key, base_lr).items()}}


NO_TUNING = TuneSpec(enabled=False)


def parse_lr_grid(text: str | None) -> tuple[float, ...] | None:
    """``--lr-grid 1e-4,1e-3,1e-2`` → learning rates (None when not given).

    Raises:
        ConfigError: on a value that is not a finite number > 0.
    """
    if not text:
        return None
    return tuple(check_learning_rate(_number(v, "--lr-grid"), "--lr-grid value") for v in text.split(",") if v.strip())


def parse_tune_grid(items: Sequence[str] | None) -> dict[str, dict[str, tuple]]:
    """``--tune-grid METHOD.OPTION=V1,V2…`` (repeatable) → ``{method: {option: values}}``.

    OPTION is ``lr`` or one of the baseline's options (``finetune.baselines.options``); values
    take the type of the option's default (int, float or true/false).

    Raises:
        ConfigError: naming the bad item and what is valid.
    """
    grids: dict[str, dict[str, tuple]] = {}
    for item in items or ():
        head, sep, values = item.partition("=")
        key, dot, name = head.strip().partition(".")
        if not sep or not dot or not values.strip():
            raise ConfigError(f"--tune-grid must look like METHOD.OPTION=V1,V2 (e.g. l2sp.alpha=0.01,0.1), got {item!r}")
        check_choice("--tune-grid method", key, BASELINE_LABELS)
        valid = {"lr": 1e-3, **options(key)}
        if name not in valid:
            raise ConfigError(f"--tune-grid: {key} has no option {name!r}; valid: {', '.join(valid)}")
        parse = _parser(name, valid[name])
        grids.setdefault(key, {})[name] = tuple(parse(v.strip()) for v in values.split(",") if v.strip())
    return grids


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} values must be numbers, got {text!r}") from None


def _parser(name: str, default: object) -> Callable[[str], object]:
    if name == "lr":
        return lambda v: check_learning_rate(_number(v, "--tune-grid"), f"--tune-grid {name} value")
    if isinstance(default, bool):
        return lambda v: check_choice(f"--tune-grid {name} value", v.lower(), ("true", "false")) == "true"
    if isinstance(default, int):
        def as_int(v: str) -> int:
            number = _number(v, "--tune-grid")
            if number != int(number):
                raise ConfigError(f"--tune-grid {name} values must be integers, got {v!r}")
            return int(number)
        return as_int
    return lambda v: _number(v, "--tune-grid")


# ------------------------------------------------------------------------------ the sweep
@dataclass
class Tuned:
    """A baseline's sweep, decided.

    Attributes:
        chosen: the chosen candidate's parameters (``lr`` and every option swept, plus the
            defaults of swept-grid options it did not set).
        results: the chosen candidate's unit results, one per seed (its final-protocol runs).
        trace: every candidate tried, in order: ``{"params": …, "val_accuracy": mean}``.
        selection: the cost of the candidates *not* chosen: ``{"configs", "fine_tunes",
            "epochs", "seconds"}`` (``configs`` counts all candidates tried).
    """

    chosen: dict
    results: list[dict]
    trace: list[dict]
    selection: dict


class _Undecided(Exception):
    """A later stage of a coordinate sweep needs the best candidate of a stage not yet done."""


def _anchor(values: tuple, default: object) -> object:
    """The knob value the learning-rate stage uses: the default if swept, else the middle."""
    return default if default in values else values[len(values) // 2]


def _candidates(key: str, grid: Mapping[str, tuple], strategy: str, best: Callable[[], dict]) -> Iterator[dict]:
    """Candidates in order; ``best()`` gives the best so far (coordinate stages read it)."""
    knobs = {k: v for k, v in grid.items() if k != "lr"}
    if strategy == "grid":
        names = list(grid)
        yield from (dict(zip(names, combo)) for combo in itertools.product(*grid.values()))
        return
    defaults = options(key)
    anchor = {k: _anchor(v, defaults.get(k)) for k, v in knobs.items()}
    yield from ({"lr": lr, **anchor} for lr in grid["lr"])
    for name, values in knobs.items():
        yield from ({**best(), name: v} for v in values)


def plan_sweep(
    key: str, spec: TuneSpec, base_lr: float, seeds: Sequence[int], done: Mapping[str, dict], round_: int = 0
) -> tuple[list[Unit], Tuned | None]:
    """Baseline ``key``'s sweep (module docstring) as final-protocol work units.

    Walks the candidates in order; a candidate is tried once all its seeds' units are in
    ``done`` (ident → result, :mod:`.units`). Returns the units still needed — every candidate
    of the current stage at once, so workers train them side by side — and, once none is,
    the decision: the candidate with the best mean validation macro accuracy over ``seeds``
    (ties: the earlier one). Test accuracy is never read here.

    Raises:
        ValueError: on an option value the baseline refuses (when its unit trains).
    """
    grid = spec.grid(key, base_lr)
    method = f"baseline:{key}"
    tried: set[tuple] = set()
    best: dict = {"params": None, "val": None, "results": None}
    trace, needed = [], []

    def best_so_far() -> dict:
        if needed or best["params"] is None:
            raise _Undecided
        return dict(best["params"])

    try:
        for params in _candidates(key, grid, spec.strategy, best_so_far):
            ident = tuple(sorted(params.items()))
            if ident in tried:
                continue
            tried.add(ident)
            units = [Unit(method, dict(params), seed, round_) for seed in seeds]
            results = seed_results(units, done)
            if results is None:
                needed += [u for u in units if u.ident not in done]
                continue
            val = statistics.fmean(r["val_accuracy"] for r in results)
            trace.append({"params": dict(params), "val_accuracy": round(val, 6)})
            if best["val"] is None or val > best["val"]:
                best.update(params=dict(params), val=val, results=results)
    except _Undecided:
        pass
    if needed:
        return needed, None
    spent = {"fine_tunes": 0, "epochs": 0, "seconds": 0.0}
    for entry in trace:
        for r in seed_results([Unit(method, entry["params"], s, round_) for s in seeds], done):
            spent["fine_tunes"] += 1
            spent["epochs"] += r["epochs"]
            spent["seconds"] += r["seconds"]
    final = run_cost(best["results"])
    selection = {"configs": len(trace), **{k: round(spent[k] - v, 3) for k, v in final.items()}}
    defaults = {k: v for k, v in options(key).items() if k in KNOB_GRIDS.get(key, {}) and k not in best["params"]}
    return [], Tuned({**best["params"], **defaults}, best["results"], trace, selection)


def run_cost(results: Sequence[dict]) -> dict[str, float]:
    """``{"fine_tunes", "epochs", "seconds"}`` of one configuration's unit results."""
    return {
        "fine_tunes": len(results),
        "epochs": sum(r["epochs"] for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 3),
    }


def describe(params: Mapping[str, object]) -> str:
    """``"lr 0.001, alpha 0.01"`` for tables and log lines."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
