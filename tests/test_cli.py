"""The `biotune-optuna` command as a user runs it: real processes, real data, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from biotune_optuna.study.attrs import CONFIG as CONFIG_ATTR

TINY = [
    "--dataset", "digits", "--image-size", "32", "--population", "3", "--elites", "1", "--generations", "1",
    "--seeds", "684", "--max-epochs", "1", "--patience", "1", "--batch-size", "64", "--folds", "2",
]


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # The dataset cache goes next to the test's files, not into the user's ~/.cache.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "BIOTUNE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "biotune_optuna", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_help_teaches_every_run_option(tmp_path):
    proc = cli("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for option in ("--preset", "--model", "--weights-file", "--dataset", "--population", "--elites", "--generations", "--seeds", "--storage", "--workers", "--device",
                   "--no-amp", "--no-channels-last", "--cache-dir", "--no-cache", "--feature-cache-mb"):
        assert option in proc.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real `run` of a tiny search (digits, 32 px, P=3, E=1, G=1, one epoch), shared."""
    cwd = tmp_path_factory.mktemp("tiny")
    proc = cli("run", *TINY, "--study-name", "tiny", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd


@pytest.mark.slow
def test_run_searches_reports_and_resumes_without_redoing_work(tiny_run):
    tmp_path = tiny_run
    out = tmp_path / "biotune-runs" / "tiny"
    report = json.loads((out / "report.json").read_text())
    methods = [m["method"] for m in report["methods"]]
    assert methods == ["BioTune", "Full fine-tuning", "Linear probing"]
    for m in report["methods"]:
        assert len(m["test_accuracies"]) == 1 and 0.0 <= m["test_accuracy_mean"] <= 1.0
    assert report["methods"][0]["evaluations"] == 3 + 1 * (3 + 1)
    full, linear = report["methods"][1], report["methods"][2]
    assert full["trainable_percent"] == pytest.approx(100.0)
    assert 0 < linear["trainable_percent"] < 5
    assert linear["test_accuracy_mean"] > 0.5  # real transfer even in one epoch at 32 px
    md = (out / "report.md").read_text()
    assert "| BioTune |" in md and "Linear probing" in md

    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 7
    assert study.user_attrs[CONFIG_ATTR]["population_size"] == 3
    assert {"trainable_blocks", "lr_by_block", "fold", "slot"} <= set(complete[-1].user_attrs)
    assert complete[-1].user_attrs["slot"]["generation"] == 1
    blocks = study.user_attrs[CONFIG_ATTR]["blocks"]
    trained = [t for t in complete if t.user_attrs["trainable_blocks"]]
    # The frozen-prefix cache is on by default: used exactly when the first block is frozen.
    assert [t.user_attrs["cached_prefix"] for t in trained] == [t.user_attrs["trainable_blocks"][0] != blocks[0] for t in trained]
    assert any(t.user_attrs["cached_prefix"] for t in trained)

    again = cli("run", *TINY, "--study-name", "tiny", "--no-report", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 7

    status = cli("status", "--storage", storage, "--study-name", "tiny", cwd=tmp_path)
    assert status.returncode == 0 and "finished" in status.stdout
    # `run` stops before asking once the search is finished: no placeholder trial for the
    # dashboard to list (it showed "8 Trials" for these 7 evaluations).
    assert len(study.trials) == 7
    assert "7 complete" in status.stdout and "pruned" not in status.stdout


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture
def folders(tmp_path):
    one = tmp_path / "one_class"
    write_images(one / "cat", 6)
    empty = tmp_path / "empty_class"
    write_images(empty / "cat", 6)
    (empty / "dog").mkdir()
    broken = tmp_path / "broken"
    write_images(broken / "cat", 6)
    write_images(broken / "dog", 6, seed=1)
    (broken / "dog" / "bad.png").write_bytes(b"not a png at all")
    return {"one": one, "empty": empty, "broken": broken}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet9000"], "resnet9000"),
        (["--dataset", "folder"], "--data-path"),
        (["--dataset", "folder", "--data-path", "{tmp}/nowhere"], "nowhere"),
        (["--dataset", "folder", "--data-path", "{one}"], "class"),
        (["--dataset", "folder", "--data-path", "{empty}"], "dog"),
        (["--dataset", "folder", "--data-path", "{broken}", "--strict"], "bad.png"),
        (["--population", "-3"], "--population"),
        (["--elites", "4", "--population", "4"], "elites"),
        (["--train-size", "0"], "--train-size"),
        (["--seeds", "1,x"], "--seeds"),
        (["--device", "gpu"], "--device"),
        (["--folds", "400"], "--folds"),
        (["--lr", "inf"], "learning rate"),
        (["--out", "{one}/cat/0.png"], "0.png"),
        (["--feature-cache-mb", "-1"], "--feature-cache-mb"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_no_study(tmp_path, folders, args, message):
    args = [a.format(tmp=tmp_path, **folders) for a in args]
    proc = cli("run", *TINY, *args, "--study-name", "bad", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert message in proc.stderr
    assert "error" in proc.stderr.lower()
    assert not (tmp_path / "biotune-runs" / "bad" / "study.db").exists()


def test_unknown_dataset_name_is_refused_by_the_parser(tmp_path):
    proc = cli("run", "--dataset", "imagenet-22k", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    no_traceback(proc)


def test_a_study_made_with_another_config_is_left_untouched(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="taken", storage=storage)
    study.set_user_attr(CONFIG_ATTR, {"version": 1, "model": "something else"})
    proc = cli("run", *TINY, "--storage", storage, "--study-name", "taken", "--no-report", cwd=tmp_path)
    assert proc.returncode == 2 and "another config" in proc.stderr
    no_traceback(proc)
    study = optuna.load_study(study_name="taken", storage=storage)
    assert study.user_attrs[CONFIG_ATTR] == {"version": 1, "model": "something else"} and not study.trials


def test_unreachable_database_hides_the_password(tmp_path):
    url = "postgresql://alice:s3cret-pw@127.0.0.1:1/nope"
    proc = cli("run", *TINY, "--storage", url, "--study-name", "x", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    no_traceback(proc)
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert "cannot open storage" in proc.stderr and "***" in proc.stderr


@pytest.mark.slow
def test_compare_runs_every_baseline_and_another_sampler_and_writes_plots(tiny_run):
    from PIL import Image

    storage = f"sqlite:///{tiny_run / 'biotune-runs' / 'tiny' / 'study.db'}"
    out = tiny_run / "out" / "compare"  # --out names the folder above compare/ (README "Comparing")
    proc = cli("compare", "--storage", storage, "--study-name", "tiny", "--baselines", "all", "--samplers", "tpe", "--no-tune", "--out", str(out.parent), cwd=tiny_run)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    methods = [m["method"] for m in report["methods"]]
    assert methods == [
        "BioTune", "TPE (same budget)", "Full fine-tuning", "Linear probing", "AutoRGN", "L2-SP", "L1-SP", "LoRA", "BitFit", "LLRD",
    ]
    by_name = {m["method"]: m for m in report["methods"]}
    assert by_name["TPE (same budget)"]["evaluations"] == 7 == by_name["BioTune"]["evaluations"]
    assert by_name["LLRD"]["trainable_percent"] == pytest.approx(100.0)
    assert 0 < by_name["BitFit"]["trainable_percent"] < by_name["LoRA"]["trainable_percent"] < 100
    tpe = optuna.load_study(study_name="tiny.tpe", storage=storage)
    assert len(tpe.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 7
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    html = (out / "report.html").read_text()
    assert "BioTune" in html and "AutoRGN" in html


def test_no_amp_and_no_channels_last_reach_the_stored_recipe(tmp_path):
    from biotune_optuna.cli.common import settings
    from biotune_optuna.cli.loading import recipe as recipe_of
    from biotune_optuna.cli.parser import build_parser

    def recipe(*argv):
        return recipe_of(settings(build_parser().parse_args(argv)))

    for command in (["run"], ["create", "--study-name", "x"]):
        assert (recipe(*command, *TINY).amp, recipe(*command, *TINY).channels_last) == (True, True)
        assert (recipe(*command, *TINY, "--no-amp").amp, recipe(*command, *TINY, "--no-amp").channels_last) == (False, True)
        off = recipe(*command, *TINY, "--no-amp", "--no-channels-last")
        assert (off.amp, off.channels_last) == (False, False)
    # End to end without training: `create` stores the config (and caches the dataset where told).
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = cli("create", *TINY, "--storage", storage, "--study-name", "fp32", "--no-amp", "--no-channels-last",
               "--cache-dir", str(tmp_path / "mine"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stored = optuna.load_study(study_name="fp32", storage=storage).user_attrs[CONFIG_ATTR]["recipe"]
    assert stored["amp"] is False and stored["channels_last"] is False
    assert len(list((tmp_path / "mine" / "datasets").glob("*.pt"))) == 1 and not (tmp_path / "cache").exists()


def test_every_command_that_loads_data_takes_the_cache_options(tmp_path, monkeypatch):
    from biotune_optuna.cli.loading import dataset_cache as _dataset_cache
    from biotune_optuna.cli.parser import build_parser as _parser

    monkeypatch.setenv("BIOTUNE_CACHE_DIR", str(tmp_path / "env"))
    for command in (["run"], ["create", "--study-name", "x"], ["worker", "--study-name", "x"],
                    ["report", "--study-name", "x"], ["compare", "--study-name", "x"]):
        assert _dataset_cache(vars(_parser().parse_args(command))) == tmp_path / "env" / "datasets"
        assert _dataset_cache(vars(_parser().parse_args([*command, "--cache-dir", "/c"]))) == Path("/c/datasets")
        assert _dataset_cache(vars(_parser().parse_args([*command, "--no-cache"]))) is None
    proc = cli("run", "--no-cache", "--cache-dir", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_ctrl_c_stops_the_trial_in_one_line_without_traceback(tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "BIOTUNE_CACHE_DIR": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "biotune_optuna", "run", *TINY, "--max-epochs", "30", "--patience", "30", "--study-name", "c", "--no-report"]
    # As from a terminal: a shell without job control (CI, `cmd &`) starts children with SIGINT
    # ignored, and Python then never turns it into KeyboardInterrupt.
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = tmp_path / "biotune-runs" / "c" / "study.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until a trial is training (30 epochs: it will still be)
        time.sleep(1)
        try:
            study = optuna.load_study(study_name="c", storage=f"sqlite:///{db}")
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if any(t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values for t in study.trials):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and "failed with value None" not in err
    assert "stopped by the interrupt: its slot will be redone" in err
    assert "interrupted: run the same command again to resume the study" in err
    stopped = optuna.load_study(study_name="c", storage=f"sqlite:///{db}").trials[-1]
    assert stopped.state == optuna.trial.TrialState.FAIL and stopped.user_attrs["interrupted"] is True


def test_work_unit_is_one_seed_by_default_and_status_counts_units(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    two_seeds = [a if a != "684" else "684,559" for a in TINY]
    proc = cli("create", *two_seeds, "--storage", storage, "--study-name", "units", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert optuna.load_study(study_name="units", storage=storage).user_attrs[CONFIG_ATTR]["work_unit"] == "seed"
    status = cli("status", "--storage", storage, "--study-name", "units", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    out = " ".join(status.stdout.split())
    assert "0 done, 0 running, 6 free (of 3 open slots × 2 seeds)" in out  # the initial population: P = 3
    assert "8 at most (P + E = 3 + 1 slots per generation × 2 seeds, one trial each)" in out
    # The same study with whole-slot trials is another config: refused, naming the field.
    again = cli("create", *two_seeds, "--storage", storage, "--study-name", "units", "--work-unit", "trial", cwd=tmp_path)
    assert again.returncode != 0 and "work_unit: stored 'seed', given 'trial'" in again.stderr + again.stdout
    no_traceback(again)
