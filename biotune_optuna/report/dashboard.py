"""optuna-dashboard pages of a BioTune study, and serving the dashboard on localhost.

:func:`publish` puts the search plots of :mod:`biotune_optuna.plots` on the study's main page
in optuna-dashboard (``/dashboard/studies/<id>``, under the built-in History, Hyperparameter
Importance and Timeline plots) and a Markdown summary in the study's Note tab
(``/dashboard/studies/<id>/note``). Every plot is saved under a fixed id (:data:`GRAPH_IDS`),
so publishing again — after each generation — replaces the plots instead of adding copies.
optuna-dashboard 0.21 lists saved plots in no fixed order (a ``set``), so their order on the
page can change between dashboard restarts.

:func:`serve` runs optuna-dashboard itself. The dashboard has no authentication and no
read-only mode (anyone who reaches it can rename or delete studies and edit notes), so it binds
to loopback only unless asked otherwise; reach it through ``ssh -L 8080:127.0.0.1:8080 host``.

Nothing here writes a storage URL: :func:`publish` gets a study, and :func:`serve` prints only
the address it listens on.
"""

from __future__ import annotations

import ipaddress
import socket
import warnings
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
import plotly.graph_objects as go

from biotune_optuna.config import ConfigError, StudyConfig
from biotune_optuna.report.plots import search_figures
from biotune_optuna.search import decode, value_of
from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.attrs import SlotRecord
from biotune_optuna.study.storage import open_storage
from biotune_optuna.study.studies import search_state


#: The objective's name in the dashboard.
OBJECTIVE_NAME = "validation macro accuracy"
#: Dashboard graph id of each search figure: fixed, so that publishing again overwrites.
GRAPH_IDS = {
    "fitness": "biotune-fitness",
    "diversity": "biotune-diversity",
    "learning_rates": "biotune-learning-rates",
    "accuracy_vs_params": "biotune-accuracy-vs-params",
}
#: Study system attribute: the number of closed generations the published pages show.
PUBLISHED_ATTR = attrs.DASHBOARD_GENERATIONS
#: First line of the summary that :func:`publish` writes into the study note.
SUMMARY_HEADING = "## BioTune search"
#: Last line of that summary: note text a user writes below it survives republishing.
SUMMARY_END = "*biotune-optuna rewrites the text above this line after each generation; notes written below it are kept.*"


def _best_trial_numbers(study: optuna.Study) -> dict[tuple[int, int], int]:
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rec = SlotRecord.from_attr(t.system_attrs.get(attrs.SLOT))
        if rec is not None and rec.claimed:
            out.setdefault(rec.key, t.number)
    return out


def summary_markdown(study: optuna.Study, config: StudyConfig, state=None) -> str:  # noqa: ANN001
    """The Markdown summary of a search: model, dataset, P/E/G, generation reached, best plan."""
    state = state if state is not None else search_state(study, config)
    ds = config.dataset
    finished = "search finished" if state.finished else f"generation {state.generation} running"
    closed = len(state.populations)
    lines = [
        f"{SUMMARY_HEADING} · {study.study_name}",
        "",
        "| | |",
        "| --- | --- |",
        f"| Model | {config.model} ({len(config.blocks)} blocks: {', '.join(config.blocks)}) |",
        f"| Dataset | {ds.name}, {ds.image_size} px, {len(config.classes)} classes |",
        f"| Search | P = {config.population_size}, E = {config.n_elites}, G = {config.n_generations} "
        f"({config.mode} mode, sampler seed {config.sampler_seed}); at most {config.n_evaluations} evaluations "
        f"× {len(config.seeds)} seed(s), {config.n_folds} fold(s) |",
        f"| Generations closed | {closed} of {config.n_generations + 1} ({finished}) |",
    ]
    best = state.best
    if best is None:
        lines.append("| Best | — (the initial population has not closed yet) |")
    else:
        plan = decode(best.genome, config.blocks, config.recipe.base_lr)
        number = _best_trial_numbers(study).get(best.origin)
        where = f"generation {best.origin[0]}, slot {best.origin[1]}" + (f", trial {number}" if number is not None else "")
        acc = value_of(best.fitness, study.direction == optuna.study.StudyDirection.MAXIMIZE)
        trains = ", ".join(
            f"{b} (lr {lr:.3g} = {lr / config.recipe.base_lr:.3g} × base)" for b, lr in plan.lr_by_block.items()
        ) or "nothing"
        frozen = ", ".join(b for b, t in zip(plan.blocks, plan.trainable) if not t) or "nothing"
        lines += [
            f"| Best validation accuracy | **{acc:.4f}** ({where}) |",
            f"| Best plan fine-tunes | {trains} |",
            f"| Best plan freezes | {frozen} |",
            f"| Base learning rate | {config.recipe.base_lr:g} |",
        ]
    lines += ["", "Plots: " + ", ".join(GRAPH_IDS.values()) + " (below the study's history plots).", "", SUMMARY_END]
    return "\n".join(lines)


def _merged_note(old: str, summary: str) -> str:
    """``summary`` followed by whatever a user wrote below the previous summary (or the whole
    previous note, when it was not ours)."""
    if SUMMARY_END in old:
        kept = old.split(SUMMARY_END, 1)[1].strip("\n")
    elif old.startswith(SUMMARY_HEADING):
        kept = ""
    else:
        kept = old.strip("\n")
    return summary + ("\n\n" + kept if kept else "") + "\n"


def _for_dashboard(fig: go.Figure) -> go.Figure:
    # The dashboard draws each plot in a 450 px box: drop fixed sizes meant for the PNGs.
    fig = go.Figure(fig)
    fig.update_layout(width=None, height=None, autosize=True)
    return fig


def publish(study: optuna.Study, config: StudyConfig, *, force: bool = False) -> bool:
    """Put the search's plots and summary on the study's optuna-dashboard page.

    Writes (all as study system attributes, which optuna-dashboard reads): the objective name
    ``"validation macro accuracy"``; one plotly graph per :data:`GRAPH_IDS` entry, saved with
    ``save_plotly_graph_object(..., graph_object_id=...)`` so a later call overwrites the same
    graph; and the study note, whose summary part is rewritten while text a user added below
    :data:`SUMMARY_END` is kept (the note is not rewritten when unchanged).

    Many workers call this when they see a generation close. The pages are drawn from the
    closed generations alone, so workers that publish at the same moment write identical
    bytes (optuna-dashboard splits a graph over several attributes, written one by one:
    different contents written at once could interleave). A study attribute
    (:data:`PUBLISHED_ATTR`) records how many closed generations the pages show; a call that
    has nothing newer to show writes nothing, unless ``force``.

    Args:
        study: the BioTune study.
        config: its config (``biotune_optuna.study.load_config(study)``).
        force: publish even if the pages already show as many closed generations.

    Returns:
        True if the pages were written.
    """
    state = search_state(study, config)
    closed = len(state.populations)
    storage, study_id = _optuna.storage_of(study), _optuna.study_id(study)
    shown = storage.get_study_system_attrs(study_id).get(PUBLISHED_ATTR)
    if not force and shown is not None and shown >= closed:
        return False
    if study.metric_names != [OBJECTIVE_NAME]:
        # optuna_dashboard.set_objective_names() is deprecated in 0.21: it warns and calls this.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME])
    for name, fig in search_figures(study, config, closed_only=True).items():
        optuna_dashboard.save_plotly_graph_object(study, _for_dashboard(fig), graph_object_id=GRAPH_IDS[name])
    old = optuna_dashboard.get_note(study)
    note = _merged_note(old, summary_markdown(study, config, state))
    if note != old:
        optuna_dashboard.save_note(study, note)
    storage.set_study_system_attr(study_id, PUBLISHED_ATTR, closed)  # last: a crash above leaves it to the next caller
    return True


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    url: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifact_dir: str | None = None,
    *,
    allow_remote: bool = False,
) -> None:
    """Run optuna-dashboard on a storage until interrupted (Ctrl-C / SIGINT returns).

    The storage is opened without creating tables (the schema exists once ``create`` ran).
    The dashboard's WSGI app (``optuna_dashboard.wsgi``) is served by a threading server, not
    by ``optuna_dashboard.run_server``, whose single-threaded server lets one idle browser
    connection stall every other request.

    Args:
        url: storage URL (its password is never printed).
        host: address to bind; loopback only unless ``allow_remote``.
        port: TCP port.
        artifact_dir: a ``FileSystemArtifactStore`` directory whose artifacts the dashboard serves.
        allow_remote: bind to a non-loopback address. optuna-dashboard has no authentication and
            no read-only mode — anyone who reaches it can delete studies — so only do this behind
            an authenticating proxy or on a trusted network.

    Raises:
        ConfigError: for a non-loopback ``host`` without ``allow_remote``, a missing artifact
            directory, a storage that cannot be opened (the message hides the password), or an
            address that cannot be bound (port in use).
    """
    from pathlib import Path

    if not allow_remote and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the dashboard on {host!r}: optuna-dashboard has no authentication, so anyone who "
            "reaches it can edit or delete studies. Bind to 127.0.0.1 and use `ssh -L 8080:127.0.0.1:8080 host`, "
            "or pass allow_remote=True (--allow-remote) behind an authenticating proxy"
        )
    store = None
    if artifact_dir is not None:
        if not Path(artifact_dir).is_dir():
            raise ConfigError(f"artifact directory {artifact_dir!r} does not exist")
        from optuna.artifacts import FileSystemArtifactStore

        store = FileSystemArtifactStore(artifact_dir)
    storage = open_storage(url)
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    # optuna_dashboard.run_server() serves one connection at a time (bottle's wsgiref server):
    # a browser that opens a spare connection and sends nothing on it (Chromium does) stalls
    # every other request until it gives up. optuna-dashboard's own gunicorn mode uses 4
    # threads, so the app is thread-safe: serve it from a threading server instead.
    bind = host.strip().strip("[]")
    server_class = _ThreadingWSGIServer6 if ":" in bind else _ThreadingWSGIServer
    try:
        server = make_server(bind, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"optuna-dashboard listening on http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-") -> None:  # noqa: ANN001 - http.server's signature
        # Errors only (the dashboard polls every few seconds: access logs would drown the output).
        if str(code).isdigit() and int(code) >= 400:
            super().log_request(code, size)
