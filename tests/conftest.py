"""Shared fixtures: a fresh PostgreSQL database per test (the real server, not SQLite)."""

from __future__ import annotations

import os
import uuid

import psycopg2
import pytest

#: Server the sharing tests use; CI starts it (scripts/setup.sh).
PG_HOST = os.environ.get("BIOTUNE_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BIOTUNE_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("BIOTUNE_TEST_PGUSER", "postgres")


def _admin():
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_url():
    """URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"biotune_test_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache_in_tmp(tmp_path_factory):
    """Commands and workers the tests start cache datasets in a temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIOTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("biotune-cache")))
        yield
