"""Study configuration, storage, and creating / opening a BioTune study.

The whole configuration of a search (model, weights, dataset and its fingerprint, training
recipe, folds, seeds, P/E/G, sampler seed) lives in the study's user attribute
:data:`CONFIG_ATTR`, so a worker needs nothing but the storage URL and the study name
(DESIGN.md, flow step 1). On one machine the storage defaults to an SQLite file; sharing a
study across machines uses PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from sqlalchemy.engine import make_url

from biotune_optuna.data import DatasetSpec
from biotune_optuna.sampler import BioTuneSampler, GAConfig
from biotune_optuna.training import Recipe

_logger = logging.getLogger(__name__)

CONFIG_ATTR = "biotune_config"
#: Version of the stored config layout; a worker refuses a study of another version.
CONFIG_VERSION = 1

#: Seeds of the reference (spec §4): one independent fine-tune per seed, the same for every genome.
PAPER_SEEDS = (684, 559, 629)

#: Pruners a study can use (``StudyConfig.pruner``); see :meth:`StudyConfig.make_pruner`.
PRUNERS = ("none", "median", "successive-halving")

#: Datasets with more files than this keep only their fingerprint in the study (the dashboard
#: reloads user attributes often: keep them small).
MAX_LISTED_FILES = 200


class ConfigError(ValueError):
    """A user-facing configuration problem (bad sizes, a study made with another config)."""


@dataclass(frozen=True)
class StudyConfig:
    """Everything a worker needs to evaluate trials of a study.

    Attributes:
        model: backbone name (``biotune_optuna.backbones.available_models()``).
        weights_file: explicit weights file, or None for the default location.
        weights_sha256: fingerprint of the weights file ("" for random init).
        dataset: the dataset spec.
        dataset_fingerprint: sha256 of the dataset's files and spec.
        dataset_files: file name → sha256 of the dataset's files, so a worker whose data differ
            can say which file (empty when there are more than :data:`MAX_LISTED_FILES`).
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
            :meth:`make_pruner`; a pruned genome's fitness is in the objective's docs.
    """

    model: str
    dataset: DatasetSpec
    blocks: tuple[str, ...]
    classes: tuple[str, ...]
    dataset_fingerprint: str
    dataset_files: Mapping[str, str] = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        try:
            GAConfig(len(self.blocks), self.population_size, self.n_elites, self.n_generations, self.sampler_seed, self.mode)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if self.n_folds < 1:
            raise ConfigError(f"folds must be ≥ 1, got {self.n_folds}")
        if self.max_retries < 0:
            raise ConfigError(f"max retries must be ≥ 0, got {self.max_retries}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")

    @property
    def n_evaluations(self) -> int:
        """Slots of the search: P + G·(P + E) (spec §7.14)."""
        return self.population_size + self.n_generations * (self.population_size + self.n_elites)

    def sampler(self, **overrides) -> BioTuneSampler:
        """The :class:`BioTuneSampler` of this study (overrides: timing knobs such as ``poll_interval``)."""
        return BioTuneSampler(
            self.blocks,
            population_size=self.population_size,
            n_elites=self.n_elites,
            n_generations=self.n_generations,
            seed=self.sampler_seed,
            mode=self.mode,
            n_folds=self.n_folds,
            max_retries=self.max_retries,
            **overrides,
        )

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner of this study. Intermediate values are the validation macro
        accuracy after each epoch, at step ``seed_index · max_epochs + epoch − 1``, so trials
        are compared at the same seed and epoch.

        * ``"none"``: :class:`optuna.pruners.NopPruner` (every evaluation runs to its own early
          stop, as in the paper).
        * ``"median"``: :class:`optuna.pruners.MedianPruner` — stop a trial whose best accuracy
          so far (over all its seeds) is below the median of earlier trials at the same step;
          not before ``population_size`` trials have completed (the initial population always
          runs in full), from the first epoch on.
        * ``"successive-halving"``: :class:`optuna.pruners.SuccessiveHalvingPruner` (asynchronous
          successive halving, min resource 1, reduction factor 3): rungs at steps 1, 3, 9…, i.e.
          after 2, 4, 10… epochs counted along the evaluation (seed 2's first epoch is step
          ``max_epochs``); a trial goes on past a rung only if it is in the top third of the
          trials that reached it.

        Optuna's HyperbandPruner is not offered: it shows the sampler only the trials of one
        bracket, and BioTune's slot claims need every trial of the study.

        Pruning decisions depend on which trials had finished when they were taken, so with a
        pruner a search no longer gives the same genomes whatever the number of workers.
        """
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.population_size, n_warmup_steps=0)
        if self.pruner == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        return optuna.pruners.NopPruner()

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


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` — the only form of a URL that is logged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show nothing of it
        return "<storage URL>"


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


def default_storage(directory: str | Path) -> str:
    """The embedded default: an SQLite file ``study.db`` in ``directory`` (created if needed)."""
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'study.db'}"


def open_storage(
    url: str, *, create_tables: bool = False, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.RDBStorage:
    """Open an RDB storage.

    Workers open it with ``create_tables=False`` (the schema is created once, by ``create`` /
    ``run``), so many workers starting together never race on schema creation.
    PostgreSQL connections are pinged before use (``pool_pre_ping``). ``heartbeat_interval`` and
    ``grace_period`` (seconds) turn on Optuna's heartbeats for trials run by ``optimize``.

    Raises:
        ConfigError: if the database cannot be reached or has no Optuna schema; the message
            carries the URL with its password hidden.
    """
    url = driver_url(url)
    kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings(), _schema_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat args
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                skip_table_creation=not create_tables,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot open storage {redact(url)}: {database_error(e, url)}") from None


#: PostgreSQL advisory lock key held while a process sets up or checks the Optuna schema.
SCHEMA_LOCK_KEY = 0x62696F74756E65  # "biotune"


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL session advisory lock while the storage is opened.

    Opening an ``RDBStorage`` writes even with ``skip_table_creation``: it inserts the
    ``version_info`` row and stamps ``alembic_version`` (creating that table) when they are
    missing. Processes doing this together on a new database collide on
    ``pg_type_typname_nsp_index`` (spec/optuna-pitfalls.md, "Storage"), so ``create``, ``run``
    and every worker take this lock first. Other databases: no lock (SQLite serialises writers).
    """
    if not url.startswith("postgresql"):
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # a lost connection frees it too
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    connection.commit()
    finally:
        engine.dispose()


def driver_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` → ``postgresql+psycopg2://`` when psycopg 3 is not
    installed (SQLAlchemy 2.1 reads the bare scheme as psycopg 3); other URLs unchanged."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


def database_error(error: BaseException, url: str | None = None) -> str:
    """One line saying why a database call failed: the driver's own first line (e.g.
    ``connection to server at "db", port 5432 failed: Connection refused``), password hidden."""
    root = error
    while root.__cause__ is not None or getattr(root, "orig", None) is not None:
        root = getattr(root, "orig", None) or root.__cause__
    lines = [line.strip() for line in str(root).strip().splitlines() if line.strip()]
    reason = lines[0] if lines else type(root).__name__
    password = _password(url) if url else None
    return reason.replace(password, "***") if password else reason


def load_config(study: optuna.Study) -> StudyConfig:
    """The config stored in ``study``.

    Raises:
        ConfigError: if the study is not a BioTune study.
    """
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study {study.study_name!r} has no BioTune config: it was not made by biotune-optuna")
    return StudyConfig.from_dict(raw)


def create_or_resume(
    storage: optuna.storages.BaseStorage,
    name: str,
    config: StudyConfig,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study with ``config``, or open it if it exists with the same config.

    ``sampler`` defaults to the study's :class:`BioTuneSampler` (others: comparison runs).

    Returns:
        (study, resumed): ``resumed`` is True when the study already existed.

    Raises:
        ConfigError: if a study of that name exists with a different config (it is left as is).
    """
    wanted = json.loads(json.dumps(config.to_dict()))  # as stored: tuples become lists
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler or config.sampler(), pruner=config.make_pruner())
    except KeyError:
        study = None
    if study is not None:
        stored = study.user_attrs.get(CONFIG_ATTR)
        if not isinstance(stored, dict):
            raise ConfigError(
                f"study {name!r} already exists and was not made by biotune-optuna (it has no config); "
                "choose another --study-name"
            )
        with contextlib.suppress(ConfigError):  # fields added since (e.g. pruner) take their defaults
            stored = json.loads(json.dumps(StudyConfig.from_dict(stored).to_dict()))
        if stored != wanted:
            diff = sorted(k for k in set(wanted) | set(stored) if stored.get(k) != wanted.get(k))

            def shown(k: str) -> str:
                old, new = stored.get(k), wanted.get(k)
                simple = all(isinstance(v, (str, int, float, type(None))) for v in (old, new))
                return f"{k}: stored {old!r}, given {new!r}" if simple else k

            raise ConfigError(
                f"study {name!r} already exists with another config (differs in: {'; '.join(map(shown, diff))}); "
                "choose another --study-name or repeat the original options"
            )
        return study, True
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=sampler or config.sampler(), pruner=config.make_pruner()
    )
    try:
        study.set_user_attr(CONFIG_ATTR, wanted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_macro_accuracy"])
    except Exception:
        optuna.delete_study(study_name=name, storage=storage)  # never leave a half-made study
        raise
    return study, False


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials FAIL — only for a storage whose every worker is this process
    (``run`` on the embedded default), where a RUNNING trial at start-up was left by a killed
    run. Their slots are then handed out again. Returns how many were failed."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        n += 1
    if n:
        _logger.warning("%d trial(s) left RUNNING by an interrupted run marked FAIL; their slots will be redone", n)
    return n
