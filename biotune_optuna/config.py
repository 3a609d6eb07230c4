"""The study's configuration, validated once: what to fine-tune, on what data, searched how.

Everything a worker needs lives in one :class:`StudyConfig`, stored in the study's user
attribute ``biotune_config`` (DESIGN.md, flow step 1): the model and its weights' fingerprint,
the :class:`DatasetSpec` and its fingerprint, the training :class:`Recipe`, folds, seeds and the
search sizes P / E / G (spec/biotune-algorithm.md §7.14).

Every check of user input lives here, with one wording ("X must be ≥ N, got V") and one
exception, :class:`ConfigError` — the CLI, the sampler, the training loop and the baselines all
call these checks, so the same mistake reads the same through every door.

Pure Python: no torch, no Optuna, no database (``biotune-optuna status --help`` imports this).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field


class ConfigError(ValueError):
    """A user-facing problem with the configuration: bad sizes, unknown names, a study made with
    another config. The CLI prints it as one line and exits 2."""


class DataError(ConfigError):
    """A problem with the dataset: its spec, or missing / unreadable / too few files."""


#: Names of the datasets (spec/offline-assets.md "Datasets").
DATASETS = ("mnist", "fashion-mnist", "digits", "folder")
#: Baselines of the final report (spec/baselines.md): key → display name.
BASELINE_LABELS = {
    "full": "Full fine-tuning",
    "linear": "Linear probing",
    "autorgn": "AutoRGN",
    "l2sp": "L2-SP",
    "l1sp": "L1-SP",
    "lora": "LoRA",
    "bitfit": "BitFit",
    "llrd": "LLRD",
}
#: Optuna's samplers that ``compare`` runs on BioTune's search space: key → display name.
SAMPLER_LABELS = {"tpe": "TPE", "cmaes": "CMA-ES", "random": "Random search", "nsga2": "NSGA-II"}
#: Search modes of the sampler (search/generations.py).
MODES = ("batched", "reference")
#: What one trial of a BioTune study evaluates (``StudyConfig.work_unit``): ``seed`` = one
#: (slot, seed) pair, so a generation keeps (P + E)·seeds workers busy; ``trial`` = a whole slot
#: with every seed, one after another (every study made before work units existed).
WORK_UNITS = ("seed", "trial")
#: Pruners a study can use (``StudyConfig.pruner``); built by ``study.studies.make_pruner``.
PRUNERS = ("none", "median", "successive-halving")
#: Seeds of the reference (spec §4): one independent fine-tune per seed, the same for every genome.
PAPER_SEEDS = (684, 559, 629)
#: Version of the stored config layout; a worker refuses a study of another version.
CONFIG_VERSION = 1
#: Datasets with more files than this keep a fixed-size sketch of their files in the study
#: instead of the list (the dashboard reloads user attributes often: keep them small).
MAX_LISTED_FILES = 200


# ------------------------------------------------------------------------------------ checks
def check_int(name: str, value: object, minimum: int | None = None, error: type[ConfigError] = ConfigError) -> int:
    """``value`` as an int, refusing bools, non-integers and values below ``minimum``.

    Raises:
        ConfigError (or ``error``): "NAME must be an integer, got V" / "NAME must be ≥ N, got V".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


def check_choice(name: str, value: object, choices: Iterable[str], error: type[ConfigError] = ConfigError) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        ConfigError (or ``error``): "NAME must be one of A, B, got 'V'".
    """
    choices = tuple(choices)
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_positive(name: str, value: float) -> float:
    """A finite number > 0 (a learning rate, a scale).

    Raises:
        ConfigError: "NAME must be a finite number > 0, got V".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_learning_rate(value: float, name: str = "base learning rate") -> float:
    """A learning rate: a finite number > 0 (:func:`check_positive`)."""
    return check_positive(name, value)


def check_probability(name: str, value: float) -> float:
    """A probability that leaves something: a number in [0, 1) (a dropout rate).

    Raises:
        ConfigError: "NAME must be in [0, 1), got V".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """A finite number ≥ 0 (a penalty strength, a decay).

    Raises:
        ConfigError: "NAME must be a finite number ≥ 0, got V".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def check_search(n_blocks: int, population_size: int, n_elites: int, n_generations: int, seed: int, mode: str) -> None:
    """Sizes of a BioTune search (spec §7): B ≥ 1 blocks, P ≥ 2, 0 ≤ E < P, G ≥ 0, seed ≥ 0.

    Raises:
        ConfigError: naming the offending value.
    """
    check_int("number of blocks", n_blocks, 1)
    check_int("population size", population_size, 2)
    check_int("elites", n_elites, 0)
    if n_elites >= population_size:
        raise ConfigError(f"elites must be smaller than the population size, got elites={n_elites}, population={population_size}")
    check_int("generations", n_generations, 0)
    check_int("sampler seed", seed, 0)
    check_choice("mode", mode, MODES)


def n_evaluations(population_size: int, n_elites: int, n_generations: int) -> int:
    """The search budget: P + G·(P + E) slots (spec §7.14) — P initial genomes, then per
    generation 2E hill-climb proposals and P − E children. An upper bound on the evaluations:
    the two hill-climb slots of an elite that selects no block are skipped (spec §7.4)."""
    return population_size + n_generations * (population_size + n_elites)


# ------------------------------------------------------------------------------------ parts
@dataclass(frozen=True)
class DatasetSpec:
    """What to load and how to cut it. Validated on construction.

    Attributes:
        name: one of :data:`DATASETS`.
        path: the image folder (required for ``"folder"``); for ``"mnist"`` /
            ``"fashion-mnist"`` an optional folder holding the four idx files instead of the
            packaged ones; not allowed for ``"digits"``.
        image_size: side of the square images after resizing the shorter side and
            center-cropping; ≥ 8.
        train_size: cap on training images (stratified seeded subsample); None = all.
        val_size: validation images; when val is carved from the training split this is the
            carved size, else a cap on the val split; None = the default (finetune/data.py).
        test_size: cap on test images (stratified seeded subsample); None = all.
        seed: seed of every split and subsample.

    Raises:
        DataError: unknown name, missing ``path`` for ``"folder"``, ``image_size`` < 8, a size
            ≤ 0, a negative seed, or a non-integer size / seed.
    """

    name: str
    path: str | None = None
    image_size: int = 64
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise DataError(f"unknown dataset {self.name!r}; valid names: {', '.join(DATASETS)}")
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        if self.path is not None and not isinstance(self.path, str):
            raise DataError(f"dataset path must be a string, got {type(self.path).__name__}")
        if self.name == "folder" and not self.path:
            raise DataError("dataset 'folder' needs a path (the image folder)")
        if self.name == "digits" and self.path is not None:
            raise DataError(f"dataset 'digits' takes no path (got {self.path!r})")
        object.__setattr__(self, "image_size", check_int("image_size", self.image_size, 8, DataError))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, DataError))
        for name in ("train_size", "val_size", "test_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_int(name, getattr(self, name), 1, DataError))

    def to_dict(self) -> dict:
        """JSON-safe dict of all fields (for an Optuna study's user attrs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> DatasetSpec:
        """Inverse of :meth:`to_dict`. Raises DataError on unknown or missing fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"unknown DatasetSpec field(s): {', '.join(unknown)}")
        if "name" not in d:
            raise DataError("DatasetSpec needs a 'name'")
        return cls(**d)


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters (spec §4 defaults).

    Attributes:
        max_epochs: epochs at most (≥ 1; spec 30).
        patience: epochs without strict improvement of validation macro accuracy before
            stopping (≥ 1; spec 3).
        batch_size: training batch (spec 96).
        eval_batch_size: validation/test batch.
        base_lr: base learning rate (spec 1e-3); block learning rates scale it.
        cosine_t_max: CosineAnnealingLR T_max in epochs (spec 100).
        frozen_bn: ``"eval"`` (default) runs frozen blocks in eval mode (BatchNorm statistics
            fixed, dropout off); ``"train"`` reproduces the reference, where the statistics of
            frozen blocks keep updating (and no frozen-prefix cache is possible).
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: NHWC memory format (about 1.6× faster training of EfficientNet-Lite0
            on CPU, and the fast path for tensor cores on CUDA).

    Raises:
        ConfigError: a size < 1, a learning rate that is not a finite number > 0, an unknown
            ``frozen_bn``.
    """

    max_epochs: int = 30
    patience: int = 3
    batch_size: int = 96
    eval_batch_size: int = 256
    base_lr: float = 1e-3
    cosine_t_max: int = 100
    frozen_bn: str = "eval"
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        for name in ("max_epochs", "patience", "batch_size", "eval_batch_size", "cosine_t_max"):
            check_int(name.replace("_", " "), getattr(self, name), 1)
        check_learning_rate(self.base_lr)
        check_choice("frozen_bn", self.frozen_bn, ("eval", "train"))

    def to_dict(self) -> dict:
        """JSON-safe dict (stored in the study's user attributes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**d)


@dataclass(frozen=True)
class StudyConfig:
    """Everything a worker needs to evaluate trials of a study.

    Attributes:
        model: backbone name (``biotune_optuna.finetune.backbones.available_models()``).
        weights_file: explicit weights file, or None for the default location.
        weights_sha256: fingerprint of the weights file ("" for random init).
        dataset: the dataset spec.
        dataset_fingerprint: sha256 of the dataset's files and spec.
        dataset_files: file name → sha256 of the dataset's files, so a worker whose data differ
            can say which file (empty when there are more than :data:`MAX_LISTED_FILES`).
        dataset_sketch: above :data:`MAX_LISTED_FILES` files, a ~3 KB sketch of them that names
            the files that differ (``finetune/fingerprint.py``); "" otherwise, and in studies
            made before it existed.
        classes: class names, in label order.
        blocks: block names of the model, input side first.
        recipe: training recipe.
        seeds: fine-tuning seeds per evaluation (fitness = mean over them, spec §6).
        n_folds: data folds rotated by generation (spec §5.1).
        population_size, n_elites, n_generations, sampler_seed, mode: the search (spec §7).
        max_retries: re-evaluations of a failed slot before it counts as worst.
        baselines: methods retrained next to BioTune in the final report.
        pruner: stop unpromising evaluations early from their per-epoch validation accuracy
            (one of :data:`PRUNERS`; ``"none"`` is the paper's behaviour). See
            ``study.studies.make_pruner``; a pruned genome's fitness is in the objective's docs.
        work_unit: what one trial evaluates (one of :data:`WORK_UNITS`): ``"seed"`` one
            fine-tune of a slot's genome with one seed — a slot is ``len(seeds)`` trials and its
            fitness the mean of theirs once all are in, so a generation keeps (P + E)·seeds
            workers busy; ``"trial"`` the whole slot, every seed in one trial (one trial = one
            evaluation, as in a plain Optuna study). The genomes are the same either way. The
            default here is ``"trial"`` (also what a stored config without the field reads);
            the command line (``create``/``run --work-unit``) defaults to ``"seed"``.

    Raises:
        ConfigError: on any value outside its range (:func:`check_search` for the search sizes).
    """

    model: str
    dataset: DatasetSpec
    blocks: tuple[str, ...]
    classes: tuple[str, ...]
    dataset_fingerprint: str
    dataset_files: Mapping[str, str] = field(default_factory=dict)
    dataset_sketch: str = ""
    weights_file: str | None = None
    weights_sha256: str = ""
    recipe: Recipe = field(default_factory=Recipe)
    seeds: tuple[int, ...] = PAPER_SEEDS
    n_folds: int = 2
    population_size: int = 10
    n_elites: int = 3
    n_generations: int = 10
    sampler_seed: int = 0
    mode: str = "batched"
    max_retries: int = 2
    baselines: tuple[str, ...] = ("full", "linear")
    pruner: str = "none"
    work_unit: str = "trial"

    def __post_init__(self) -> None:
        check_search(len(self.blocks), self.population_size, self.n_elites, self.n_generations, self.sampler_seed, self.mode)
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        check_int("folds", self.n_folds, 1)
        check_int("max retries", self.max_retries, 0)
        check_choice("pruner", self.pruner, PRUNERS)
        check_choice("work unit", self.work_unit, WORK_UNITS)

    @property
    def n_evaluations(self) -> int:
        """Slots of the search: P + G·(P + E) (:func:`n_evaluations`)."""
        return n_evaluations(self.population_size, self.n_elites, self.n_generations)

    @property
    def units_per_slot(self) -> int:
        """Trials that evaluate one slot: ``len(seeds)`` when ``work_unit == "seed"``, else 1."""
        return len(self.seeds) if self.work_unit == "seed" else 1

    def to_dict(self) -> dict:
        """JSON-safe dict, with ``version``."""
        d = asdict(self)
        d["dataset"] = self.dataset.to_dict()
        d["dataset_files"] = dict(self.dataset_files)
        d["recipe"] = self.recipe.to_dict()
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> StudyConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: for a config of another version or with unknown fields.
        """
        d = dict(d)
        d.setdefault("work_unit", "trial")  # studies made before work units: one trial per slot
        version = d.pop("version", None)
        if version != CONFIG_VERSION:
            raise ConfigError(f"the study was made by a config version {version}; this biotune-optuna reads version {CONFIG_VERSION}")
        try:
            d["dataset"] = DatasetSpec.from_dict(d["dataset"])
            d["recipe"] = Recipe.from_dict(d["recipe"])
            for key in ("blocks", "classes", "seeds", "baselines"):
                d[key] = tuple(d[key])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"the study's stored config is not one this version understands ({e})") from None
