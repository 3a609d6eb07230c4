"""Start-up and small things a new user meets first (issue 11, items 9 and 12): `--help` without
torch, cheap checks before the dataset loads, the default study name of a folder, the dashboard's
--port help, one title in report.html, and `create`'s hint for starting workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from biotune_optuna.cli.common import default_study_name, settings
from biotune_optuna.cli.create import worker_hint
from biotune_optuna.cli.parser import build_parser
from test_cli import TINY, cli, no_traceback, write_images

# ------------------------------------------------------------------ no torch on the light paths

_NO_TORCH = """
import sys
import biotune_optuna.cli.parser, biotune_optuna.cli.common, biotune_optuna.cli.status, biotune_optuna.cli.dashboard
assert "torch" not in sys.modules, "importing the light CLI modules imported torch"
from biotune_optuna.cli.main import main
try:
    main(["status", "--help"])
except SystemExit as e:
    assert e.code == 0, e.code
assert "torch" not in sys.modules, "status --help imported torch"
print("torch-free")
"""


def test_cli_modules_and_status_help_never_import_torch():
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("torch-free"), proc.stderr


@pytest.mark.parametrize("argv", [["run", "--help"], ["--help"], ["run", "--population", "x"]])
def test_help_and_argument_errors_import_no_torch(argv):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "biotune_optuna", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == (0 if "--help" in argv else 2), proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "biotune_optuna.cli.parser" in imported  # -X importtime did report
    assert not {m for m in imported if m.split(".")[0] in ("torch", "torchvision", "timm")}


# ------------------------------------------------------------------ cheap checks first

def cached_datasets(cwd: Path) -> list[Path]:
    """Entries the dataset cache of `cli()` holds: one appears as soon as a dataset has loaded."""
    return sorted((cwd / "cache").rglob("*.pt"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--model", "resnet18", "--weights-file", "{tmp}/missing.pth"], "missing.pth"),
        (["--out", "{tmp}/a-file/run"], "a-file is a file"),
        (["--dataset", "folder", "--data-path", "{tmp}/nowhere"], "nowhere"),
    ],
)
def test_names_and_paths_are_refused_before_the_dataset_loads(tmp_path, args, message):
    (tmp_path / "a-file").write_text("not a directory")
    proc = cli("run", *TINY, *[a.format(tmp=tmp_path) for a in args], "--study-name", "early", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    no_traceback(proc)
    assert "loading dataset" not in proc.stderr and cached_datasets(tmp_path) == []


def test_an_unknown_model_is_named_before_a_folder_is_even_read(tmp_path):
    # Reading the folder would stop at its unreadable image; the model name is checked first.
    write_images(tmp_path / "imgs" / "cat", 4)
    write_images(tmp_path / "imgs" / "dog", 4, seed=1)
    (tmp_path / "imgs" / "dog" / "bad.png").write_bytes(b"not a png")
    proc = cli("run", *TINY, "--dataset", "folder", "--data-path", str(tmp_path / "imgs"), "--model", "resnet9000", cwd=tmp_path)
    assert proc.returncode == 2 and "resnet9000" in proc.stderr and "bad.png" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", [["create", "--study-name", "x"], ["run", "--study-name", "x"]])
def test_an_unreachable_storage_is_refused_before_the_dataset_loads(tmp_path, command):
    url = "postgresql://alice:s3cret-pw@127.0.0.1:1/nope"
    proc = cli(*command, *TINY, "--storage", url, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "cannot open storage" in proc.stderr, proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert "loading dataset" not in proc.stderr and cached_datasets(tmp_path) == []


# ------------------------------------------------------------------ small things

def test_the_default_study_name_of_a_folder_includes_the_folder(tmp_path):
    def name(*argv: str) -> str:
        return default_study_name(settings(build_parser().parse_args(["run", *argv])))

    assert name() == "biotune-mnist-tf_efficientnet_lite0"
    assert name("--dataset", "digits", "--model", "resnet18") == "biotune-digits-resnet18"
    flowers = name("--dataset", "folder", "--data-path", str(tmp_path / "flowers"), "--model", "resnet50")
    birds = name("--dataset", "folder", "--data-path", str(tmp_path / "birds") + "/", "--model", "resnet50")
    assert (flowers, birds) == ("biotune-folder-flowers-resnet50", "biotune-folder-birds-resnet50")


def test_dashboard_port_has_help_and_its_default(tmp_path):
    proc = cli("dashboard", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--port PORT TCP port to listen on" in text and "(default: 8080)" in text


def test_report_html_shows_its_title_once(tmp_path):
    from biotune_optuna.report.final import MethodResult, to_markdown
    from biotune_optuna.report.plots import comparison_figure, write_figures

    rows = [MethodResult("BioTune", [0.95, 0.97], 12.5, 30.0), MethodResult("Full fine-tuning", [0.93, 0.94], 100.0, 20.0)]
    title = "tiny: resnet18 on digits"
    paths = write_figures({"comparison": comparison_figure(rows)}, tmp_path, table_html=to_markdown(rows, title), title=title, png=False)
    page = paths["html"].read_text()
    assert page.count("<h1>") == 1 and page.count(title) == 2  # <title> and <h1>
    assert "<table>" in page and "Full fine-tuning" in page


def test_create_hint_shows_the_url_or_where_to_put_one_with_a_password():
    plain = worker_hint("postgresql+psycopg2://bio@db-host:5432/biotune", "flowers")
    assert "biotune-optuna worker --study-name flowers --storage postgresql+psycopg2://bio@db-host:5432/biotune" in plain
    secret = worker_hint("postgresql+psycopg2://bio:s3cr3t@db-host/biotune", "my study")
    assert "s3cr3t" not in secret and "bio:***@db-host" in secret
    assert "--study-name 'my study'\n" in secret and "--storage" not in secret
    assert "$BIOTUNE_STORAGE" in secret and "$BIOTUNE_STORAGE_FILE" in secret


def test_create_prints_the_worker_command_with_the_real_storage_url(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = cli("create", *TINY, "--storage", storage, "--study-name", "hint", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"biotune-optuna worker --study-name hint --storage {storage}" in " ".join(proc.stderr.split())
    assert "--storage URL" not in proc.stderr


def test_create_with_a_password_never_prints_it(pg_url, tmp_path):
    url = pg_url.replace("postgres@", "postgres:not-shown-pw@")  # the test server trusts any password
    env_file = tmp_path / "url"
    env_file.write_text(url + "\n")
    env = {**os.environ, "BIOTUNE_STORAGE_FILE": str(env_file)}
    proc = subprocess.run([sys.executable, "-m", "biotune_optuna", "create", *TINY, "--study-name", "pw"], cwd=tmp_path,
                          env={**env, "COLUMNS": "200", "BIOTUNE_CACHE_DIR": str(tmp_path / "cache")}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "not-shown-pw" not in proc.stderr + proc.stdout
    assert "postgres:***@" in proc.stderr and "$BIOTUNE_STORAGE_FILE" in proc.stderr
