"""Helpers every sub-command shares: the console, merged settings, the storage URL, opening a
study. Torch-free (``status`` and ``dashboard`` use only this)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import optuna
from rich.console import Console

from biotune_optuna.cli.parser import DEFAULTS, PRESETS
from biotune_optuna.config import ConfigError, StudyConfig
from biotune_optuna.study.storage import NoSchema, open_storage, redact
from biotune_optuna.study.studies import load_config, make_sampler

console = Console(stderr=True, soft_wrap=True)


def settings(args: argparse.Namespace) -> dict:
    """Defaults, then the preset, then every option given on the command line; ``from_preset``
    names the preset's options that no option given overrides."""
    merged = dict(DEFAULTS)
    preset = PRESETS.get(getattr(args, "preset", None) or "", {})
    merged.update(preset)
    for key, value in vars(args).items():
        if value is not None:
            merged[key] = value
    merged["from_preset"] = frozenset(k for k in preset if getattr(args, k, None) is None)
    return merged


def default_study_name(s: dict) -> str:
    """``biotune-DATASET-MODEL`` for merged settings ``s``; for ``--dataset folder`` the folder's
    own name comes in too (``biotune-folder-flowers-resnet50``), so two folders never share a study."""
    dataset = s["dataset"]
    if dataset == "folder" and s.get("data_path"):
        dataset = f"folder-{Path(s['data_path']).expanduser().resolve().name or 'root'}"
    return f"biotune-{dataset}-{s['model']}"


def positive(name: str, value: int | None, minimum: int = 1) -> None:
    """Refuse ``--NAME`` below ``minimum`` (None: not given).

    Raises:
        ConfigError: "--NAME must be ≥ MINIMUM, got V".
    """
    if value is not None and value < minimum:
        raise ConfigError(f"--{name} must be ≥ {minimum}, got {value}")


def parse_list(value: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
    """A comma-separated option: names from ``valid``, ``all`` for every one, empty for none.

    Raises:
        ConfigError: naming the first unknown item and the valid ones.
    """
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if items == ("all",):
        return tuple(valid)
    unknown = [v for v in items if v not in valid]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(valid)} (or all)")
    return items


def feature_cache_bytes(mb: int) -> int:
    """--feature-cache-mb in bytes. Raises ConfigError below 0."""
    if mb < 0:
        raise ConfigError(f"--feature-cache-mb must be ≥ 0 (0 turns the cache off), got {mb}")
    return mb * 2**20


def storage_url(args: argparse.Namespace) -> str:
    """--storage, else $BIOTUNE_STORAGE, else the first line of $BIOTUNE_STORAGE_FILE.

    Raises:
        ConfigError: when none is given, or the file cannot be read.
    """
    if getattr(args, "storage", None):
        return args.storage
    if os.environ.get("BIOTUNE_STORAGE"):
        return os.environ["BIOTUNE_STORAGE"]
    path = os.environ.get("BIOTUNE_STORAGE_FILE")
    if path:
        try:
            return Path(path).read_text().strip().splitlines()[0]
        except (OSError, IndexError):
            raise ConfigError(f"cannot read a storage URL from $BIOTUNE_STORAGE_FILE ({path})") from None
    raise ConfigError("no storage: give --storage URL, or set $BIOTUNE_STORAGE or $BIOTUNE_STORAGE_FILE")


def open_study(args: argparse.Namespace) -> tuple[optuna.Study, StudyConfig]:
    """The study named by ``--study-name`` in the storage of ``args``, with its BioTune sampler.

    Raises:
        ConfigError: unreachable storage, no such study, or not a BioTune study.
    """
    url = storage_url(args)
    try:
        storage = open_storage(url)
    except NoSchema:
        raise ConfigError(
            f"study {args.study_name!r} does not exist yet: {redact(url)} has no Optuna tables; create it with "
            f"`biotune-optuna create --study-name {args.study_name} [options]` on the same storage (or `biotune-optuna run`)"
        ) from None
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study named {args.study_name!r} in {redact(url)}") from None
    config = load_config(study)
    study.sampler = make_sampler(config)
    return study, config


def report_dir(args: argparse.Namespace, url: str, study_name: str) -> Path:
    """--out, else the folder of an SQLite study, else ./reports/STUDY."""
    if getattr(args, "out", None):
        return Path(args.out)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent
    return Path("reports") / study_name
