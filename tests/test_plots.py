"""Plots of a real (small) BioTune study, built without training.

The study is a plain ``optuna.create_study(...).optimize(...)`` with BioTuneSampler and an
objective that reads the genome through ``trial.suggest_float``, decodes it and stores the
same user attributes as the real objective, returning a closed-form accuracy. The figures are
then checked against the sampler's own replay of the generations.
"""

from __future__ import annotations

import math
import os
import random

import optuna
import pytest
import sqlalchemy
from PIL import Image

from biotune_optuna.study.studies import make_sampler
from biotune_optuna.config import DatasetSpec
from biotune_optuna.search.genome import decode, param_names
from biotune_optuna.report.plots import DEFAULT_HEIGHT, DEFAULT_WIDTH, TITLES, comparison_figure, search_figures, write_figures
from biotune_optuna.study.attrs import SLOT as SLOT_ATTR
from biotune_optuna.config import StudyConfig

BLOCKS = ("stem", "b1", "b2", "head")
#: Made-up parameter counts per block, for a realistic trainable fraction.
BLOCK_PARAMS = {"stem": 10_000, "b1": 200_000, "b2": 800_000, "head": 5_000}
COMPLETE = optuna.trial.TrialState.COMPLETE


def small_config(population: int = 5, elites: int = 2, generations: int = 2) -> StudyConfig:
    """A config whose search has P + G·(P + E) = 19 slots; no dataset is loaded."""
    return StudyConfig(
        model="resnet18", dataset=DatasetSpec("digits", image_size=8), blocks=BLOCKS,
        classes=tuple("0123456789"), dataset_fingerprint="not-loaded", seeds=(684, 559), n_folds=2,
        population_size=population, n_elites=elites, n_generations=generations, sampler_seed=11,
    )


def fake_objective(config: StudyConfig):
    """The user attributes of biotune_optuna.objective.Objective, with a closed-form accuracy."""
    rng = random.Random(5)
    target = [rng.random() for _ in param_names(config.blocks)]

    def objective(trial: optuna.Trial) -> float:
        genome = [trial.suggest_float(n, 0.0, 1.0) for n in param_names(config.blocks)]
        plan = decode(genome, config.blocks, config.recipe.base_lr)
        trained = sum(BLOCK_PARAMS[b] for b in plan.trainable_blocks)
        trial.set_user_attr("worker", f"test:{os.getpid()}")
        trial.set_user_attr("trainable_blocks", plan.trainable_blocks)
        trial.set_user_attr("lr_by_block", {b: float(f"{lr:.3g}") for b, lr in plan.lr_by_block.items()})
        trial.set_user_attr("trainable_fraction", round(trained / sum(BLOCK_PARAMS.values()), 6))
        if plan.is_empty:
            return 0.0
        accuracy = 1.0 - sum((g - t) ** 2 for g, t in zip(genome, target)) / len(genome)
        seeds = [round(accuracy + d, 6) for d in (-0.002, 0.002)]
        trial.set_user_attr("seed_accuracies", seeds)
        return sum(seeds) / len(seeds)

    return objective


def run_search(study: optuna.Study, config: StudyConfig) -> None:
    """Evaluate every slot of the search (one worker)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.sampler = make_sampler(config, poll_interval=0.005, max_poll_interval=0.05)
    study.optimize(fake_objective(config), n_trials=config.n_evaluations)


def sqlite_storage(path) -> optuna.storages.RDBStorage:  # noqa: ANN001
    """An SQLite file storage without fsync per commit (4× faster here; a test needs no durability)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    sqlalchemy.event.listen(storage.engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
    storage.engine.dispose()  # reconnect with the pragma
    return storage


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    config = small_config()
    storage = sqlite_storage(tmp_path_factory.mktemp("study") / "study.db")
    study = optuna.create_study(study_name="plots", storage=storage, direction="maximize", sampler=make_sampler(config))
    run_search(study, config)
    return study, config


def test_search_figures_have_the_four_plots_with_titles_and_axis_labels(searched):
    study, config = searched
    figures = search_figures(study, config)
    assert list(figures) == ["fitness", "diversity", "learning_rates", "accuracy_vs_params"]
    for name, fig in figures.items():
        assert fig.layout.title.text.startswith(TITLES[name])
        assert fig.layout.xaxis.title.text
    assert fig.layout.yaxis.title.text == "validation macro accuracy"
    colorbar = figures["learning_rates"].data[0].colorbar.title.text
    assert colorbar == "lr / base lr (log10)"


def test_fitness_plot_has_one_point_per_closed_generation_and_a_monotone_best_ever(searched):
    study, config = searched
    state = make_sampler(config).search_state(study)
    assert state.finished and len(state.populations) == config.n_generations + 1
    best, mean, ever = search_figures(study, config)["fitness"].data
    assert list(best.x) == list(mean.x) == list(ever.x) == list(range(config.n_generations + 1))
    assert [b for b in best.y] == pytest.approx([1 - p.members[0].fitness for p in state.populations])
    assert all(b >= m - 1e-12 for b, m in zip(best.y, mean.y))
    assert all(later >= earlier for earlier, later in zip(ever.y, ever.y[1:]))
    assert ever.y[-1] == pytest.approx(max(t.value for t in study.get_trials(states=(COMPLETE,))))
    assert len({round(y, 9) for y in mean.y}) > 1  # real values, not a constant


def test_diversity_plot_is_the_gene_spread_of_each_population(searched):
    study, config = searched
    state = make_sampler(config).search_state(study)
    (trace,) = search_figures(study, config)["diversity"].data
    assert list(trace.y) == pytest.approx([p.diversity for p in state.populations])
    assert all(0 < d < 0.6 for d in trace.y)


def test_learning_rate_heat_map_has_a_row_per_elite_and_nan_exactly_where_frozen(searched):
    study, config = searched
    state = make_sampler(config).search_state(study)
    (heat,) = search_figures(study, config)["learning_rates"].data
    elites = [(p.generation, e, m) for p in state.populations for e, m in enumerate(p.members[: config.n_elites], 1)]
    assert len(heat.z) == len(heat.y) == (config.n_generations + 1) * config.n_elites
    assert list(heat.x) == list(BLOCKS)
    assert list(heat.y)[:2] == ["gen 0 · elite 1", "gen 0 · elite 2"]
    n_frozen = 0
    for row, label, (generation, e, member) in zip(heat.z, heat.y, elites):
        assert label == f"gen {generation} · elite {e}"
        assert len(row) == len(BLOCKS)
        plan = decode(member.genome, BLOCKS, config.recipe.base_lr)
        for value, trained, gene in zip(row, plan.trainable, member.genome):
            if trained:
                assert value == pytest.approx(2 * (gene - 0.5))  # log10 of the factor 10^(2(g − ½))
                assert -1 <= value <= 1
            else:
                n_frozen += 1
                assert math.isnan(value)
    assert 0 < n_frozen < len(heat.z) * len(BLOCKS)  # both kinds of cell are exercised
    assert heat.zmid == 0 and (heat.zmin, heat.zmax) == (-1, 1)


def test_accuracy_vs_params_has_one_point_per_complete_trial(searched):
    study, config = searched
    (scatter,) = search_figures(study, config)["accuracy_vs_params"].data
    trials = sorted(study.get_trials(states=(COMPLETE,)), key=lambda t: t.number)
    assert len(trials) == config.n_evaluations
    assert list(scatter.customdata) == [t.number for t in trials]
    assert list(scatter.x) == pytest.approx([100 * t.user_attrs["trainable_fraction"] for t in trials])
    assert list(scatter.y) == pytest.approx([t.value for t in trials])
    assert list(scatter.marker.color) == [t.system_attrs[SLOT_ATTR]["generation"] for t in trials]
    first = trials[0]
    assert f"trial {first.number}" in scatter.text[0] and first.user_attrs["slot"]["role"] in scatter.text[0]
    assert ", ".join(first.user_attrs["trainable_blocks"]) in scatter.text[0]


def test_search_figures_of_a_study_without_closed_generation_are_empty(tmp_path):
    config = small_config()
    study = optuna.create_study(storage=sqlite_storage(tmp_path / "s.db"), direction="maximize", sampler=make_sampler(config))
    study.sampler = make_sampler(config, poll_interval=0.005)
    study.optimize(fake_objective(config), n_trials=2)
    figures = search_figures(study, config)
    assert len(figures["fitness"].data[0].x) == 0 and len(figures["learning_rates"].data[0].z) == 0
    assert len(figures["accuracy_vs_params"].data[0].x) == 2
    assert len(search_figures(study, config, closed_only=True)["accuracy_vs_params"].data[0].x) == 0


class Row:
    """Duck-typed report.MethodResult (comparison_figure must not need torch's report module)."""

    def __init__(self, method: str, accuracies: list[float], trainable_percent: float) -> None:
        self.method, self.trainable_percent = method, trainable_percent
        self.mean = sum(accuracies) / len(accuracies)
        self.std = math.sqrt(sum((a - self.mean) ** 2 for a in accuracies) / len(accuracies))


ROWS = [Row("BioTune", [0.95, 0.97], 12.5), Row("Full fine-tuning", [0.93, 0.94], 100.0), Row("Linear probing", [0.80, 0.80], 0.4)]


def test_comparison_figure_shows_mean_and_std_in_percent_per_method():
    fig = comparison_figure(ROWS)
    assert [t.name for t in fig.data] == ["BioTune", "Full fine-tuning", "Linear probing"]
    assert fig.data[0].y[0] == pytest.approx(96.0) and fig.data[0].error_y.array[0] == pytest.approx(1.0)
    assert fig.data[1].x[0] == 100.0 and fig.data[2].error_y.array[0] == pytest.approx(0.0)
    assert fig.layout.xaxis.type == "log"  # 0.4 % … 100 %
    assert comparison_figure(ROWS[:2]).layout.xaxis.type == "linear"


def test_write_figures_writes_a_png_per_figure_and_one_self_contained_page(searched, tmp_path):
    study, config = searched
    figures = {**search_figures(study, config), "comparison": comparison_figure(ROWS)}
    table = "| Method | Test macro accuracy (%) |\n| --- | --- |\n| BioTune | 96.00 ± 1.00 |\n"
    paths = write_figures(figures, tmp_path / "report", table_html=table, title="digits <report>")
    assert set(paths) == set(figures) | {"html"}
    for name, fig in figures.items():
        assert paths[name] == tmp_path / "report" / f"{name}.png"
        with Image.open(paths[name]) as image:
            image.load()
            assert image.format == "PNG"
            assert image.size == (fig.layout.width or DEFAULT_WIDTH, fig.layout.height or DEFAULT_HEIGHT)
            assert sum(1 for n in image.convert("L").histogram() if n) > 20  # drawn, not blank
    with Image.open(paths["learning_rates"]) as image:
        assert image.size[1] == figures["learning_rates"].layout.height > DEFAULT_HEIGHT - 200
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count("* plotly.js v") == 1  # plotly.js embedded once: works offline
    assert '<script src="http' not in page and "<script src='http" not in page
    for name, fig in figures.items():
        assert fig.layout.title.text in page and f'id="figure-{name}"' in page
    assert "<table>" in page and "96.00 ± 1.00" in page  # Markdown table rendered
    assert "<title>digits &lt;report&gt;</title>" in page
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        [f"{n}.png" for n in figures] + ["report.html"]
    )  # no temporary files left


def test_write_figures_without_a_browser_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    with pytest.raises(RuntimeError, match="BROWSER_PATH"):
        write_figures({"c": comparison_figure(ROWS)}, tmp_path / "out")
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setenv("PATH", str(tmp_path))
    from choreographer.browsers.chromium import Chromium

    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    with pytest.raises(RuntimeError, match=r"apt-get install -y chromium"):
        write_figures({"c": comparison_figure(ROWS)}, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # nothing half-written
    html_only = write_figures({"c": comparison_figure(ROWS)}, tmp_path / "out", png=False)
    assert set(html_only) == {"html"} and html_only["html"].is_file()
