"""Tuned baselines: each baseline's learning rate (and its own knob) chosen on the validation
split, under the final protocol itself.

BioTune searches per-block learning rates from 0.1× to 10× the base rate; a baseline run at the
one base rate would make "BioTune wins" partly "tuned beats untuned". So every baseline gets a
small sweep (spec/baselines.md names the grids), each candidate trained exactly as the final
protocol trains (full training split, every seed, same loop, epochs and early stopping), and
the candidate with the best mean validation macro accuracy over the seeds is chosen — the test
split is never looked at for the choice. The chosen candidate's models *are* its final runs:
only they are scored on the test split, so tuning costs the other candidates and nothing more.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from biotune_optuna.config import BASELINE_LABELS, ConfigError, StudyConfig, check_choice, check_learning_rate
from biotune_optuna.finetune.baselines import make_baseline, options
from biotune_optuna.finetune.data import Splits
from biotune_optuna.finetune.features import FeatureCache
from biotune_optuna.report.protocol import SeedRuns, train_seeds

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
    """A baseline's sweep, done.

    Attributes:
        chosen: the chosen candidate's parameters (``lr`` and every option swept).
        runs: the chosen candidate's runs — its final-protocol runs, not yet tested.
        trace: every candidate tried, in order: ``{"params": …, "val_accuracy": mean}``.
        selection: the cost of the candidates *not* chosen: ``{"configs", "fine_tunes",
            "epochs", "seconds"}`` (``configs`` counts all candidates tried).
    """

    chosen: dict
    runs: SeedRuns
    trace: list[dict]
    selection: dict


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


def tune_baseline(
    key: str,
    config: StudyConfig,
    splits: Splits,
    spec: TuneSpec,
    device: str = "auto",
    feature_cache: FeatureCache | None = None,
    on_candidate: Callable[[dict, float], None] | None = None,
) -> Tuned:
    """Sweep baseline ``key`` (module docstring) and return the candidate with the best mean
    validation macro accuracy over ``config.seeds``, with its trained runs.

    Args:
        on_candidate: called as ``on_candidate(params, mean validation accuracy)`` per candidate.

    Raises:
        ValueError: on an option value the baseline refuses (e.g. decay > 1).
    """
    grid = spec.grid(key, config.recipe.base_lr)
    tried: set[tuple] = set()
    best: dict = {"params": None, "runs": None}
    trace, spent = [], {"fine_tunes": 0, "epochs": 0, "seconds": 0.0}
    for params in _candidates(key, grid, spec.strategy, lambda: dict(best["params"])):
        ident = tuple(sorted(params.items()))
        if ident in tried:
            continue
        options_ = {k: v for k, v in params.items() if k != "lr"}
        runs = train_seeds(
            config, splits, lambda bb, p=params, o=options_: make_baseline(key, bb, p["lr"], **o), device, feature_cache
        )
        tried.add(ident)
        trace.append({"params": dict(params), "val_accuracy": round(runs.val_mean, 6)})
        for k, v in runs.cost().items():
            spent[k] += v
        if on_candidate is not None:
            on_candidate(params, runs.val_mean)
        if best["runs"] is None or runs.val_mean > best["runs"].val_mean:  # ties: the earlier one
            best.update(params=dict(params), runs=runs)
    chosen_runs = best["runs"]
    selection = {"configs": len(trace), **{k: round(spent[k] - v, 3) for k, v in chosen_runs.cost().items()}}
    defaults = {k: v for k, v in options(key).items() if k in KNOB_GRIDS.get(key, {}) and k not in best["params"]}
    return Tuned({**best["params"], **defaults}, chosen_runs, trace, selection)


def describe(params: Mapping[str, object]) -> str:
    """``"lr 0.001, alpha 0.01"`` for tables and log lines."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
