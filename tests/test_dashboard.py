"""optuna-dashboard pages of a BioTune study, end to end: PostgreSQL, the real dashboard server
(:func:`biotune_optuna.report.dashboard.serve` in a subprocess) and headless Chromium.

The storage URL carries a password (the local test server trusts every connection, so any
password works) and the test checks that it shows up nowhere: not in the rendered pages, the
dashboard's API, the study's attributes or the server's output.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from PIL import Image
from sqlalchemy.engine import make_url

from biotune_optuna.report.dashboard import GRAPH_IDS, SUMMARY_END, is_loopback, publish, serve
from biotune_optuna.report.plots import TITLES
from biotune_optuna.config import ConfigError
from biotune_optuna.study.studies import create_or_resume, make_sampler
from biotune_optuna.study.storage import open_storage
from test_plots import fake_objective, run_search, small_config

SECRET = "some-secret"
PLOT_PREFIX = "dashboard:plot_data:"


def plot_ids(study: optuna.Study) -> dict[str, int]:
    """Graph id → number of stored chunks, as optuna-dashboard stores them."""
    ids: dict[str, int] = {}
    for key in study._storage.get_study_system_attrs(study._study_id):
        if key.startswith(PLOT_PREFIX):
            graph = key[len(PLOT_PREFIX):].rsplit(":", 1)[0]
            ids[graph] = ids.get(graph, 0) + 1
    return ids


def stored_figures(study: optuna.Study) -> dict[str, dict]:
    """The plotly figures optuna-dashboard will draw, by graph id."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: json.loads(v) for k, v in get_plotly_graph_objects(attrs).items()}


def test_publishing_again_replaces_the_plots_and_keeps_what_a_user_wrote_in_the_note():
    config = small_config()  # P = 5
    study = optuna.create_study(direction="maximize")
    study.sampler = make_sampler(config, poll_interval=0.005)
    study.optimize(fake_objective(config), n_trials=3)
    assert publish(study, config)  # before the initial population closes: empty plots, a summary
    assert "has not closed yet" in optuna_dashboard.get_note(study)
    assert not publish(study, config)  # nothing new to show: nothing written
    study.optimize(fake_objective(config), n_trials=4)  # generation 0 closes, 2 trials of generation 1 finish
    assert publish(study, config)
    scatter = stored_figures(study)[GRAPH_IDS["accuracy_vs_params"]]["data"][0]
    assert len(scatter["x"]) == config.population_size  # closed generations only: the same for every worker

    run_search(study, config)
    assert publish(study, config)
    first = plot_ids(study)
    assert set(first) == set(GRAPH_IDS.values())
    assert len(stored_figures(study)[GRAPH_IDS["accuracy_vs_params"]]["data"][0]["x"]) == config.n_evaluations
    note = optuna_dashboard.get_note(study)
    optuna_dashboard.save_note(study, note + "\nMy own remark.\n")
    assert publish(study, config, force=True)
    assert plot_ids(study) == first  # same graphs, same chunks: replaced, not added
    note = optuna_dashboard.get_note(study)
    assert note.count("## BioTune search") == 1 and note.count(SUMMARY_END) == 1
    assert note.rstrip().endswith("My own remark.")
    assert "Generations closed | 3 of 3 (search finished)" in note and "Best validation accuracy" in note
    assert study.metric_names == ["validation macro accuracy"]
    ver = study._storage.get_study_system_attrs(study._study_id)["dashboard:note_ver"]
    assert publish(study, config, force=True)  # nothing changed: the note is not rewritten
    assert study._storage.get_study_system_attrs(study._study_id)["dashboard:note_ver"] == ver


def test_serve_refuses_a_non_loopback_host_because_the_dashboard_has_no_authentication(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match="no authentication"):
        serve(f"sqlite:///{tmp_path / 'none.db'}", host="0.0.0.0")
    with pytest.raises(ConfigError, match="artifact directory"):
        serve(f"sqlite:///{tmp_path / 'none.db'}", artifact_dir=str(tmp_path / "missing"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_storage(url, create_tables=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            serve(url, port=taken.getsockname()[1])


# ------------------------------------------------------------------ end to end

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not path:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium (scripts/setup.sh)")
    return path


def chromium(profile: Path, *args: str) -> subprocess.Popen:
    command = [
        browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_for_server(base: str, server: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the dashboard exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"the dashboard did not answer in {timeout:.0f} s:\n{log.read_text()}")


def visible_text(dom: str) -> str:
    """The text of a dumped DOM, tags and scripts removed, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # the dashboard's own Ctrl-C
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.postgres
def test_dashboard_in_chromium_lists_the_trials_and_shows_the_biotune_plots_and_note_without_the_password(
    pg_url, tmp_path
):
    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    assert SECRET in url
    config = small_config()
    study, _ = create_or_resume(open_storage(url, create_tables=True), "dash-e2e", config)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    port, log = free_port(), tmp_path / "dashboard.log"
    base = f"http://127.0.0.1:{port}"
    code = (
        "import os, sys; from biotune_optuna.report.dashboard import serve; "
        "serve(os.environ['BIOTUNE_TEST_STORAGE'], port=int(sys.argv[1]), artifact_dir=sys.argv[2])"
    )
    # The URL goes through the environment, not argv (argv is visible to every user in ps).
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", code, str(port), str(artifacts)],
            env={**os.environ, "BIOTUNE_TEST_STORAGE": url}, stdout=out, stderr=subprocess.STDOUT,
        )
    profiles, runs = tmp_path / "chromium", {}
    stack = contextlib.ExitStack()
    try:
        run_search(study, config)  # while the server starts
        assert publish(study, config)
        assert publish(study, config, force=True)  # again: the same pages, no duplicates
        n_trials = len(study.trials)
        wait_for_server(base, server, log)

        # The dashboard's API sees one study with every trial and exactly our four plots.
        summaries = get(f"{base}/api/studies")
        (summary,) = json.loads(summaries)["study_summaries"]
        study_id = summary["study_id"]
        detail_json = get(f"{base}/api/studies/{study_id}?after=0")
        detail = json.loads(detail_json)
        assert detail["name"] == "dash-e2e" and len(detail["trials"]) == n_trials == config.n_evaluations
        assert sorted(g["id"] for g in detail["plotly_graph_objects"]) == sorted(GRAPH_IDS.values())
        assert detail["objective_names"] == ["validation macro accuracy"]

        note = detail["note"]["body"]
        assert note.startswith("## BioTune search · dash-e2e") and "Best validation accuracy" in note

        # A client that connects and sends nothing (browsers open spare connections) must not
        # stall the others, as it does with optuna_dashboard.run_server's one-at-a-time server.
        idle = socket.create_connection(("127.0.0.1", port))
        stack.callback(idle.close)
        assert json.loads(get(f"{base}/api/studies"))["study_summaries"]

        # The rendered pages, in headless Chromium: the study page (DOM and a screenshot tall
        # enough to show the BioTune plots under the built-in ones) and the trial list.
        page = f"{base}/dashboard/studies/{study_id}"
        shot = tmp_path / "dashboard-study.png"
        runs["study"] = chromium(profiles / "a", "--window-size=1400,2300", f"--screenshot={shot}", "--dump-dom", page)
        runs["trials"] = chromium(profiles / "b", "--window-size=1400,2300", "--dump-dom", f"{page}/trials")
        dom = {}
        for name, run in runs.items():
            dom[name], _ = run.communicate(timeout=120)
            (tmp_path / f"{name}.html").write_text(dom[name])
            assert run.returncode == 0, f"chromium ({name}) exited with {run.returncode}"
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
        stop(server)
        stack.close()
    artifacts_dir = os.environ.get("BIOTUNE_TEST_ARTIFACTS")
    if artifacts_dir:
        Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts_dir) / shot.name)

    study_dom, trials_dom = visible_text(dom["study"]), visible_text(dom["trials"])
    assert "dash-e2e" in study_dom
    for name in GRAPH_IDS:  # our figures were drawn by plotly.js (their titles are SVG text)
        assert TITLES[name] in study_dom, name
    assert "lr / base lr (log10)" in study_dom and "gen 0 · elite 1" in study_dom
    assert f"{n_trials} Trials" in trials_dom
    assert all(f"Trial {k} Complete" in trials_dom for k in range(n_trials))
    with Image.open(shot) as image:
        assert image.size == (1400, 2300)
        assert sum(1 for n in image.convert("L").histogram() if n) > 50  # a rendered page, not blank

    # The password is nowhere: pages, API, study and trial attributes, server output.
    output = log.read_text()
    assert f"listening on http://127.0.0.1:{port}/" in output
    attrs = json.dumps(
        [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
        + [[t.user_attrs, t.system_attrs] for t in study.trials],
        default=str,
    )
    for where, text in {**dom, "api": summaries + detail_json, "attributes": attrs, "server output": output}.items():
        assert SECRET not in text, f"the password appears in the {where}"
