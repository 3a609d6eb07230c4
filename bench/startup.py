"""Start-up of ``biotune-optuna --help`` (and other light commands) against ``optuna --help``.

Each command runs as its console script does (``python -c "from PKG.cli import main; main()"``,
the same interpreter, this checkout first on ``sys.path``), with its output thrown away. Runs are
interleaved, in alternating order, after one untimed warm-up of each (to fill the OS file cache);
each child's wall time is measured around ``Popen``/``wait4`` and its peak resident memory comes
from ``wait4``'s rusage (``ru_maxrss``). The report gives medians and the ratio to ``optuna
--help`` measured in the same run; the load average is printed too, since other work on the
machine slows both sides.

Target (issue 11, item 9): ``--help`` and argument errors within 1.5× of ``optuna --help``.

    .venv/bin/python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: label → (package whose ``cli.main`` is the console script, its arguments)
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "optuna --help": ("optuna", ["--help"]),
    "biotune-optuna --help": ("biotune_optuna", ["--help"]),
    "biotune-optuna run --help": ("biotune_optuna", ["run", "--help"]),
    "biotune-optuna run --population x": ("biotune_optuna", ["run", "--population", "x"]),
}
BASELINE = "optuna --help"


def measure(package: str, args: list[str]) -> tuple[float, float]:
    """One run: (wall seconds, peak RSS in MiB) of the console script of ``package``."""
    code = f"import sys; from {package}.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "100"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{package} {' '.join(args)} exited with {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command (odd: a true median)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    for package, argv in COMMANDS.values():  # warm-up: file cache, .pyc files
        measure(package, argv)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    memory: dict[str, list[float]] = {k: [] for k in COMMANDS}
    labels = list(COMMANDS)
    for i in range(args.runs):
        for label in labels if i % 2 == 0 else reversed(labels):
            wall, rss = measure(*COMMANDS[label])
            times[label].append(wall)
            memory[label].append(rss)
    base_t, base_m = statistics.median(times[BASELINE]), statistics.median(memory[BASELINE])
    print(f"{args.runs} interleaved runs each; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"on {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(f"{'command':<38} {'median s':>9} {'min–max s':>13} {'vs optuna':>10} {'peak MiB':>9} {'vs optuna':>10}")
    for label in labels:
        t, m = statistics.median(times[label]), statistics.median(memory[label])
        spread = f"{min(times[label]):.2f}–{max(times[label]):.2f}"
        print(f"{label:<38} {t:>9.2f} {spread:>13} {t / base_t:>9.2f}× {m:>9.0f} {m / base_m:>9.2f}×")
    worst = max(statistics.median(times[k]) / base_t for k in labels if k != BASELINE)
    print(f"slowest light command / optuna --help: {worst:.2f}× (target ≤ 1.5×)")


if __name__ == "__main__":
    main()
