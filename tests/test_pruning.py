"""Pruners: config, the fitness of a pruned genome, and a real worker that prunes real fine-tunes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import optuna
import pytest

from biotune_optuna.finetune.backbones import load_backbone
from biotune_optuna.config import DatasetSpec
from biotune_optuna.finetune.data import load_dataset
from biotune_optuna.objective import Objective
from biotune_optuna.study.attrs import PRUNED_VALUE as PRUNED_VALUE_ATTR, SLOT as SLOT_ATTR
from biotune_optuna.study.attrs import CONFIG as CONFIG_ATTR
from biotune_optuna.config import PRUNERS, ConfigError, StudyConfig
from biotune_optuna.study.studies import create_or_resume, make_pruner, make_sampler
from biotune_optuna.study.storage import open_storage
from biotune_optuna.config import Recipe
from biotune_optuna.worker import run_worker

PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE


def make_config(pruner: str, splits=None) -> StudyConfig:
    """P=2, E=1, G=1 (5 evaluations), two seeds, two epochs: EfficientNet-Lite0 on 32-px digits."""
    spec = DatasetSpec("digits", image_size=32, train_size=300, val_size=100)
    splits = splits or load_dataset(spec)
    return StudyConfig(
        model="tf_efficientnet_lite0", dataset=spec, blocks=tuple(load_backbone("tf_efficientnet_lite0", 10).blocks),
        classes=tuple(splits.classes), dataset_fingerprint=splits.fingerprint, dataset_files=splits.files,
        recipe=Recipe(max_epochs=2, patience=2, batch_size=64), seeds=(684, 559), n_folds=2,
        population_size=2, n_elites=1, n_generations=1, sampler_seed=3, pruner=pruner,
    )


def test_each_pruner_name_builds_its_optuna_pruner_and_others_are_refused():
    built = {name: type(make_pruner(make_config(name))) for name in PRUNERS}
    assert built == {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
    }
    median = make_pruner(make_config("median"))
    assert median._n_startup_trials == 2  # the initial population always runs in full
    with pytest.raises(ConfigError, match="pruner must be one of"):
        make_config("hyperband")


def test_a_study_stored_before_pruners_existed_resumes_as_unpruned(tmp_path):
    config = make_config("none")
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", create_tables=True)
    study, _ = create_or_resume(storage, "old", config)
    old = dict(study.user_attrs[CONFIG_ATTR])
    del old["pruner"]  # what an earlier version wrote
    study.set_user_attr(CONFIG_ATTR, old)
    _, resumed = create_or_resume(storage, "old", config)
    assert resumed
    with pytest.raises(ConfigError, match="differs in: pruner: stored 'none', given 'median'"):
        create_or_resume(storage, "old", make_config("median"))


def test_the_cli_stores_the_pruner_and_refuses_an_unknown_one(tmp_path):
    env = {**os.environ, "BIOTUNE_CACHE_DIR": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "biotune_optuna", "create", "--dataset", "digits", "--image-size", "8",
            "--population", "2", "--elites", "1", "--generations", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    ok = subprocess.run([*base, "--study-name", "sh", "--pruner", "successive-halving"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    stored = optuna.load_study(study_name="sh", storage=f"sqlite:///{tmp_path / 's.db'}").user_attrs[CONFIG_ATTR]
    assert stored["pruner"] == "successive-halving"
    bad = subprocess.run([*base, "--study-name", "x", "--pruner", "sometimes"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'sometimes'" in bad.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("pruner", ["median", "none"])
def test_a_worker_prunes_real_fine_tunes_only_when_the_study_asks(pg_url, monkeypatch, caplog, pruner):
    # The study's pruner is swapped for one that stops every fine-tune below 99.9 % after its
    # first epoch, so that what is tested (the worker, the objective, the sampler) does not hang
    # on where a median falls; with pruner "none" in the config the objective never asks it.
    monkeypatch.setattr("biotune_optuna.worker.make_pruner", lambda config: optuna.pruners.ThresholdPruner(lower=0.999))
    config = make_config(pruner)
    create_or_resume(open_storage(pg_url, create_tables=True), "p", config)
    with caplog.at_level(logging.INFO, logger="biotune_optuna.worker"):
        assert run_worker(pg_url, "p", device="cpu", heartbeat_interval=1, grace_period=60, wait_seconds=30, final_protocol=False).evaluated == 5
    logged = [r.getMessage() for r in caplog.records if r.name == "biotune_optuna.worker" and r.getMessage().startswith("trial ")]

    study = optuna.load_study(study_name="p", storage=pg_url)
    trials = [t for t in study.trials if (t.system_attrs.get(SLOT_ATTR) or {}).get("state") == "claimed"]
    trained = [t for t in trials if t.user_attrs["trainable_blocks"]]
    assert len(trials) == 5 and trained
    state = make_sampler(config).search_state(study)
    assert state.finished
    fitness = {m.origin: m.fitness for p in state.populations for m in p.members}
    for t in trained:
        rec = t.system_attrs[SLOT_ATTR]
        if pruner == "none":
            assert t.state == COMPLETE and len(t.intermediate_values) == 2 * 2  # both seeds, both epochs
            continue
        assert t.state == PRUNED
        assert t.intermediate_values.keys() == {0}  # stopped after seed 1, epoch 1
        assert t.user_attrs["pruned_at"] == {"seed": 0, "epoch": 1}
        assert t.user_attrs[PRUNED_VALUE_ATTR] == pytest.approx(t.intermediate_values[0], abs=1e-6)
        assert t.user_attrs["seed_accuracies"] == [t.user_attrs[PRUNED_VALUE_ATTR]]
        if (rec["generation"], rec["slot"]) in fitness:
            assert fitness[(rec["generation"], rec["slot"])] == pytest.approx(1 - t.user_attrs[PRUNED_VALUE_ATTR], abs=1e-6)
    assert json.loads(json.dumps(study.user_attrs[CONFIG_ATTR]))["pruner"] == pruner
    # One log line per trial, saying what became of it.
    assert len(logged) == 5
    for t in trials:
        line = next(m for m in logged if m.startswith(f"trial {t.number} · "))
        if t.state == PRUNED:
            assert line.endswith(f"pruned at seed 1 epoch 1 · val {t.user_attrs[PRUNED_VALUE_ATTR]:.4f}"), line
        else:
            assert line.endswith(f"val {t.value:.4f}") and "pruned" not in line, line


class _SecondSeedFirstEpoch(optuna.pruners.BasePruner):
    """Prunes every trial at step ``max_epochs`` (the first epoch of its second seed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study, trial) -> bool:  # noqa: ANN001
        return trial.last_step == self.step


def test_a_genome_pruned_in_its_second_seed_counts_with_the_seed_it_finished():
    # One fresh epoch of seed 2 says little; the finished seed 1 is what the genome showed.
    config = make_config("median")
    splits = load_dataset(config.dataset)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config), pruner=_SecondSeedFirstEpoch(2))
    study.optimize(Objective(config, splits, "cpu"), n_trials=2, catch=())
    trained = [t for t in study.trials if t.user_attrs["trainable_blocks"]]
    assert trained
    for t in trained:
        assert t.state == PRUNED and sorted(t.intermediate_values) == [0, 1, 2]
        assert t.user_attrs["pruned_at"] == {"seed": 1, "epoch": 1}
        seed1 = max(t.intermediate_values[0], t.intermediate_values[1])
        assert t.user_attrs[PRUNED_VALUE_ATTR] == pytest.approx(seed1, abs=1e-6)
        assert t.user_attrs["seed_accuracies"] == pytest.approx([seed1, t.intermediate_values[2]], abs=1e-6)


def test_a_plain_optuna_study_of_that_name_is_refused_and_left_as_it_is(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, create_tables=True)
    plain = optuna.create_study(study_name="mine", storage=storage)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with pytest.raises(ConfigError, match="'mine' already exists and was not made by biotune-optuna"):
        create_or_resume(storage, "mine", make_config("none"))
    again = optuna.load_study(study_name="mine", storage=url)
    assert len(again.trials) == 2 and CONFIG_ATTR not in again.user_attrs
