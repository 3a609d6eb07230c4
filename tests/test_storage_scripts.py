"""storage/backup.sh and storage/restore.sh against the real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest

from conftest import _admin

pytestmark = pytest.mark.postgres
STORAGE = Path(__file__).resolve().parents[1] / "storage"


@pytest.fixture
def second_db():
    name = f"biotune_restore_{uuid.uuid4().hex[:10]}"
    conn = _admin()
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        conn.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}"')


def run(script: str, *args: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    url_file = tmp_path / f"url-{uuid.uuid4().hex[:6]}"
    url_file.write_text(url + "\n")
    env = {**os.environ, "BIOTUNE_STORAGE_FILE": str(url_file)}
    return subprocess.run(["bash", str(STORAGE / script), *args], env=env, capture_output=True, text=True, timeout=120)


def test_backup_then_restore_gives_the_same_study_and_refuses_to_overwrite(pg_url, second_db, tmp_path):
    with_password = pg_url.replace("postgres@", "postgres:not-shown-pw@")
    study = optuna.create_study(study_name="kept", storage=pg_url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
    dump = tmp_path / "study.dump"
    made = run("backup.sh", "-o", str(dump), url=with_password, tmp_path=tmp_path)
    assert made.returncode == 0, made.stderr
    assert dump.stat().st_size > 0 and "not-shown-pw" not in made.stdout + made.stderr

    target = pg_url.rsplit("/", 1)[0] + f"/{second_db}"
    restored = run("restore.sh", str(dump), url=target, tmp_path=tmp_path)
    assert restored.returncode == 0, restored.stderr
    copy = optuna.load_study(study_name="kept", storage=target)
    assert [t.params for t in copy.trials] == [t.params for t in study.trials]
    assert [t.value for t in copy.trials] == [t.value for t in study.trials]

    again = run("restore.sh", str(dump), url=target, tmp_path=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    forced = run("restore.sh", "--force", str(dump), url=target, tmp_path=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert len(optuna.load_study(study_name="kept", storage=target).trials) == 5
