"""Plots of a BioTune search and of the final comparison (plotly only: no torch, no training).

Figures (:func:`search_figures`):

* ``fitness``: best and mean validation accuracy of each closed generation, and the best ever;
* ``diversity``: population diversity (standard deviation of all genes) per generation;
* ``learning_rates``: heat map of the elites' plans: one row per elite of each generation, one
  column per block, the value ``log10(lr / base lr)`` (in [−1, 1]) for a fine-tuned block and
  blank for a frozen one;
* ``accuracy_vs_params``: every COMPLETE BioTune trial, validation accuracy against the
  percentage of trainable parameters, coloured by generation.

:func:`comparison_figure` shows the final table (test accuracy mean ± std against trainable
parameters per method), and :func:`write_figures` writes a PNG per figure plus one
self-contained ``report.html``.

Generations are read through :meth:`BioTuneSampler.search_state`, i.e. replayed from the
finished trials exactly as the sampler sees them; Φ = 1 − validation accuracy.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go

from biotune_optuna.config import StudyConfig
from biotune_optuna.search import decode, value_of
from biotune_optuna.study import attrs
from biotune_optuna.study.attrs import SlotRecord
from biotune_optuna.study.studies import search_state


#: Default PNG size (layout pixels, scale 1) of a figure without its own layout width/height.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 1000, 600

#: Titles of the search figures, by key.
TITLES = {
    "fitness": "Validation accuracy per generation",
    "diversity": "Population diversity per generation",
    "learning_rates": "Learning rate of each block in the elites' plans",
    "accuracy_vs_params": "Validation accuracy vs trainable parameters (every completed trial)",
    "comparison": "Test accuracy vs trainable parameters per method",
}

_TEMPLATE = "plotly_white"


def _layout(fig: go.Figure, title: str, x: str, y: str, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.5, "xanchor": "center"},
        xaxis_title=x,
        yaxis_title=y,
        template=_TEMPLATE,
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        **kwargs,
    )
    return fig


def _biotune_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials that evaluated a BioTune slot, by trial number."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    out = [t for t in trials if _slot(t) is not None]
    return sorted(out, key=lambda t: t.number)


def _slot(t: optuna.trial.FrozenTrial) -> SlotRecord | None:
    """The trial's claimed slot record, or None."""
    rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
    return rec if rec is not None and rec.claimed else None


def _accuracy(study: optuna.Study):  # noqa: ANN202
    """Fitness Φ → objective value (Φ = 1 − accuracy in a maximised study); one storage read."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return lambda fitness: value_of(fitness, maximize)


def fitness_figure(study: optuna.Study, config: StudyConfig, state=None) -> go.Figure:  # noqa: ANN001
    """Best and mean validation accuracy of every closed generation, and the best ever."""
    state = state if state is not None else search_state(study, config)
    acc = _accuracy(study)
    gens = [p.generation for p in state.populations]
    best = [acc(p.members[0].fitness) for p in state.populations]
    mean = [acc(statistics.fmean(m.fitness for m in p.members)) for p in state.populations]
    ever = [acc(p.best.fitness) for p in state.populations]
    fig = go.Figure()
    fig.add_scatter(x=gens, y=best, mode="lines+markers", name="best of generation")
    fig.add_scatter(x=gens, y=mean, mode="lines+markers", name="mean of generation", line={"dash": "dot"})
    fig.add_scatter(x=gens, y=ever, mode="lines", name="best ever", line={"shape": "hv", "width": 3})
    return _layout(
        fig, TITLES["fitness"], "generation (0 = initial population)", "validation macro accuracy",
        xaxis={"dtick": 1}, legend={"orientation": "h", "y": -0.18},
    )


def diversity_figure(study: optuna.Study, config: StudyConfig, state=None) -> go.Figure:  # noqa: ANN001
    """Standard deviation of all genes of each closed population."""
    state = state if state is not None else search_state(study, config)
    fig = go.Figure()
    fig.add_scatter(
        x=[p.generation for p in state.populations], y=[p.diversity for p in state.populations],
        mode="lines+markers", name="diversity",
    )
    return _layout(
        fig, TITLES["diversity"], "generation (0 = initial population)", "std of all genes",
        xaxis={"dtick": 1}, yaxis={"rangemode": "tozero"},
    )


def learning_rates_figure(study: optuna.Study, config: StudyConfig, state=None) -> go.Figure:  # noqa: ANN001
    """Heat map of the elites' plans: ``log10(lr / base lr)`` per block, blank where frozen.

    Rows are the first ``max(1, n_elites)`` members of each closed generation, best first,
    labelled ``"gen 3 · elite 1"``.
    """
    state = state if state is not None else search_state(study, config)
    base, to_accuracy = config.recipe.base_lr, _accuracy(study)
    rows, z, hover = [], [], []
    for p in state.populations:
        for e, member in enumerate(p.members[: max(1, config.n_elites)], start=1):
            plan = decode(member.genome, config.blocks, base)
            rows.append(f"gen {p.generation} · elite {e}")
            z.append([math.log10(lr / base) if t else math.nan for t, lr in zip(plan.trainable, plan.learning_rates)])
            acc = to_accuracy(member.fitness)
            hover.append([
                f"{b}: lr {lr:.3g} (×{lr / base:.3g})<br>val acc {acc:.4f}" if t else f"{b}: frozen<br>val acc {acc:.4f}"
                for b, t, lr in zip(config.blocks, plan.trainable, plan.learning_rates)
            ])
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(config.blocks), y=rows, text=hover, hoverinfo="text+y",
            colorscale="RdBu_r", zmid=0.0, zmin=-1.0, zmax=1.0, xgap=1, ygap=1,
            colorbar={"title": {"text": "lr / base lr (log10)", "side": "right"}, "tickvals": [-1, -0.5, 0, 0.5, 1]},
        )
    )
    return _layout(
        fig, TITLES["learning_rates"] + " (blank = frozen)", "block (input side first)", "",
        yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"},
        height=max(420, 140 + 22 * len(rows)),
    )


def accuracy_vs_params_figure(study: optuna.Study, config: StudyConfig, generations: int | None = None) -> go.Figure:
    """Every COMPLETE BioTune trial: validation accuracy against trainable parameters (%).

    Args:
        generations: if given, only trials of generations ``< generations`` (the closed ones).

    Trials without the ``trainable_fraction`` user attribute are left out.
    """
    trials = [
        t for t in _biotune_trials(study)
        if t.user_attrs.get(attrs.TRAINABLE_FRACTION) is not None
        and (generations is None or _slot(t).generation < generations)
    ]
    x = [100.0 * float(t.user_attrs[attrs.TRAINABLE_FRACTION]) for t in trials]
    y = [t.value for t in trials]
    gens = [int(_slot(t).generation) for t in trials]
    hover = [
        f"trial {t.number}<br>generation {g} · {_slot(t).role or '?'}"
        f"<br>trains: {', '.join(t.user_attrs.get('trainable_blocks') or []) or 'nothing'}"
        f"<br>params {px:.2f} % · val acc {v:.4f}"
        for t, g, px, v in zip(trials, gens, x, y)
    ]
    fig = go.Figure(
        go.Scatter(
            x=x, y=y, mode="markers", text=hover, hoverinfo="text", name="trials",
            customdata=[t.number for t in trials],
            marker={
                "color": gens, "colorscale": "Viridis", "size": 9, "opacity": 0.85,
                "cmin": 0, "cmax": max(config.n_generations, 1),
                "line": {"width": 0.5, "color": "white"},
                "colorbar": {"title": {"text": "generation", "side": "right"}, "dtick": 1},
            },
        )
    )
    return _layout(fig, TITLES["accuracy_vs_params"], "trainable parameters (%)", "validation macro accuracy")


def search_figures(study: optuna.Study, config: StudyConfig, *, closed_only: bool = False) -> dict[str, go.Figure]:
    """The plots of a BioTune search, from the study's trials alone.

    Args:
        study: a BioTune study (any storage); trials still running are ignored.
        config: the study's config (``biotune_optuna.study.load_config(study)``).
        closed_only: leave the open generation's finished trials out of ``accuracy_vs_params``
            too, so that the figures depend on the closed generations alone (every process
            that sees the same closed generations draws identical figures).

    Returns:
        ``{"fitness", "diversity", "learning_rates", "accuracy_vs_params"}`` → figure. Before the
        initial population closes, the first three are empty (no generation yet).

    Example:
        >>> figures = search_figures(study, load_config(study))  # doctest: +SKIP
        >>> write_figures(figures, Path("report"))                # doctest: +SKIP
    """
    state = search_state(study, config)
    return {
        "fitness": fitness_figure(study, config, state),
        "diversity": diversity_figure(study, config, state),
        "learning_rates": learning_rates_figure(study, config, state),
        "accuracy_vs_params": accuracy_vs_params_figure(study, config, len(state.populations) if closed_only else None),
    }


def comparison_figure(rows: Iterable[Any]) -> go.Figure:
    """Test accuracy (mean ± std, in %) against trainable parameters (%) per method.

    Args:
        rows: :class:`biotune_optuna.report.MethodResult` rows, or anything with ``method``,
            ``mean``, ``std`` (accuracies in [0, 1]) and ``trainable_percent``.

    The x axis is logarithmic when every method trains > 0 % and they span more than a decade.
    """
    rows = list(rows)
    fig = go.Figure()
    for r in rows:
        fig.add_scatter(
            x=[float(r.trainable_percent)], y=[100.0 * float(r.mean)],
            error_y={"type": "data", "array": [100.0 * float(r.std)], "visible": True},
            mode="markers+text", text=[r.method], textposition="top center", name=r.method,
            marker={"size": 12},
            hovertemplate=(
                f"{html.escape(str(r.method))}<br>test acc %{{y:.2f}} ± {100 * float(r.std):.2f} %"
                "<br>trainable %{x:.3g} %<extra></extra>"
            ),
        )
    xs = [float(r.trainable_percent) for r in rows]
    log = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 10
    return _layout(
        fig, TITLES["comparison"], "trainable parameters (%)" + (" (log scale)" if log else ""),
        "test macro accuracy (%, mean ± std over seeds)",
        xaxis={"type": "log", "dtick": 1} if log else {"type": "linear", "rangemode": "tozero"},
    )


# ------------------------------------------------------------------------ writing
def find_browser() -> str:
    """The Chrome/Chromium kaleido will use for PNG export.

    Order: ``$BROWSER_PATH`` (choreographer's own override), then whatever choreographer finds
    (a Chrome downloaded by ``plotly_get_chrome``, ``chrome``/``chromium`` on ``PATH``, Debian's
    ``/usr/bin/chromium``).

    Raises:
        RuntimeError: naming what to install when there is none.
    """
    env = os.environ.get("BROWSER_PATH")
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return env
        raise RuntimeError(f"BROWSER_PATH={env!r} is not an executable file; point it at chromium or chrome")
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - a different choreographer: fall back to PATH
        path = None
    path = path or shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not path:
        raise RuntimeError(
            "PNG export needs Chrome or Chromium and none was found: install it "
            "(Debian/Ubuntu: `apt-get install -y chromium`, or run `plotly_get_chrome`), "
            "or set BROWSER_PATH to the browser executable"
        )
    return path


def _size(fig: go.Figure) -> tuple[int, int]:
    return int(fig.layout.width or DEFAULT_WIDTH), int(fig.layout.height or DEFAULT_HEIGHT)


def _write_pngs(figures: Mapping[str, go.Figure], paths: Mapping[str, Path]) -> None:
    import kaleido

    browser = find_browser()
    specs = []
    for name, fig in figures.items():
        width, height = _size(fig)
        specs.append({
            "fig": fig.to_dict(),
            "path": paths[name],
            "opts": {"format": "png", "width": width, "height": height, "scale": 1},
        })
    # One browser for every figure; MathJax off (it would be fetched from a CDN: no internet
    # needed, and no hang on machines without it).
    kaleido.write_fig_from_object_sync(specs, kopts={"path": browser, "mathjax": False})


def _table_html(table: str, title: str) -> str:
    """``table`` (HTML, or Markdown) as HTML, without a leading Markdown heading that repeats
    the page's ``title`` (report.to_markdown starts with one; the page has its own <h1>)."""
    text = table.strip()
    if text.startswith("<"):
        return text
    first, _, rest = text.partition("\n")
    if first.lstrip("#").strip() == title.strip() and first.startswith("#"):
        text = rest.strip()
    try:  # Markdown (e.g. report.to_markdown): markdown-it comes with rich
        import markdown_it

        return markdown_it.MarkdownIt().enable("table").render(text)
    except ImportError:  # pragma: no cover
        return f"<pre>{html.escape(text)}</pre>"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Liberation Sans", Arial, sans-serif;
       margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .35rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
section { margin: 2.5rem 0; }
"""


def _report_html(figures: Mapping[str, go.Figure], title: str, table_html: str | None) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if table_html:
        parts.append(f'<section id="table">{_table_html(table_html, title)}</section>')
    for i, (name, fig) in enumerate(figures.items()):
        heading = fig.layout.title.text or name
        div = fig.to_html(
            full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{name}",
            default_height=f"{_size(fig)[1]}px", default_width="100%", config={"displaylogo": False},
        )
        parts.append(f'<section id="{html.escape(name)}"><h2>{html.escape(heading)}</h2>{div}</section>')
    parts += ["</body>", "</html>"]
    return "\n".join(parts)


def write_figures(
    figures: Mapping[str, go.Figure],
    directory: Path,
    *,
    table_html: str | None = None,
    title: str = "BioTune report",
    png: bool = True,
) -> dict[str, Path]:
    """Write ``<name>.png`` per figure and one self-contained ``report.html`` with all of them.

    Each file is written to a temporary name in ``directory`` and renamed into place, so a
    reader never sees half a file. The HTML page embeds plotly.js once (it works offline) and
    shows ``table_html`` (HTML, or Markdown such as :func:`biotune_optuna.report.to_markdown`)
    above the figures.

    Args:
        figures: name → figure; names become file names.
        directory: created if needed.
        table_html: optional table shown first.
        title: page title and heading.
        png: False to skip the PNGs (no browser needed).

    Returns:
        name → PNG path for every figure, and ``"html"`` → the page.

    Raises:
        RuntimeError: if no Chrome/Chromium is installed for the PNG export (the message says
            what to install; see :func:`find_browser`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    staging = Path(tempfile.mkdtemp(prefix=".plots-", dir=directory))
    try:
        staged = {name: staging / f"{name}.png" for name in figures}
        if png and figures:
            _write_pngs(figures, staged)
            for name, tmp in staged.items():
                if not tmp.is_file():
                    raise RuntimeError(f"kaleido did not write the PNG of figure {name!r}")
        page = staging / "report.html"
        page.write_text(_report_html(figures, title, table_html), encoding="utf-8")
        if png:
            for name, tmp in staged.items():
                out[name] = directory / f"{name}.png"
                os.replace(tmp, out[name])
        out["html"] = directory / "report.html"
        os.replace(page, out["html"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
