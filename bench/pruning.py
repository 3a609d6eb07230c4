"""What a pruner saves, and what it costs in final test accuracy: the quick preset over 3 seeds.

For each sampler seed, the same search runs twice through the real command
(``biotune-optuna run --preset quick --sampler-seed S``): without a pruner (the paper's
behaviour) and with ``--pruner median`` (or the one given). The final report retrains the best
genome on the full training split and scores the test split (no baselines). Printed per seed and
on average: fine-tuning epochs trained during the search, trials pruned, search wall time, and
the best genome's test accuracy.

    .venv/bin/python bench/pruning.py                  # quick preset, seeds 0 1 2 (~1 h on 2 CPU cores)
    .venv/bin/python bench/pruning.py --pruner successive-halving --seeds 0 1 2
    .venv/bin/python bench/pruning.py -- --max-epochs 4 --patience 2   # options after -- go to `run`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

EVALUATED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def search(pruner: str, seed: int, extra: list[str], root: Path) -> dict:
    """Run one quick-preset search and its BioTune-only report; return its figures."""
    name = f"quick-{pruner}-{seed}"
    out = root / name
    cmd = [sys.executable, "-m", "biotune_optuna", "run", "--preset", "quick", "--pruner", pruner,
           "--sampler-seed", str(seed), "--baselines=", "--study-name", name, "--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    trials = [t for t in study.get_trials(deepcopy=False, states=EVALUATED) if "fold" in t.user_attrs]
    report = json.loads((out / "report.json").read_text())
    biotune = next(m for m in report["methods"] if m["method"] == "BioTune")
    return {
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "trials": len(trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "search_s": biotune["search_seconds"],
        "total_s": seconds,
        "test": biotune["test_accuracy_mean"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pruner", default="median", choices=("median", "successive-halving"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds (one search each, with and without the pruner)")
    ap.add_argument("extra", nargs="*", help="options passed on to `biotune-optuna run` (after --)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        for seed in args.seeds:
            for pruner in ("none", args.pruner):
                r = search(pruner, seed, args.extra, Path(tmp))
                rows.append((seed, pruner, r))
                print(f"seed {seed}  {pruner:<18} {r['trials']:>3} evaluations, {r['pruned']:>2} pruned, {r['epochs']:>4} epochs trained, "
                      f"search {r['search_s']:6.0f} s, best genome's test accuracy {r['test']:.4f}", flush=True)
    base = {s: r for s, p, r in rows if p == "none"}
    pruned = {s: r for s, p, r in rows if p != "none"}
    saved = [1 - pruned[s]["epochs"] / base[s]["epochs"] for s in args.seeds]
    time_ratio = [pruned[s]["search_s"] / base[s]["search_s"] for s in args.seeds]
    delta = [pruned[s]["test"] - base[s]["test"] for s in args.seeds]
    sd = statistics.stdev if len(args.seeds) > 1 else (lambda _: 0.0)
    print(f"\n{args.pruner} pruner against none, {len(args.seeds)} seeds (mean ± std over seeds):")
    print(f"  trials pruned:            {statistics.fmean(pruned[s]['pruned'] for s in args.seeds):.1f} of {pruned[args.seeds[0]]['trials']}")
    print(f"  fine-tuning epochs saved: {statistics.fmean(saved):.1%} ± {sd(saved):.1%}")
    print(f"  search time:              {statistics.fmean(time_ratio):.2f}× ± {sd(time_ratio):.2f} of the unpruned search")
    print(f"  test accuracy change:     {statistics.fmean(delta) * 100:+.2f} ± {sd(delta) * 100:.2f} points "
          f"({statistics.fmean(base[s]['test'] for s in args.seeds):.4f} → {statistics.fmean(pruned[s]['test'] for s in args.seeds):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
