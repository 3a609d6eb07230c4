"""Replicated comparisons for real: bench/search_quality.py killed and resumed, and
`compare --replicates` (real training on digits, real SQLite studies, a real killed process)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from biotune_optuna.config import ConfigError, DatasetSpec, StudyConfig
from biotune_optuna.report.replicates import plan_replicates

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "search_quality.py"
# Tinier than the smoke profile: P=2, no generation, one sampler, one baseline, one seed.
TINY = [
    "replicates=2", "population=2", "elites=0", "generations=0", "samplers=random", "baselines=linear",
    "final_seeds=684", "train_size=40", "val_size=20", "test_size=50", "max_epochs=1",
]
METHODS = ["BioTune", "Random search (same budget)", "Linear probing"]


def _config(**kw) -> StudyConfig:
    return StudyConfig(model="m", dataset=DatasetSpec("digits", seed=kw.pop("data_seed", 0)), blocks=("a", "b"), classes=("0", "1"),
                       dataset_fingerprint="f", population_size=2, n_elites=0, n_generations=0, **kw)


def test_replicate_plans_name_their_studies_by_their_seeds():
    plans = plan_replicates("s", _config(sampler_seed=4, data_seed=7), 3)
    assert [(p.study_name, p.data_seed, p.sampler_seed) for p in plans] == [
        ("s", 7, 4), ("s.data8.sampler5", 8, 5), ("s.data9.sampler6", 9, 6),
    ]
    assert plan_replicates("s", _config(), 1, data_seed=3)[0].study_name == "s.data3.sampler0"
    with pytest.raises(ConfigError, match="replicates must be ≥ 1, got 0"):
        plan_replicates("s", _config(), 0)


def _bench(out: Path, *extra: str) -> list[str]:
    sets = [a for item in TINY for a in ("--set", item)]
    return [sys.executable, str(BENCH), "--profile", "smoke", "--out", str(out), *sets, *extra]


def _env() -> dict:
    # One torch thread: on shared cores two threads burn CPU waiting on each other (the tiny
    # pipeline, killed and resumed, then takes about 35 s of CPU instead of 130).
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _completed(storage: str) -> dict[str, int]:
    """Study name → COMPLETE trials."""
    return {
        s.study_name: len(optuna.load_study(study_name=s.study_name, storage=storage).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        for s in optuna.get_all_study_summaries(storage)
    }


@pytest.fixture(scope="module")
def resumed_bench(tmp_path_factory):
    """The tiny smoke pipeline, SIGKILLed once replicate 0's JSON appears, then run again to the end."""
    out = tmp_path_factory.mktemp("search-quality")
    proc = subprocess.Popen(_bench(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "replicate-0.json"
    deadline = time.monotonic() + 1800
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0]
    assert first.exists(), log
    storage = f"sqlite:///{out / 'studies.db'}"
    before = {"json": first.read_bytes(), "completed": _completed(storage)}
    rerun = subprocess.run(_bench(out), env=_env(), capture_output=True, text=True, timeout=1800, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return out, storage, before, rerun.stdout


@pytest.mark.slow
def test_smoke_pipeline_writes_raw_replicates_and_the_paired_section(resumed_bench):
    out, _, _, stdout = resumed_bench
    report = json.loads((out / "report.json").read_text())
    raw = [json.loads((out / f"replicate-{r}.json").read_text()) for r in (0, 1)]
    assert report["replicates"] == raw
    assert [(r["data_seed"], r["sampler_seed"]) for r in raw] == [(0, 0), (1, 1)]
    assert raw[0]["dataset_fingerprint"] != raw[1]["dataset_fingerprint"]  # a new data draw
    for r in raw:
        assert [m["method"] for m in r["methods"]] == METHODS
        for m in r["methods"]:
            assert len(m["test_accuracies"]) == 1 and 0.0 <= m["test_accuracies"][0] <= 1.0
        assert r["methods"][0]["evaluations"] == r["methods"][1]["evaluations"] == 2
    mean = {m: [statistics.fmean(next(x for x in r["methods"] if x["method"] == m)["test_accuracies"]) for r in raw] for m in METHODS}
    paired = report["paired"]
    assert paired["reference"] == "BioTune" and set(paired["methods"]) == set(METHODS[1:])
    for name, p in paired["methods"].items():
        diffs = [b - o for b, o in zip(mean["BioTune"], mean[name])]
        assert p["n"] == 2 and p["mean"] == pytest.approx(statistics.fmean(diffs))
        assert p["std"] == pytest.approx(statistics.stdev(diffs))
        assert p["ci95"][0] <= p["mean"] <= p["ci95"][1]
        assert p["wins"] == sum(d > 0 for d in diffs) and p["wins"] + p["ties"] + p["losses"] == 2
    assert report["summary"]["BioTune"]["mean"] == pytest.approx(statistics.fmean(mean["BioTune"]))
    assert "BioTune − …" in stdout and "Linear probing" in stdout  # the paired table is printed
    assert (out / "report.md").read_text().count("| BioTune |") == 3  # 2 replicate rows + 1 summary row


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_a_replicate(resumed_bench):
    out, storage, before, stdout = resumed_bench
    assert (out / "replicate-0.json").read_bytes() == before["json"]
    assert "replicate 0: done in an earlier run" in stdout
    assert "replicate 0 · final" not in stdout and "replicate 0 · BioTune · trial" not in stdout
    after = _completed(storage)
    for name in ("search-quality-smoke", "search-quality-smoke.random"):
        assert after[name] == before["completed"][name] == 2  # replicate 0's searches: not one trial more
    # replicate 1's searches: every trial finished before the kill kept, none done twice
    for name in ("search-quality-smoke.data1.sampler1", "search-quality-smoke.data1.sampler1.random"):
        assert after[name] == 2 and before["completed"].get(name, 0) <= 2
    assert json.loads((out / "profile.json").read_text())["settings"]["replicates"] == 2


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biotune_optuna", *args], cwd=cwd, env={**_env(), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=1800, check=False)


def test_compare_refuses_zero_replicates_in_one_line(tmp_path):
    proc = _cli("compare", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--study-name", "x", "--replicates", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--replicates must be ≥ 1, got 0" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_compare_replicates_with_a_data_seed(tmp_path):
    tiny = ["--dataset", "digits", "--image-size", "32", "--train-size", "40", "--val-size", "20", "--test-size", "50",
            "--population", "2", "--elites", "0", "--generations", "0", "--seeds", "684", "--max-epochs", "1", "--patience", "1"]
    proc = _cli("run", *tiny, "--study-name", "t", "--out", str(tmp_path / "t"), "--no-report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    storage = f"sqlite:///{tmp_path / 't' / 'study.db'}"
    out = tmp_path / "cmp"
    args = ["compare", "--storage", storage, "--study-name", "t", "--samplers", "random", "--baselines", "linear",
            "--replicates", "2", "--data-seed", "5", "--out", str(out)]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert [(r["study"], r["data_seed"], r["sampler_seed"]) for r in report["replicates"]] == [
        ("t.data5.sampler0", 5, 0), ("t.data6.sampler1", 6, 1),
    ]
    assert set(report["paired"]["methods"]) == {"Random search (same budget)", "Linear probing"}
    assert all(p["n"] == 2 and len(p["ci95"]) == 2 for p in report["paired"]["methods"].values())
    done = _completed(storage)
    assert done["t"] == 2  # the study itself: replicate 0 has another data seed, so it is not searched again
    assert all(done[f"t.data{d}.sampler{s}{k}"] == 2 for d, s in ((5, 0), (6, 1)) for k in ("", ".random"))
    again = _cli(*args, cwd=tmp_path)  # nothing left to do: both replicates are read back
    assert again.returncode == 0 and again.stderr.count("done in an earlier run") == 2, again.stderr
