"""What naming the file that differs costs for a large dataset (issue 11, item 4).

A study keeps a :class:`~biotune_optuna.finetune.fingerprint.FileSketch` of its files above
``MAX_LISTED_FILES``. For N files (default 60,000, named like a class-folder tree) this prints:

* the size of the study attribute: the sketch, against the plain list (name -> sha256) that
  earlier releases stored up to 200 files and against that list zlib-compressed;
* the time to build the sketch (``create``) and to build, subtract and peel it with K changed
  files (a worker that differs), against a baseline measured in the same run: reading and
  sha256-hashing N files of MNIST size (784 bytes) from a temporary folder, which every load
  of such a folder does anyway;
* whether the worker's message names exactly the changed files;
* the sketch's capacity: in ``--trials`` random trials per count, how often every one of 10 … 50
  changed files (of 2,000) is named.

    .venv/bin/python bench/dataset_fingerprint.py [--files 60000] [--changed 3] [--repeats 3] [--trials 100]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biotune_optuna.finetune.fingerprint import FileSketch, describe_difference, study_record  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn``, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def write_folder(root: Path, n: int) -> list[Path]:
    """``n`` files of 784 random bytes in ten class folders."""
    paths = []
    for i in range(n):
        p = root / f"c{i % 10}" / f"{i:05d}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(784))
        paths.append(p)
    return paths


def capacity(trials: int) -> dict[int, float]:
    """Changed files -> fraction of ``trials`` in which the sketch named all of them."""
    rng = random.Random(0)
    files = {f"train/c{i % 10}/{i:05d}.png": hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)}
    rates = {}
    for d in (10, 20, 30, 40, 50):
        named = 0
        for t in range(trials):
            old = {n: files[n] for n in rng.sample(sorted(files), d)}
            new = {n: hashlib.sha256(f"{n} {t}".encode()).hexdigest() for n in old}
            plus, minus, complete = FileSketch.of(new).minus(FileSketch.of(old)).peel()
            named += complete and set(plus) == set(minus) == set(old)
        rates[d] = named / trials
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=60_000)
    p.add_argument("--changed", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=100)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_folder(Path(tmp), args.files)
        base_s, files = timed(lambda: {f"train/{q.parent.name}/{q.name}": hashlib.sha256(q.read_bytes()).hexdigest() for q in paths}, args.repeats)

    listing = json.dumps(files)
    packed = base64.b64encode(zlib.compress("\n".join(f"{n}\t{s}" for n, s in sorted(files.items())).encode(), 9))
    build_s, (_, sketch) = timed(lambda: study_record(files), args.repeats)
    here = dict(files)
    changed = sorted(here)[:: max(1, len(here) // max(args.changed, 1))][: args.changed]
    for name in changed:
        here[name] = hashlib.sha256(name.encode() + b" one pixel changed").hexdigest()
    check_s, said = timed(lambda: describe_difference({}, sketch, here, {}), args.repeats)
    named = sorted(part.removesuffix(" (changed)") for part in said.split(", "))

    print(f"{args.files} files, {args.changed} changed, median of {args.repeats}")
    print("study attribute            bytes   vs sketch")
    for label, size in (("sketch (stored)", len(sketch)), ("plain list (JSON)", len(listing)), ("list, zlib + base64", len(packed))):
        print(f"  {label:<22} {size:>9,}   {size / len(sketch):8.1f}x")
    print("time                          s   vs baseline")
    for label, s in (("baseline: read + sha256", base_s), ("sketch, create side", build_s), ("sketch, worker check", check_s)):
        print(f"  {label:<24} {s:7.3f}   {s / base_s:8.2f}x")
    print(f"worker names exactly the changed files: {named == sorted(changed)} ({said[:120]})")
    rates = capacity(args.trials)
    print(f"all changed files named, of {args.trials} trials: " + ", ".join(f"{d} changed: {r:.0%}" for d, r in rates.items()))


if __name__ == "__main__":
    main()
