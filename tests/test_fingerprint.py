"""A worker whose dataset differs from its study's names the file that differs, for datasets of
any size (issue 11, item 4): the study keeps the list of up to MAX_LISTED_FILES files, a
fixed-size sketch above that; studies stored before the sketch still load and resume."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from biotune_optuna.config import MAX_LISTED_FILES, DatasetSpec, StudyConfig
from biotune_optuna.finetune.data import describe_difference, load_dataset, study_record
from biotune_optuna.finetune.fingerprint import FileSketch
from biotune_optuna.study.attrs import CONFIG as CONFIG_ATTR
from biotune_optuna.study.studies import create_or_resume


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def many_files(n: int) -> dict[str, str]:
    """``n`` files named as in a class folder tree (train/cK/NNNNN.png) with distinct contents."""
    return {f"train/c{i % 10}/{i:05d}.png": sha(str(i)) for i in range(n)}


def test_sketch_of_60k_files_names_changed_added_and_missing_files_exactly():
    study = many_files(60_000)
    listing, sketch = study_record(study)
    assert listing == {} and len(sketch) < 6000  # what the study stores, whatever the number of files
    here = dict(study)
    changed = ["train/c7/00027.png", "train/c0/59990.png", "train/c3/12343.png"]
    for name in changed:
        here[name] = sha(name + " with one pixel changed")
    del here["train/c1/00001.png"]
    here["train/c1/extra.png"] = sha("a new file")
    said = describe_difference({}, sketch, here, {})
    expected = [f"{n} (changed)" for n in changed] + ["train/c1/00001.png (missing here)", "train/c1/extra.png (not in the study's data)"]
    assert sorted(said.split(", ")) == sorted(expected)


def test_sketch_names_what_it_can_of_many_differences_and_says_there_are_more():
    study = many_files(5_000)
    here = {n: (sha(n + "!") if i % 50 == 0 else s) for i, (n, s) in enumerate(study.items())}  # 100 changed
    said = describe_difference({}, study_record(study)[1], here, {})
    assert "too many differences to name them all: 5000 files here, 5000 in the study" in said
    named = [part.split(" (")[0] for part in said.split(" and ")[0].split(", ") if " (changed)" in part]
    assert all(here[n] != study[n] for n in named)  # whatever it names is really changed


def test_a_damaged_or_foreign_sketch_is_said_plainly():
    assert "damaged" in describe_difference({}, "not a sketch!", many_files(3), {})
    with pytest.raises(ValueError, match="not a file sketch"):
        FileSketch.decode("aGVsbG8=")


def write_digit_tree(root: Path) -> None:
    """310 real 8x8 digits (scikit-learn) as PNGs: train/c0..c9 × 25 and test/c0..c9 × 6."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)
    for part, n in (("train", 25), ("test", 6)):
        for c in range(10):
            folder = root / part / f"c{c}"
            folder.mkdir(parents=True)
            picks = np.flatnonzero(digits.target == c)[(0 if part == "train" else 25):][:n]
            for i, k in enumerate(picks):
                Image.fromarray(images[k], "L").save(folder / f"{i}.png")


def change_one_pixel(path: Path) -> None:
    a = np.array(Image.open(path))
    a[0, 0] = 255 - a[0, 0]
    Image.fromarray(a, "L").save(path)


def test_310_image_folder_with_one_changed_pixel_names_that_file(tmp_path):
    root = tmp_path / "digits"
    write_digit_tree(root)
    spec = DatasetSpec("folder", path=str(root), image_size=8)
    study = load_dataset(spec)
    assert len(study.files) == 310 > MAX_LISTED_FILES
    listing, sketch = study_record(study.files)
    change_one_pixel(root / "train" / "c7" / "20.png")
    worker = load_dataset(spec)
    assert worker.fingerprint != study.fingerprint
    assert describe_difference(listing, sketch, worker.files, worker.skipped) == "train/c7/20.png (changed)"


def old_layout_config(config: StudyConfig) -> dict:
    """``config`` as a release before the sketch stored it: no dataset_sketch, files only up to 200."""
    d = json.loads(json.dumps(config.to_dict()))
    del d["dataset_sketch"]
    d["dataset_files"] = {}
    return d


def test_a_study_stored_by_the_old_layout_loads_resumes_and_says_why_it_cannot_name_files(tmp_path):
    files = many_files(300)
    listing, sketch = study_record(files)
    config = StudyConfig(model="resnet18", dataset=DatasetSpec("digits"), blocks=("a", "b"), classes=("0", "1"),
                         dataset_fingerprint="f" * 64, dataset_files=listing, dataset_sketch=sketch)
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    old.set_user_attr(CONFIG_ATTR, old_layout_config(config))
    loaded = StudyConfig.from_dict(old.user_attrs[CONFIG_ATTR])
    assert loaded.dataset_sketch == "" and loaded.dataset_files == {}
    _, resumed = create_or_resume(optuna.storages.RDBStorage(storage), "old", config)  # the same options, run again
    assert resumed
    said = describe_difference(loaded.dataset_files, loaded.dataset_sketch, files, {})
    assert "keeps no list of its files" in said and "300 files" in said


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "BIOTUNE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "biotune_optuna", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_worker_on_a_310_image_folder_with_one_changed_pixel_names_that_file(pg_url, tmp_path):
    root = tmp_path / "digits"
    write_digit_tree(root)
    made = cli("create", "--storage", pg_url, "--study-name", "pixel", "--dataset", "folder", "--data-path", str(root),
               "--image-size", "8", "--population", "3", "--elites", "1", "--generations", "1", "--folds", "1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    stored = optuna.load_study(study_name="pixel", storage=pg_url).user_attrs[CONFIG_ATTR]
    assert stored["dataset_files"] == {} and 0 < len(json.dumps(stored)) < 8000
    change_one_pixel(root / "train" / "c7" / "20.png")
    proc = cli("worker", "--storage", pg_url, "--study-name", "pixel", "--wait", "5", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "this worker's dataset differs from the study's: train/c7/20.png (changed)" in proc.stderr
    assert "test/c0" not in proc.stderr and "Traceback" not in proc.stderr
