"""``biotune-optuna report``: the final evaluation of a finished search (spec §8), and the
report writing that ``run`` and ``compare`` share."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from biotune_optuna.cli.common import console, open_study, report_dir, storage_url
from biotune_optuna.cli.loading import load_checked
from biotune_optuna.config import StudyConfig
from biotune_optuna.finetune.data import Splits
from biotune_optuna.report.final import MethodResult, final_report, to_markdown, write_report
from biotune_optuna.report.plots import comparison_figure, search_figures, write_figures
from biotune_optuna.search import decode
from biotune_optuna.study.studies import search_state


def print_table(rows: Sequence[MethodResult], title: str) -> None:
    """The comparison table on stdout."""
    table = Table(title=title)
    for col in ("Method", "Test macro acc. (%)", "Trainable params (%)", "Wall time (s)", "Evaluations"):
        table.add_column(col, justify="left" if col == "Method" else "right")
    for r in rows:
        wall = f"{r.train_seconds:.0f}" + (f" + {r.search_seconds:.0f} search" if r.search_seconds else "")
        table.add_row(r.method, r.accuracy_text, f"{r.trainable_percent:.2f}", wall, str(r.evaluations or "—"))
    Console().print(table)


def write_full_report(
    study: optuna.Study,
    config: StudyConfig,
    splits: Splits,
    device: str,
    out: Path,
    baselines: Sequence[str] | None = None,
    sampler_studies: dict | None = None,
) -> None:
    """Run the final protocol, print the table, write report.json / report.md / plots to ``out``."""

    def on_seed(name: str, seed: int, acc: float) -> None:
        console.print(f"final · {name} · seed {seed} · test {acc:.4f}")

    console.rule("final evaluation: full training split, every seed, test split")
    rows = final_report(study, config, splits, device, on_seed, baselines, sampler_studies)
    title = f"{study.study_name}: {config.model} on {config.dataset.name}"
    print_table(rows, title)
    best = decode(search_state(study, config).best.genome, config.blocks, config.recipe.base_lr)
    extra = {"study": study.study_name, "best_lr_by_block": best.lr_by_block, "config": config.to_dict()}
    json_path, md_path = write_report(rows, out, title, extra)
    figures = {**search_figures(study, config), "comparison": comparison_figure(rows)}
    paths = write_figures(figures, out, table_html=to_markdown(rows, title), title=title)
    console.print(f"report written: {json_path}, {md_path}, {paths.get('html', out / 'report.html')} and {len(figures)} PNG plots in {out}")


def run(args: argparse.Namespace) -> int:
    """``report``: retrain the best genome and the study's baselines; write the report."""
    study, config = open_study(args)
    splits = load_checked(config, args)
    write_full_report(study, config, splits, args.device, report_dir(args, storage_url(args), study.study_name))
    return 0
