"""``biotune-optuna report``: the final evaluation of a finished search (spec §8), and the
report writing that ``run`` and ``compare`` share.

Results are kept in the study (``report.stored``): ``report`` on a study whose methods are all
stored prints them at once — no dataset load, no training; ``--recompute`` retrains.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from biotune_optuna.cli.common import console, open_study, report_dir, storage_url
from biotune_optuna.cli.loading import load_checked
from biotune_optuna.config import StudyConfig
from biotune_optuna.finetune.data import Splits
from biotune_optuna.report.final import MethodResult, final_report
from biotune_optuna.report.plots import comparison_figure, search_figures, write_figures
from biotune_optuna.report.tables import budget_rows, chosen_text, final_text, selection_text, to_markdown, write_report
from biotune_optuna.report.tuning import TuneSpec, parse_lr_grid, parse_tune_grid
from biotune_optuna.search import decode
from biotune_optuna.study.studies import search_state


def tune_spec(args: argparse.Namespace) -> TuneSpec:
    """The baselines' sweep from ``--no-tune``, ``--lr-grid``, ``--tune-grid``, ``--tune-strategy``.

    Raises:
        ConfigError: on a malformed grid, an unknown baseline or option, or --no-tune with a grid.
    """
    return TuneSpec(
        enabled=not getattr(args, "no_tune", False),
        lrs=parse_lr_grid(getattr(args, "lr_grid", None)),
        grids=parse_tune_grid(getattr(args, "tune_grid", None)),
        strategy=getattr(args, "tune_strategy", None) or "coordinate",
    )


def print_table(rows: Sequence[MethodResult], title: str) -> None:
    """The comparison table, and the search budgets, on stdout."""
    table = Table(title=title)
    for col in ("Method", "Test macro acc. (%)", "Trainable params (%)", "Chosen (on validation)", "Selection cost", "Final runs"):
        table.add_column(col, justify="left" if col in ("Method", "Chosen (on validation)") else "right")
    for r in rows:
        table.add_row(r.method, r.accuracy_text, f"{r.trainable_percent:.2f}", chosen_text(r), selection_text(r), final_text(r))
    out = Console()
    out.print(table)
    budgets = budget_rows(rows)
    if budgets:
        cols = ("slots", "evaluations", "trained_nothing", "pruned", "fine_tunes", "epochs", "seconds")
        table = Table(title="Search budgets (same slots for every sampler)")
        table.add_column("Search")
        for col in cols:
            table.add_column(col.replace("_", " ").replace("seconds", "wall time (s)"), justify="right")
        for b in budgets:
            table.add_row(b["method"], *(f"{b.get(c, 0):.0f}" for c in cols))
        out.print(table)


def write_full_report(
    study: optuna.Study,
    config: StudyConfig,
    splits: Splits | Callable[[], Splits],
    device: str,
    out: Path,
    baselines: Sequence[str] | None = None,
    sampler_studies: dict | None = None,
    *,
    tuning: TuneSpec | None = None,
    recompute: bool = False,
    title: str | None = None,
    workers: int = 1,
) -> list[MethodResult]:
    """Run (or read from the study) the final protocol, print the table, write report.json /
    report.md / plots to ``out``. ``splits`` may be a function: it is called only when a method
    has to be trained."""

    def on_seed(name: str, seed: int, acc: float) -> None:
        console.print(f"final · {name} · seed {seed} · val {acc:.4f}")

    console.rule("final evaluation: full training split, every seed, test split")
    rows = final_report(
        study, config, splits, device, on_seed, baselines, sampler_studies,
        tuning=tuning, recompute=recompute, on_event=console.print, workers=workers,
    )
    title = title or f"{study.study_name}: {config.model} on {config.dataset.name}"
    print_table(rows, title)
    best = decode(search_state(study, config).best.genome, config.blocks, config.recipe.base_lr)
    extra = {"study": study.study_name, "best_lr_by_block": best.lr_by_block, "config": config.to_dict()}
    json_path, md_path = write_report(rows, out, title, extra)
    figures = {**search_figures(study, config), "comparison": comparison_figure(rows)}
    paths = write_figures(figures, out, table_html=to_markdown(rows, title), title=title)
    console.print(f"report written: {json_path}, {md_path}, {paths.get('html', out / 'report.html')} and {len(figures)} PNG plots in {out}")
    return rows


def run(args: argparse.Namespace) -> int:
    """``report``: the study's stored final results, or retrain what is missing; write the report."""
    spec = tune_spec(args)  # cheap checks first
    study, config = open_study(args)
    splits = functools.cache(lambda: load_checked(config, args))
    out = report_dir(args, storage_url(args), study.study_name)
    write_full_report(study, config, splits, args.device, out, tuning=spec, recompute=args.recompute)
    return 0
