"""Storage: opening an Optuna RDB storage, hiding passwords, telling errors that heal from those
that do not.

On one machine the storage defaults to an SQLite file (:func:`default_storage`); sharing a study
across machines uses PostgreSQL. Every wait on the database — a worker connecting, a study that
has not appeared yet, an outage in the middle of a search — goes through the one tenacity policy
of :mod:`biotune_optuna.study.retry`; only errors that heal by waiting are retried
(:func:`~biotune_optuna.study.retry.unreachable`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from sqlalchemy.engine import make_url

from biotune_optuna.config import ConfigError
from biotune_optuna.study._optuna import DurableStorage
from biotune_optuna.study.retry import unreachable

_logger = logging.getLogger(__name__)

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


class StorageUnavailable(ConfigError):
    """The database cannot be reached for now (server down, starting, refusing connections, host
    not resolvable yet): worth waiting for (:func:`~biotune_optuna.study.retry.unreachable`)."""


class NoSchema(ConfigError):
    """The database has no Optuna tables yet: no study was ever created in it."""


def open_storage(
    url: str,
    *,
    create_tables: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    retry_within: float = 0.0,
) -> optuna.storages.RDBStorage:
    """Open an RDB storage (a :class:`~biotune_optuna.study._optuna.DurableStorage`).

    Workers open it with ``create_tables=False`` (the schema is created once, by ``create`` /
    ``run``), so many workers starting together never race on schema creation.
    PostgreSQL connections are pinged before use (``pool_pre_ping``) and give up connecting after
    10 s. ``heartbeat_interval`` and ``grace_period`` (seconds) turn on Optuna's heartbeats for
    trials run by ``optimize``; heartbeats then survive outages. ``retry_within`` (seconds, 0 =
    never): how long calls on a running trial are retried while the database is unreachable.

    Raises:
        StorageUnavailable: the server cannot be reached for now (worth retrying).
        NoSchema: the database has no Optuna tables (and ``create_tables`` is False).
        ConfigError: anything else that cannot heal — wrong password, missing database,
            unparseable URL, missing driver. Messages carry the URL with its password hidden.
    """
    url = driver_url(url)
    kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}
    try:
        with warnings.catch_warnings(), _schema_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat args
            return DurableStorage(
                url,
                engine_kwargs=kwargs,
                skip_table_creation=not create_tables,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                retry_within=retry_within,
                transient=unreachable,
                describe=lambda e: database_error(e, url),
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError, RuntimeError) as e:
        reason = database_error(e, url)
        if unreachable(e):
            raise StorageUnavailable(f"cannot open storage {redact(url)}: {reason}") from None
        if _no_tables(reason):
            raise NoSchema(
                f"no study exists in {redact(url)} yet (the database has no Optuna tables): "
                "create one with `biotune-optuna create` (or `biotune-optuna run`)"
            ) from None
        raise ConfigError(f"cannot open storage {redact(url)}: {reason}") from None


def _no_tables(reason: str) -> bool:
    """The driver's message for a database without Optuna's tables (PostgreSQL, SQLite)."""
    return "version_info" in reason and ("does not exist" in reason or "no such table" in reason)


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
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10})
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
