"""The final table as text: Markdown, report.json, and the cell texts the console table shares.

Rows are :class:`biotune_optuna.report.final.MethodResult` (read duck-typed: ``method``,
``accuracy_text``, ``val_accuracies``, ``trainable_percent``, ``chosen``, ``cost``,
``tuning``, ``to_dict()``). Torch-free.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NOTES = (
    "Test accuracy: mean ± std (ddof 0) over the retraining seeds of one chosen configuration — not a "
    "spread over searches or data draws. Every configuration is chosen on the validation split, never on "
    "test: BioTune's and each sampler's by their search, each baseline by a sweep of its learning rate "
    "(and own knob) trained under this same protocol (its chosen candidate's runs are its final runs). "
    "Selection cost: the search, or the baseline candidates not chosen; final runs: the chosen "
    "configuration's fine-tunes. Their sum is all the compute a row took."
)

BUDGET_NOTE = (
    "Slots: P + G·(P + E), the budget every sampler gets; BioTune skips the hill climbs of elites that select "
    "no block, so its evaluations can be fewer. Trained nothing: genomes whose every gene ≤ threshold (scored "
    "without training). Trial time: the evaluations' durations summed (wall time depends on the workers)."
)


def _n(count: float, word: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{count:.0f} {word}" + ("" if count == 1 else "s")


def _spent(d: Mapping) -> str:
    """``"2 fine-tunes · 6 epochs · 40 s"``."""
    return f"{_n(d['fine_tunes'], 'fine-tune')} · {_n(d['epochs'], 'epoch')} · {d['seconds']:.0f} s"


def _num(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def chosen_text(row: Any) -> str:
    """``"4/6 blocks · lr 2.1e-04–5e-03"`` for a search, ``"lr 0.001, alpha 0.01"`` for a baseline
    (``"(fixed)"`` when it was not tuned)."""
    chosen = row.chosen or {}
    if "lr_by_block" in chosen:
        lrs = list(chosen["lr_by_block"].values())
        head = f"{len(lrs)}/{len(chosen['genome']) - 1} blocks"
        if not lrs:
            return head
        low, high = min(lrs), max(lrs)
        return f"{head} · lr {low:.2g}" + (f"–{high:.2g}" if high > low else "")
    if not chosen:
        return "—"
    text = ", ".join(f"{k} {_num(v)}" for k, v in chosen.items())
    return text if row.tuning else f"{text} (fixed)"


def selection_text(row: Any) -> str:
    """What choosing the configuration cost: a search's evaluations, a sweep's other candidates."""
    sel = (row.cost or {}).get("selection", {})
    if "evaluations" in sel:
        return f"{_n(sel['evaluations'], 'eval')} · {_spent(sel)}"
    if sel.get("configs", 0) > 1:
        return f"{_n(sel['configs'], 'config')} · {_spent(sel)}"
    return "— (fixed)"


def final_text(row: Any) -> str:
    """The final runs: ``"3 fine-tunes · 41 epochs · 120 s"``."""
    fin = (row.cost or {}).get("final", {})
    return _spent(fin) if fin else f"{row.train_seconds:.0f} s"


def val_text(row: Any) -> str:
    """Mean best validation macro accuracy of the final runs, in percent."""
    return f"{100 * statistics.fmean(row.val_accuracies):.2f}" if row.val_accuracies else "—"


def budget_rows(rows: Sequence[Any]) -> list[dict]:
    """Per search (BioTune and each other sampler): its cost as counted by ``search_cost``."""
    return [{"method": r.method, **r.cost["selection"]} for r in rows if "evaluations" in (r.cost or {}).get("selection", {})]


def to_markdown(rows: Sequence[Any], title: str) -> str:
    """The final table, the search budgets and the notes, as Markdown."""
    lines = [
        f"# {title}",
        "",
        (
            "| Method | Test macro accuracy (%) | Val. macro accuracy (%) | Trainable params (%) | Chosen (on validation) "
            "| Selection cost | Final runs |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.accuracy_text} | {val_text(r)} | {r.trainable_percent:.2f} | {chosen_text(r)} | "
            f"{selection_text(r)} | {final_text(r)} |"
        )
    budgets = budget_rows(rows)
    if budgets:
        lines += [
            "",
            "## Search budgets",
            "",
            "| Search | Slots | Evaluations | Trained nothing | Pruned | Fine-tunes | Epochs | Wall time (s) | Trial time (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for b in budgets:
            lines.append(
                f"| {b['method']} | {b.get('slots', '—')} | {b['evaluations']} | {b['trained_nothing']} | {b['pruned']} | "
                f"{b['fine_tunes']} | {b['epochs']} | {b['seconds']:.0f} | {b['trial_seconds']:.0f} |"
            )
        lines += ["", BUDGET_NOTE]
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[Any], directory: Path, title: str, extra: Mapping | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``directory`` (atomically: temp file, then rename).

    report.json holds ``title``, ``extra``, ``methods`` (each row's :meth:`to_dict`: chosen
    hyper-parameters, cost, per-seed accuracies, mean, std) and ``search_budgets``.

    Returns:
        (JSON path, Markdown path).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **(extra or {}), "methods": [r.to_dict() for r in rows], "search_budgets": budget_rows(rows)}
    out = []
    for name, text in (("report.json", json.dumps(payload, indent=2)), ("report.md", to_markdown(rows, title))):
        path = directory / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        out.append(path)
    return out[0], out[1]
