"""Datasets through the real command line (issue 11, items 8 and 10): presets on small datasets,
sizes given too large, dirty image folders and ``--strict``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from biotune_optuna.cli.parser import build_parser
from biotune_optuna.study.attrs import CONFIG as CONFIG_ATTR

SMALL_SEARCH = ["--population", "3", "--elites", "1", "--generations", "1", "--folds", "1"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "BIOTUNE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "biotune_optuna", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def stored_config(storage: str, name: str) -> dict:
    return optuna.load_study(study_name=name, storage=storage).user_attrs[CONFIG_ATTR]


def test_quick_preset_on_digits_caps_its_sizes_with_a_note_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = ["create", "--storage", storage, "--study-name", "quick", "--dataset", "digits", "--preset", "quick"]
    proc = cli(*command, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: preset quick")]
    assert notes == ["note: preset quick asks for more images than digits has; using 1079 train (not 2400), 359 val (not 600), 359 test (not 2000)"]
    assert "1079 train / 359 val / 359 test images" in proc.stderr
    spec = stored_config(storage, "quick")["dataset"]
    assert (spec["train_size"], spec["val_size"], spec["test_size"]) == (None, None, None)
    again = cli(*command, cwd=tmp_path)  # the same command resolves the same sizes: the same study
    assert again.returncode == 0 and "exists already with this config" in again.stderr, again.stderr


@pytest.mark.parametrize("option, value, available", [("--train-size", "5000", 1079), ("--test-size", "2000", 359)])
def test_a_size_given_too_large_names_the_option_to_lower(tmp_path, option, value, available):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = cli("create", "--storage", storage, "--study-name", "big", "--dataset", "digits", "--preset", "quick",
               option, value, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{option} {value} is larger than" in proc.stderr and f"lower {option} to at most {available}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "study.db").exists()


def dirty_folder(root: Path) -> list[str]:
    """Two classes of real digits with three broken files; returns their names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)
    for c in (0, 1):
        (root / str(c)).mkdir(parents=True)
        for i, k in enumerate(np.flatnonzero(digits.target == c)[:12]):
            Image.fromarray(images[k], "L").save(root / str(c) / f"{i:02d}.png")
    (root / "0" / "empty.jpg").write_bytes(b"")
    (root / "1" / "readme.jpg").write_text("these are digits\n")
    good = (root / "1" / "00.png").read_bytes()
    (root / "1" / "cut.png").write_bytes(good[: len(good) // 2])
    return ["0/empty.jpg", "1/cut.png", "1/readme.jpg"]


def test_dirty_folder_is_used_with_one_warning_and_refused_with_strict(tmp_path):
    root = tmp_path / "dirty"
    broken = dirty_folder(root)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    base = ["create", "--storage", storage, "--dataset", "folder", "--data-path", str(root), "--image-size", "8", *SMALL_SEARCH]
    refused = cli(*base, "--study-name", "strict", "--strict", cwd=tmp_path)
    assert refused.returncode == 2
    error = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "3 unreadable image file(s)" in error[0] and all(name in error[0] for name in broken)
    assert " at 0x" not in refused.stderr and "Traceback" not in refused.stderr
    made = cli(*base, "--study-name", "lenient", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    text = " ".join(made.stderr.split())  # the log handler may wrap a long line: read it as one
    assert text.count("unreadable") == 1 and "left out 3 unreadable image file(s)" in text
    assert all(name in text for name in broken) and " at 0x" not in text
    worker = cli("worker", "--storage", storage, "--study-name", "lenient", "--strict", "--wait", "5", cwd=tmp_path)
    assert worker.returncode == 2 and all(name in worker.stderr for name in broken), worker.stderr


def test_every_command_that_loads_data_takes_strict():
    for command in (["run"], ["create", "--study-name", "x"], ["worker", "--study-name", "x"],
                    ["report", "--study-name", "x"], ["compare", "--study-name", "x"]):
        assert build_parser().parse_args([*command, "--strict"]).strict is True
        assert build_parser().parse_args(command).strict is False
