"""Does the quick preset keep its promise (issue 12, item 6)?

Runs ``biotune-optuna run --preset quick`` — the README's first command — with sampler seeds
0, 1, 2, each in its own folder under ``--out``, and reads each ``report.json``: BioTune's test
macro accuracy must be ≥ 95 % on MNIST and ≥ linear probing's (both tuned on validation, same
seeds, same final protocol). Prints one line per seed and a verdict; resumable (a finished
seed's report is read back, an interrupted one resumes from its study).

    .venv/bin/python bench/quick_preset.py --out bench-runs/quick     # ~10 min a seed on 2 cores
    .venv/bin/python bench/quick_preset.py --out /tmp/q --extra "--dataset digits --image-size 16 --max-epochs 1"  # a smoke run

Any ``--extra`` options are passed to every ``run`` (e.g. to try another preset setting); the
threshold is ``--min-accuracy`` (default 0.95).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def run_seed(out: Path, seed: int, extra: list[str]) -> dict:
    """The report of the quick preset with ``seed`` (run, or resumed, in ``out / f"seed{seed}"``)."""
    folder = out / f"seed{seed}"
    report = folder / "report.json"
    if not report.exists():
        cmd = [sys.executable, "-m", "biotune_optuna", "run", "--preset", "quick", "--sampler-seed", str(seed),
               "--study-name", f"quick-seed{seed}", "--out", str(folder), *extra]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(report.read_text())


def verdict(report: dict, min_accuracy: float) -> tuple[float, float | None, bool]:
    """(BioTune's mean test accuracy, linear probing's or None, whether the promise holds)."""
    rows = {m["method"]: m["test_accuracy_mean"] for m in report["methods"]}
    biotune, linear = rows["BioTune"], rows.get("Linear probing")
    return biotune, linear, biotune >= min_accuracy and (linear is None or biotune >= linear)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-runs/quick", help="one folder per sampler seed goes here")
    ap.add_argument("--seeds", default="0,1,2", help="sampler seeds")
    ap.add_argument("--extra", default="", help="more `run` options, quoted")
    ap.add_argument("--min-accuracy", type=float, default=0.95)
    args = ap.parse_args()
    out, extra = Path(args.out), shlex.split(args.extra)
    held = []
    for seed in (int(s) for s in args.seeds.split(",")):
        biotune, linear, ok = verdict(run_seed(out, seed, extra), args.min_accuracy)
        held.append(ok)
        linear_text = "n/a" if linear is None else f"{100 * linear:.2f}"
        print(f"sampler_seed={seed} biotune={100 * biotune:.2f} linear_probing={linear_text} holds={ok}", flush=True)
    print(f"promise (BioTune >= {100 * args.min_accuracy:.0f} % and >= linear probing): {sum(held)} of {len(held)} seeds hold")


if __name__ == "__main__":
    main()
