"""``biotune-optuna run``: the whole job on one machine — create or resume the study, search
with local worker threads, then the final report.

One ``run`` per output folder at a time: a second one started while the first is alive refuses
in one line (it would write the same report files). Trials of ``run`` carry heartbeats like a
worker's, so ``run`` and ``worker`` processes can share a study (PostgreSQL, ``--storage``):
only trials whose heartbeat is older than the grace period are failed as stale, and, on the
embedded SQLite default, trials of a ``run`` of this host that no longer exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from biotune_optuna.cli.common import console, default_study_name, feature_cache_bytes, settings
from biotune_optuna.cli.loading import config_from_args
from biotune_optuna.cli.report import tune_spec, write_full_report
from biotune_optuna.config import ConfigError, StudyConfig
from biotune_optuna.finetune.data import Splits
from biotune_optuna.objective import Objective
from biotune_optuna.search import accuracy_of, decode
from biotune_optuna.study import _optuna, attrs
from biotune_optuna.study.pacing import StopWhenFinished
from biotune_optuna.study.sampler import slot_record
from biotune_optuna.study.storage import default_storage, open_storage, redact
from biotune_optuna.study.studies import create_or_resume, fail_trials_of_gone_processes, make_pruner, make_sampler, search_state
from biotune_optuna.worker import GRACE_PERIOD, HEARTBEAT_INTERVAL, describe_pruned, publish_quietly, reaped_while_running


def _trial_line(trial: optuna.trial.FrozenTrial, config: StudyConfig) -> str | None:
    """The progress line of a finished trial (None for a failed one)."""
    rec, user = slot_record(trial), trial.user_attrs
    where = rec.describe() if rec is not None else "not a slot"
    head = f"trial {trial.number:>3} · {where} · {len(user.get(attrs.TRAINABLE_BLOCKS, []))}/{len(config.blocks)} blocks · "
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return f"{head}val {trial.value:.4f}"
    if trial.state == optuna.trial.TrialState.PRUNED and attrs.PRUNED_VALUE in user:
        return f"{head}[yellow]{describe_pruned(user)}[/]"
    return None


def search(study: optuna.Study, config: StudyConfig, splits: Splits, device: str, workers: int, cache_bytes: int) -> None:
    """Run the search with ``workers`` local threads and a progress bar; stop after 3 failures in a row.

    Raises:
        ConfigError: when the search stopped on failures (the study resumes on the next run).
    """
    sampler = make_sampler(config)
    study.sampler = sampler
    study.pruner = make_pruner(config)
    if sampler.search_state(study).finished:
        console.print("the search is already finished")
        return
    failures: list[int] = []
    columns = (TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    # In a file or pipe a progress bar is only its last frame, squeezed to 80 columns: trial lines say it all.
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        done, total = sampler.progress(study)  # in trials' worth of work: slots, or slot × seed units
        task = progress.add_task("", total=total, completed=done)

        def on_epoch(number: int, seed_index: int, epoch: int, acc: float) -> None:
            progress.update(task, description=f"trial {number} · seed {seed_index + 1}/{len(config.seeds)} · epoch {epoch} · val {acc:.4f}")

        published = [len(sampler.search_state(study).populations)]

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            state = sampler.search_state(study)
            progress.update(task, completed=sampler.progress(study)[0])
            if len(state.populations) > published[0]:  # a generation closed: refresh the dashboard pages
                published[0] = len(state.populations)
                publish_quietly(study, config)
            line = _trial_line(trial, config)
            if line is not None:
                failures.clear()
                progress.console.print(line)
            elif trial.state == optuna.trial.TrialState.FAIL:
                failures.append(trial.number)
                if len(failures) >= 3:
                    progress.console.print("[red]3 trials failed in a row: stopping the search (see the errors above)")
                    study.stop()

        objective = Objective(config, splits, device, on_epoch, feature_cache_bytes=cache_bytes)
        # StopWhenFinished: no ask() once the search is finished or while no slot is free.
        while True:
            try:
                study.optimize(objective, n_jobs=workers, callbacks=[on_trial, StopWhenFinished(sampler)], catch=(Exception,))
                break
            except KeyboardInterrupt:
                _optuna.fail_own_running_trials(study)  # one stopped before its objective started
                raise
            except Exception as e:  # noqa: BLE001 - a reaped trial is told in one line; anything else re-raised
                if not reaped_while_running(e):
                    raise
                progress.console.print(
                    f"[yellow]a trial was failed by another process while it ran (no heartbeat for {GRACE_PERIOD} s): "
                    "its result is lost, its slot will be redone"
                )
    if failures:
        raise ConfigError(f"the search stopped after trials {failures} failed; fix the cause and run the same command to resume")


@contextlib.contextmanager
def one_run_per_folder(out: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (file ``.biotune-run.lock``, released when the process
    ends, however it ends) while ``run`` uses the folder.

    Raises:
        ConfigError: another live process holds it (its pid is named).
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".biotune-run.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ConfigError(
                f"study {name!r} is already being run in {out} (process {holder}); wait for it to finish or stop it, "
                "then run the same command again"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def run(args: argparse.Namespace) -> int:
    """``run``: create or resume, search, report (one ``run`` per output folder at a time)."""
    s = settings(args)
    cache_bytes = feature_cache_bytes(s["feature_cache_mb"])  # checked before anything is stored
    spec = tune_spec(args)
    # A given --storage is opened (reachable, credentials) before the dataset loads; the
    # default SQLite file only once the options are known to be good (no stray study.db).
    heartbeats = dict(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD, retry_within=GRACE_PERIOD)
    given = s.get("storage")
    early = open_storage(given, create_tables=True, **heartbeats) if given and not given.startswith("sqlite") else None
    config, splits = config_from_args(s)
    name = s.get("study_name") or default_study_name(s)
    out = Path(s.get("out") or Path("biotune-runs") / name)
    with one_run_per_folder(out, name):
        url = s.get("storage") or default_storage(out)
        storage = early or open_storage(url, create_tables=True, **heartbeats)
        study, resumed = create_or_resume(storage, name, config)
        console.print(f"study [bold]{name}[/] in {redact(url)} ({'resumed' if resumed else 'created'}); at most {config.n_evaluations} evaluations × {len(config.seeds)} seed(s)")
        if resumed and not s.get("storage"):  # this host alone uses the embedded default
            fail_trials_of_gone_processes(study)
        _optuna.reap_on_heartbeat(study)
        search(study, config, splits, s["device"], s["workers"], cache_bytes)
        best_member = search_state(study, config).best
        best = decode(best_member.genome, config.blocks, config.recipe.base_lr)
        console.print(f"best genome: val {accuracy_of(best_member.fitness):.4f}; fine-tunes {', '.join(f'{b} (lr {lr:.2g})' for b, lr in best.lr_by_block.items())}")
        if not args.no_report:
            write_full_report(study, config, splits, s["device"], out, tuning=spec, workers=s["workers"])
    return 0
