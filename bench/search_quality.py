"""Does a BioTune search find a better fine-tuning configuration than the alternatives?

The decisive experiment of issue 12: R replicates of the whole pipeline (data draw, folds,
sampler seed, BioTune's search, random search and TPE on the same budget, final protocol with
every retraining seed), then BioTune's paired difference to every other method over replicates
(mean ± std, 95 % t-interval, wins), via :mod:`biotune_optuna.report.replicates`.

Profiles (``--set KEY=VALUE`` changes any field; the profile is printed first):

* ``smoke``: digits at 32 px, tiny sizes, 2 replicates; the whole pipeline in a few minutes
  (for CI and for trying it). Not evidence.
* ``cpu``: Fashion-MNIST, 20 labelled training images per class (and 20 per class for
  validation), Lite0 at 64 px, ≤ 15 epochs (patience 3), P=6 E=2 G=3 (30 evaluations, each the
  mean of 3 seeds: one genome's test accuracy moved by 6 points between two seeds in the premise
  check), random search and TPE on the same budget, baselines full fine-tuning and linear
  probing, 3 retraining seeds, 3 replicates: ~50 min a replicate on 2 cores (~2.5 h).
* ``gpu``: the ``cpu`` data with the paper's P=10 E=3, LLRD and L2-SP too, one seed per search
  evaluation (3 would leave room for a single replicate) and 4 worker threads; it times one
  fine-tune first and picks G and the number of replicates to fit ``budget_s`` (~8 minutes),
  counting no speed-up from the threads (the time is an upper bound). Not yet run on a GPU.

The baselines go through the final protocol of ``report.final.final_report`` with its default
tuning (a learning-rate sweep, and each method's own knob, chosen on the validation split).

Everything goes under ``--out DIR`` (default: the current directory) as it happens: the studies
(``studies.db``, SQLite), ``profile.json``, ``replicate-<r>.json`` as soon as each replicate is
done, then ``report.json`` / ``report.md``. Run the same command again after a stop: finished
replicates are read back, searches resume from the database.

    .venv/bin/python bench/search_quality.py --profile smoke --out bench-runs/smoke
    .venv/bin/python bench/search_quality.py --profile cpu --out bench-runs/cpu     # ~2 h, 2 idle cores
    .venv/bin/python bench/search_quality.py --profile gpu --out bench-runs/gpu --device cuda
    .venv/bin/python bench/search_quality.py --premise --profile cpu --out bench-runs/premise
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna

from biotune_optuna.cli.loading import config_from_args
from biotune_optuna.config import ConfigError, n_evaluations
from biotune_optuna.finetune.data import dataset_cache_dir
from biotune_optuna.finetune.training import evaluate, pick_device
from biotune_optuna.objective import train_plan
from biotune_optuna.report.replicates import (
    Request, Runner, plan_replicates, read_json, run_replicates, write_json, write_replicated_report,
)
from biotune_optuna.study.storage import open_storage

_COMMON = dict(
    model="tf_efficientnet_lite0", weights_file=None, data_path=None, folds=2, lr=1e-3, frozen_bn="eval", mode="batched",
    pruner="none", sampler_seed=0, data_seed=0, samplers="random,tpe", workers=1, feature_cache_mb=2048,
    # One worker evaluates BioTune's search: whole-slot trials (as the first cpu runs were made, so
    # they resume) give the same genomes and fitness as one trial per seed.
    work_unit="trial",
)
PROFILES: dict[str, dict] = {
    "smoke": dict(
        _COMMON, dataset="digits", image_size=32, train_size=100, val_size=60, test_size=200, population=3, elites=1,
        generations=1, seeds="684", final_seeds="684,559", max_epochs=2, patience=1, batch_size=32,
        baselines="full,linear", replicates=2,
    ),
    "cpu": dict(
        _COMMON, dataset="fashion-mnist", image_size=64, train_size=200, val_size=200, test_size=2000, population=6,
        elites=2, generations=3, seeds="684,559,629", final_seeds="684,559,629", max_epochs=15, patience=3, batch_size=32,
        baselines="full,linear", replicates=3,
    ),
    "gpu": dict(
        _COMMON, dataset="fashion-mnist", image_size=64, train_size=200, val_size=200, test_size=2000, population=10,
        elites=3, generations=3, seeds="684", final_seeds="684,559,629", max_epochs=15, patience=3,
        batch_size=32, baselines="full,linear,llrd,l2sp", replicates=5, budget_s=480, workers=4, work_unit="seed",
    ),
}


def profile_settings(name: str, overrides: list[str]) -> dict:
    """The profile's settings with ``KEY=VALUE`` overrides, typed like the profile's value.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    s = dict(PROFILES[name], profile=name)
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in s or key == "profile":
            raise ConfigError(f"--set {item!r}: unknown key; keys: {', '.join(sorted(s))}")
        kind = type(s[key]) if s[key] is not None else str
        try:
            s[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--set {item!r}: {key} must be a {kind.__name__}") from None
    return s


def machine_state() -> str:
    """Load average and the busiest other processes: what else was running."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    ps = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, check=False).stdout
    mine = str(os.getpid())
    rows = [line.split(None, 3) for line in ps.splitlines()[1:]]
    others = [f"{cpu}% {cmd[:100]}" for pid, ppid, cpu, cmd in (r for r in rows if len(r) == 4) if mine not in (pid, ppid)][:5]
    return f"load average (1/5/15 min) {load} on {os.cpu_count()} CPUs; busiest processes: " + "; ".join(others)


def _settings_for_config(s: dict, device: str) -> dict:
    """What ``cli.loading.config_from_args`` reads, from profile settings."""
    return {**s, "device": device, "no_amp": False, "no_channels_last": False,
            "cache_dir": None, "no_cache": False}


def size_for_gpu(s: dict, device: str) -> dict:
    """Time one fine-tune (full fine-tuning, one seed, training split), then choose the largest
    G ≤ 5 that fits ``replicates`` replicates in ``budget_s``, else G = 1 with as many replicates
    as fit (at least 2). Returns the sized settings."""
    config, splits = config_from_args(_settings_for_config(s, device))
    lrs = {b: config.recipe.base_lr for b in config.blocks}
    train_plan(config, lrs, splits.train, splits.val, config.seeds[0], device)  # warm-up (CUDA init, kernels)
    start = time.perf_counter()
    train_plan(config, lrs, splits.train, splits.val, config.seeds[0], device)
    one = time.perf_counter() - start
    searches = 1 + len([k for k in s["samplers"].split(",") if k])
    finals = (searches + len([k for k in s["baselines"].split(",") if k])) * len(s["final_seeds"].split(","))

    def per_replicate(g: int) -> float:
        return one * (searches * n_evaluations(s["population"], s["elites"], g) * len(s["seeds"].split(",")) + finals)

    fits = [g for g in range(5, 0, -1) if s["replicates"] * per_replicate(g) <= s["budget_s"]]
    g = fits[0] if fits else 1
    r = s["replicates"] if fits else max(2, int(s["budget_s"] // per_replicate(1)))
    over = "" if r * per_replicate(g) <= s["budget_s"] else f", OVER the {s['budget_s']} s budget (2 replicates at least)"
    print(f"one fine-tune takes {one:.1f} s: G={g}, {r} replicates, at most {r * per_replicate(g) / 60:.1f} min{over}", flush=True)
    return {**s, "generations": g, "replicates": r, "one_fine_tune_s": round(one, 2)}


def settings_in(out: Path, s: dict, device: str) -> dict:
    """The settings of the run in ``out``: those of an earlier run with the same request (a
    resumed gpu run keeps its sizing), else ``s`` (sized, for the gpu profile), stored first.

    Raises:
        ConfigError: if ``out`` holds a run with other settings.
    """
    stored = read_json(out / "profile.json")
    if stored is not None:
        if stored.get("requested") != s:
            raise ConfigError(f"{out} holds a run with other settings (profile.json); use another --out or the same options")
        return stored["settings"]
    sized = size_for_gpu(s, device) if s["profile"] == "gpu" else s
    write_json(out / "profile.json", {"requested": s, "settings": sized})
    return sized


def run_profile(s: dict, out: Path, device: str) -> str:
    """Every replicate (resumed), then the report; returns its Markdown."""
    config, splits = config_from_args(_settings_for_config(s, device))
    storage = open_storage(f"sqlite:///{out / 'studies.db'}", create_tables=True)
    name = f"search-quality-{s['profile']}"
    plans = plan_replicates(name, config, s["replicates"], s["data_seed"])
    runner = Runner(storage, device, s["workers"], s["feature_cache_mb"] * 2**20, dataset_cache_dir(), exclusive=True,
                    log=lambda line: print(line, flush=True))
    samplers = tuple(k for k in s["samplers"].split(",") if k)
    request = Request(samplers, config.baselines, tuple(int(x) for x in s["final_seeds"].split(",")))
    records = run_replicates(runner, name, config, splits, plans, request, out)
    title = f"Search quality ({s['profile']} profile): {config.model} on {config.dataset.name}"
    _, _, text = write_replicated_report(records, out, title, {"profile": s})
    return text


def premise(s: dict, out: Path, device: str) -> None:
    """Do frozen-block choices matter here? Retrain the first-k-frozen genomes (all other blocks at
    ``lr``) with 2 seeds on the full training split and print test accuracy and its spread."""
    config, splits = config_from_args(_settings_for_config(s, device))
    n = len(config.blocks)
    ks = sorted({0, n // 4, n // 2, 3 * n // 4, n - 2, n - 1})
    dev, rows = pick_device(device), []
    for k in ks:
        lrs = {b: config.recipe.base_lr for b in config.blocks[k:]}
        accs = []
        for seed in [int(x) for x in s["final_seeds"].split(",")][:2]:
            backbone, result = train_plan(config, lrs, splits.train, splits.val, seed, device)
            accs.append(evaluate(backbone.model, splits.test, backbone, dev, config.recipe.eval_batch_size, config.recipe.amp))
            print(f"first {k} of {n} blocks frozen · seed {seed} · best epoch {result.best_epoch} · "
                  f"{result.seconds:.0f} s · test {accs[-1]:.4f}", flush=True)
        rows.append({"frozen_first": k, "trainable": list(config.blocks[k:]), "test_accuracies": accs})
    means = [statistics.fmean(r["test_accuracies"]) for r in rows]
    spread = max(means) - min(means)
    write_json(out / "premise.json", {"profile": s, "rows": rows, "spread": spread})
    print("\n| first blocks frozen | test macro acc. (%), mean of 2 seeds |\n| --- | --- |")
    for r, m in zip(rows, means):
        print(f"| {r['frozen_first']} of {n} | {100 * m:.2f} |")
    print(f"\nspread over frozen-block choices: {100 * spread:.2f} points "
          f"({'≥' if spread >= 0.02 else '<'} 2: {'the regime fits' if spread >= 0.02 else 'use fewer labels'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    ap.add_argument("--out", default=".", help="folder for the studies, raw JSON results and the report")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a profile field")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--premise", action="store_true", help="only check that frozen-block choices spread test accuracy")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        s = profile_settings(args.profile, args.set)
        print(f"machine at start: {machine_state()}", flush=True)
        if args.premise:
            premise(s, out, args.device)
        else:
            s = settings_in(out, s, args.device)
            print(f"profile {args.profile}: {s}", flush=True)
            start = time.perf_counter()
            print("\n" + run_profile(s, out, args.device))
            print(f"{time.perf_counter() - start:.0f} s in this run; raw results in {out}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"machine at end: {machine_state()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
