"""The final protocol (issue 12 items 1 and 3, issue 11 item 11): baselines tuned on the
validation split, every search measured and read the same way, results kept in the study.

Real fine-tunes of EfficientNet-Lite0 on digits at 16 px, one seed, one epoch; the BioTune
search itself runs a cheap objective (the search's outcome is not what these tests measure).
"""

from __future__ import annotations

import json
import re
import threading

import optuna
import pytest
import torch

from biotune_optuna.config import ConfigError, DatasetSpec, Recipe, StudyConfig
from biotune_optuna.finetune.backbones import load_backbone
from biotune_optuna.finetune.data import load_dataset
from biotune_optuna.report import final as final_module
from biotune_optuna.report import protocol
from biotune_optuna.report.comparison import best_genome, search_cost
from biotune_optuna.report.final import final_report
from biotune_optuna.report.tuning import NO_TUNING, TuneSpec, parse_lr_grid, parse_tune_grid
from biotune_optuna.search.genome import param_names
from biotune_optuna.study import attrs
from biotune_optuna.study.storage import open_storage
from biotune_optuna.study.studies import create_or_resume, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """(config, splits): digits at 16 px, 120 / 60 / 100 images, one seed, one epoch."""
    spec = DatasetSpec("digits", image_size=16, train_size=120, val_size=60, test_size=100)
    splits = load_dataset(spec)
    blocks = load_backbone("tf_efficientnet_lite0", len(splits.classes)).blocks
    config = StudyConfig(
        model="tf_efficientnet_lite0", dataset=spec, blocks=tuple(blocks), classes=tuple(splits.classes),
        dataset_fingerprint=splits.fingerprint, recipe=Recipe(max_epochs=1, patience=1, batch_size=64),
        seeds=(684,), n_folds=1, population_size=3, n_elites=1, n_generations=1, baselines=("linear",),
    )
    return config, splits


def cheap_objective(config):
    """Reports one 'epoch' per seed and returns a made-up accuracy; a genome training nothing
    is marked as the real objective marks it."""

    def objective(trial):
        genome = [trial.suggest_float(n, 0, 1) for n in param_names(config.blocks)]
        if not any(g > genome[-1] for g in genome[:-1]):
            trial.set_user_attr(attrs.SKIPPED, "no block")
            return 0.0
        trial.report(genome[0], 0)
        return genome[0]

    return objective


def searched_study(url, config, name="tiny"):
    study, _ = create_or_resume(open_storage(url, create_tables=True), name, config)
    study.sampler = make_sampler(config)
    study.optimize(cheap_objective(config))
    return study


class CountTestCalls:
    """Counts the test-split evaluations of the real :func:`protocol.evaluate`."""

    def __init__(self, monkeypatch, splits):
        self.n = 0
        real = protocol.evaluate

        def spy(model, data, *args, **kwargs):
            self.n += data is splits.test
            return real(model, data, *args, **kwargs)

        monkeypatch.setattr(protocol, "evaluate", spy)


def test_a_baseline_is_tuned_on_validation_and_no_test_score_is_read_or_shown(tiny, tmp_path, monkeypatch):
    config, splits = tiny
    study = searched_study(f"sqlite:///{tmp_path / 's.db'}", config)
    tested = CountTestCalls(monkeypatch, splits)
    lines = []
    spec = TuneSpec(lrs=(1e-4, 1e-2), grids=parse_tune_grid(["llrd.decay=0.5,1.0"]))
    rows = final_report(study, config, splits, "cpu", baselines=["llrd"], tuning=spec, on_event=lines.append)
    biotune, llrd = rows
    # Coordinate sweep: both rates at the knob's anchor (0.75 is not in the grid: its middle, 1.0),
    # then the other decay at the chosen rate; the candidate already tried is not trained twice.
    params = [c["params"] for c in llrd.tuning]
    assert params[:2] == [{"lr": 1e-4, "decay": 1.0}, {"lr": 1e-2, "decay": 1.0}]
    assert len(params) == 3 and params[2]["decay"] == 0.5 and params[2]["lr"] == llrd.chosen["lr"]
    vals = [c["val_accuracy"] for c in llrd.tuning]
    assert llrd.chosen == llrd.tuning[vals.index(max(vals))]["params"]  # best validation, earliest on ties
    assert llrd.val_accuracies[0] == pytest.approx(max(vals), abs=1e-6)
    # Every unit is tested when it finishes (no process keeps models between units), but the
    # choice and everything shown read validation accuracy only: no test peeking.
    assert tested.n == 1 + 3
    assert all(set(c) == {"params", "val_accuracy"} for c in llrd.tuning)
    tune_lines = [line for line in lines if "tune · LLRD" in line]
    assert len(tune_lines) == 3 and all("test" not in line for line in tune_lines)
    final = optuna.load_study(study_name="tiny:final", storage=f"sqlite:///{tmp_path / 's.db'}")
    chosen = [t for t in final.trials if t.user_attrs[attrs.FINAL_UNIT]["params"] == llrd.chosen]
    assert [t.user_attrs[attrs.FINAL_UNIT_RESULT]["test_accuracy"] for t in chosen] == llrd.test_accuracies
    sel, fin = llrd.cost["selection"], llrd.cost["final"]
    assert sel["configs"] == 3 and sel["fine_tunes"] == 2 and fin["fine_tunes"] == 1 and fin["epochs"] == 1
    assert biotune.cost["selection"]["evaluations"] == biotune.evaluations == 7 == biotune.cost["selection"]["slots"]
    assert biotune.chosen["lr_by_block"] and len(biotune.chosen["genome"]) == len(config.blocks) + 1


def test_results_are_kept_in_the_study_reused_and_resumed_per_unit(tiny, tmp_path, monkeypatch):
    config, splits = tiny
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = searched_study(url, config)
    trained = []
    real_run_unit = final_module.run_unit

    def stopped_in_full(unit, *args, **kwargs):
        if unit.method == "baseline:full":
            raise KeyboardInterrupt  # the report is stopped half-way, inside a unit
        return real_run_unit(unit, *args, **kwargs)

    monkeypatch.setattr(final_module, "run_unit", stopped_in_full)
    with pytest.raises(KeyboardInterrupt):
        final_report(study, config, splits, "cpu", lambda *a: trained.append(a[0]), ["linear", "full"], tuning=NO_TUNING)
    assert trained == ["BioTune", "Linear probing"]
    units = optuna.load_study(study_name="tiny:final", storage=url).trials
    assert [t.state.name for t in units] == ["COMPLETE", "COMPLETE", "FAIL"] and units[2].user_attrs[attrs.INTERRUPTED]
    monkeypatch.setattr(final_module, "run_unit", real_run_unit)

    def no_data():
        raise AssertionError("a stored method was retrained")

    trained.clear()
    again = optuna.load_study(study_name="tiny", storage=url)  # a new process reading the storage
    rows = final_report(again, config, lambda: splits, "cpu", on_seed=lambda *a: trained.append(a[0]),
                        baselines=["linear", "full"], tuning=NO_TUNING)
    assert trained == ["Full fine-tuning"]  # resumed: only the unit that had not finished
    assert [r.stored for r in rows] == [False, False, False]
    assert rows[1].chosen == {"lr": config.recipe.base_lr} and rows[1].tuning == []

    rows2 = final_report(again, config, no_data, "cpu", baselines=["linear", "full"], tuning=NO_TUNING)
    assert all(r.stored for r in rows2)
    assert [r.to_dict()["test_accuracies"] for r in rows2] == [r.test_accuracies for r in rows]
    trained.clear()
    tuned = TuneSpec(lrs=(1e-3, 1e-2))  # another sweep: its new candidate is trained, the others not
    lines = []
    final_report(again, config, splits, "cpu", lambda *a: trained.append(a[0]), ["linear"], tuning=tuned, on_event=lines.append)
    swept = [line for line in lines if line.startswith("tune ·")]
    assert trained == [] and len(swept) == 1 and "lr 0.01" in swept[0]  # lr 1e-3 with this seed: the unit NO_TUNING trained
    lines.clear()
    final_report(again, config, splits, "cpu", lambda *a: trained.append(a[0]), ["linear"], tuning=tuned, recompute=True,
                 on_event=lines.append)
    assert trained == ["BioTune"] and len([line for line in lines if line.startswith("tune ·")]) == 2
    assert again.user_attrs[attrs.FINAL_ROUND] == 1


def test_threads_of_one_report_share_its_units_exactly_once(tiny, tmp_path):
    config, splits = tiny
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = searched_study(url, config)
    events = []
    rows = final_report(study, config, splits, "cpu", baselines=["linear"], tuning=TuneSpec(lrs=(1e-3, 1e-2)), workers=2,
                        on_seed=lambda *a: events.append(threading.current_thread().name),
                        on_event=lambda line: events.append(threading.current_thread().name) if line.startswith("tune ·") else None)
    assert [r.method for r in rows] == ["BioTune", "Linear probing"] and len(events) == 3
    assert len(set(events)) == 2 and all(name.startswith("final") for name in events)  # both threads trained
    done = [t for t in optuna.load_study(study_name="tiny:final", storage=url).trials if t.state == optuna.trial.TrialState.COMPLETE]
    idents = [json.dumps(t.user_attrs[attrs.FINAL_UNIT], sort_keys=True) for t in done]
    assert len(idents) == len(set(idents)) == 3


def test_every_sampler_best_counts_pruned_evaluations_and_costs_are_counted_alike(tiny):
    config, _ = tiny
    names = param_names(config.blocks)

    def objective(trial):
        for n in names:
            trial.suggest_float(n, 0, 1)
        if trial.number == 3:  # the best genome, stopped early: it stands for 0.99
            trial.report(0.5, 0)
            trial.set_user_attr(attrs.PRUNED_VALUE, 0.99)
            raise optuna.TrialPruned()
        if trial.number == 5:  # trains nothing
            trial.set_user_attr(attrs.SKIPPED, "no block")
            return 0.0
        trial.report(0.3, 0)
        trial.report(0.4, config.recipe.max_epochs)  # a second seed
        return 0.4 + trial.number / 100

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=7)
    pruned = study.trials[3]
    assert best_genome(study, config) == tuple(pruned.params[n] for n in names)
    cost = search_cost(study, config)
    assert cost["evaluations"] == 7 and cost["pruned"] == 1 and cost["trained_nothing"] == 1
    assert cost["epochs"] == 5 * 2 + 1 and cost["fine_tunes"] == 5 * 2 + 1


def test_sweep_grids_defaults_and_errors():
    spec = TuneSpec()
    assert spec.grid("full", 1e-3) == {"lr": (1e-4, 1e-3, 1e-2)}
    assert spec.grid("autorgn", 1e-3)["lr"] == (1e-4, 1e-3, 1e-2, 0.1)
    assert spec.grid("l2sp", 1e-3)["alpha"] == (1e-3, 1e-2, 1e-1, 1.0)
    assert NO_TUNING.grid("lora", 1e-3) == {"lr": (1e-3,)}
    custom = TuneSpec(lrs=(0.01,), grids=parse_tune_grid(["lora.r=4,16", "lora.lr=0.5", "bitfit.train_gamma=true,false"]))
    assert custom.grid("lora", 1e-3) == {"lr": (0.5,), "r": (4, 16)} and custom.grid("full", 1e-3) == {"lr": (0.01,)}
    assert custom.grid("bitfit", 1e-3)["train_gamma"] == (True, False)
    for bad, message in [
        (["l2sp.rank=4"], "l2sp has no option 'rank'; valid: lr, alpha, beta"),
        (["spottune.lr=1"], "--tune-grid method must be one of"),
        (["l2sp=0.1"], "METHOD.OPTION=V1,V2"),
        (["lora.r=4.5"], "must be integers"),
        (["full.lr=-1"], "must be a finite number > 0"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_tune_grid(bad)
    with pytest.raises(ConfigError, match="--no-tune cannot be combined"):
        TuneSpec(enabled=False, lrs=(1e-3,))
    with pytest.raises(ConfigError, match="finite number > 0"):
        parse_lr_grid("1e-3,0")


@pytest.mark.slow
def test_report_shows_stored_results_and_compare_writes_its_own_files(tiny, tmp_path):
    from test_cli import cli, no_traceback

    config, splits = tiny
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = TuneSpec(lrs=(1e-3, 1e-2))
    computed = final_report(searched_study(url, config), config, splits, "cpu", tuning=spec)  # as `run` does
    where = ["--storage", url, "--study-name", "tiny", "--device", "cpu", "--lr-grid", "1e-3,1e-2"]
    shown = cli("report", *where, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    no_traceback(shown)
    assert "final ·" not in shown.stderr and "tune ·" not in shown.stderr  # nothing retrained
    assert shown.stderr.count("stored result") == 2
    report = json.loads((tmp_path / "report.json").read_text())
    linear = report["methods"][1]
    assert linear["test_accuracies"] == computed[1].test_accuracies
    assert linear["chosen"]["lr"] in (1e-3, 1e-2) and [c["params"]["lr"] for c in linear["tuning"]] == [1e-3, 1e-2]
    assert linear["cost"]["selection"]["configs"] == 2 and linear["cost"]["final"]["fine_tunes"] == 1
    assert report["methods"][0]["cost"]["selection"]["evaluations"] == 7
    before = (tmp_path / "report.json").read_bytes()

    compare = cli("compare", *where, "--baselines", "linear", "--samplers", "random", cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr
    no_traceback(compare)
    assert (tmp_path / "report.json").read_bytes() == before  # run's / report's files are left alone
    rows = json.loads((tmp_path / "compare" / "report.json").read_text())
    assert [m["method"] for m in rows["methods"]] == ["BioTune", "Random search (same budget)", "Linear probing"]
    assert [m["stored"] for m in rows["methods"]] == [True, False, True]
    budgets = {b["method"]: b for b in rows["search_budgets"]}
    assert budgets["BioTune"]["evaluations"] == budgets["Random search (same budget)"]["evaluations"] == 7
    assert budgets["Random search (same budget)"]["epochs"] > 0
    assert "Search budgets" in (tmp_path / "compare" / "report.md").read_text()
