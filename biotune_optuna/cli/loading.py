"""Turning options into a study config: the dataset and the model are loaded here (torch).

Cheap checks (sizes, names, seeds, the device, paths, the model name and its weights file) come
before the dataset and model load. Sizes a preset sets are capped to what the dataset has (with a
one-line note); sizes given on the command line are kept, and an error names the option to lower.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from biotune_optuna.cli.common import console, parse_list, positive
from biotune_optuna.config import BASELINE_LABELS, ConfigError, DataError, DatasetSpec, Recipe, StudyConfig
from biotune_optuna.finetune.backbones import check_model, load_backbone, weights_fingerprint
from biotune_optuna.finetune.data import SizeError, Splits, dataset_cache_dir, load_dataset, stratified_folds, study_record
from biotune_optuna.finetune.training import pick_device
from biotune_optuna.worker import check_fingerprints


_SIZES = ("train_size", "val_size", "test_size")


def dataset_cache(s: dict):  # noqa: ANN201 - a Path or None
    """The folder given to load_dataset(cache_dir=) for settings/args ``s``; None with --no-cache."""
    return None if s.get("no_cache") else dataset_cache_dir(s.get("cache_dir"))


def check_device(device: str) -> None:
    """Refuse a device that cannot work before any trial is made (a bad device is not the genome's fault)."""
    try:
        pick_device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {device!r}: {str(e).splitlines()[0]}") from None


def check_paths_and_model(s: dict) -> None:
    """The checks that need neither the dataset nor the model, run before either loads: the
    data folder exists, ``--out`` can be written, the model name is known and its weights file
    is there.

    Raises:
        ConfigError: one line naming the option and the path or name.
    """
    if s.get("data_path") and not Path(s["data_path"]).is_dir():
        raise ConfigError(f"--data-path {s['data_path']}: no such directory")
    if s.get("out"):
        check_writable_dir("--out", Path(s["out"]))
    check_model(s["model"], s.get("weights_file"))


def check_writable_dir(option: str, path: Path) -> None:
    """Refuse a directory that cannot be created or written (nothing is created here).

    Raises:
        ConfigError: "OPTION PATH: is a file / is not writable (PARENT)".
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {existing}")


def recipe(s: dict) -> Recipe:
    """The training recipe of the merged settings ``s`` (see :func:`~biotune_optuna.cli.common.settings`)."""
    return Recipe(
        max_epochs=s["max_epochs"], patience=s["patience"], batch_size=s["batch_size"], base_lr=s["lr"],
        frozen_bn=s["frozen_bn"], amp=not s.get("no_amp"), channels_last=not s.get("no_channels_last"),
    )


def config_from_args(s: dict) -> tuple[StudyConfig, Splits]:
    """The study config (and the loaded splits) of merged settings ``s``.

    Raises:
        ConfigError: on any bad option, before the dataset loads where it can be told without it.
    """
    for name in ("image_size", "train_size", "val_size", "test_size", "population", "generations", "folds", "max_epochs", "patience", "batch_size", "workers"):
        positive(name.replace("_", "-"), s.get(name), 0 if name == "generations" else 1)
    positive("elites", s.get("elites"), 0)
    try:
        seeds = tuple(int(x) for x in str(s["seeds"]).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {s['seeds']!r}") from None
    baselines = parse_list(s["baselines"], list(BASELINE_LABELS), "baseline")
    if s["elites"] >= s["population"]:
        raise ConfigError(f"--elites must be smaller than --population, got elites={s['elites']}, population={s['population']}")
    training = recipe(s)
    if s["dataset"] == "folder" and not s.get("data_path"):
        raise ConfigError("--dataset folder needs --data-path DIR")
    spec = DatasetSpec(s["dataset"], s.get("data_path"), s["image_size"], s.get("train_size"), s.get("val_size"), s.get("test_size"))
    check_device(s.get("device", "auto"))
    check_paths_and_model(s)
    splits = _load_new(spec, s)
    for part, images in (("training", splits.train), ("validation", splits.val)):
        try:
            stratified_folds(images.labels.tolist(), s["folds"])
        except ValueError as e:
            raise ConfigError(f"--folds {s['folds']} does not fit the {part} split: {e}") from None
    with console.status(f"loading {s['model']}…"):
        backbone = load_backbone(s["model"], len(splits.classes), weights_file=s.get("weights_file"))
        sha = weights_fingerprint(s["model"], s.get("weights_file"))
    listing, sketch = study_record(splits.files)
    config = StudyConfig(
        model=s["model"], dataset=splits.spec, blocks=tuple(backbone.blocks), classes=tuple(splits.classes),
        dataset_fingerprint=splits.fingerprint, dataset_files=listing, dataset_sketch=sketch,
        weights_file=s.get("weights_file"), weights_sha256=sha,
        recipe=training, seeds=seeds, n_folds=s["folds"], population_size=s["population"], n_elites=s["elites"],
        n_generations=s["generations"], sampler_seed=s["sampler_seed"], mode=s["mode"], baselines=baselines,
        pruner=s["pruner"], work_unit=s.get("work_unit", "seed"),
    )
    console.print(
        f"[bold]{config.model}[/] ({len(config.blocks)} blocks, weights {backbone.weights}) on [bold]{spec.name}[/]: "
        f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images at {spec.image_size} px, "
        f"{len(splits.classes)} classes"
    )
    return config, splits


def _load_new(spec: DatasetSpec, s: dict) -> Splits:
    """Load the dataset of a new study: preset sizes capped (one-line note), a size given too
    large refused naming its option (``--train-size``…), ``--strict`` honoured."""
    fit = [n for n in _SIZES if n in s.get("from_preset", ())]
    with console.status(f"loading dataset {spec.name}…"):
        try:
            splits = load_dataset(spec, dataset_cache(s), strict=bool(s.get("strict")), fit=fit)
        except SizeError as e:
            raise DataError(e.worded(f"--{e.name.replace('_', '-')}")) from None
    capped = [n for n in fit if getattr(spec, n) is not None and getattr(splits.spec, n) is None]
    if capped:
        got = {"train_size": len(splits.train), "val_size": len(splits.val), "test_size": len(splits.test)}
        using = ", ".join(f"{got[n]} {n[:-5]} (not {getattr(spec, n)})" for n in capped)
        console.print(f"note: preset {s['preset']} asks for more images than {spec.path or spec.name} has; using {using}", highlight=False)
    return splits


def load_checked(config: StudyConfig, args: argparse.Namespace) -> Splits:
    """The study's dataset, refused (naming the files that differ) if it is not the study's."""
    with console.status(f"loading dataset {config.dataset.name}…"):
        splits = load_dataset(config.dataset, dataset_cache(vars(args)), strict=bool(getattr(args, "strict", False)))
    if splits.fingerprint != config.dataset_fingerprint:
        check_fingerprints(config, splits)  # raises, naming the files that differ
    return splits
