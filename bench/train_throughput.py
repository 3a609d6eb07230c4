"""Training speed: images/s of our loop (``training.fine_tune``) against a bare PyTorch loop.

Both train the same model (``backbones.load_backbone``, same seed) on the same MNIST images,
already in memory as uint8 and normalised the same way (``data.to_input``), with Adam and
cross-entropy, the same batch size and ``torch.get_num_threads()``, for one epoch:

* full: every block trained;
* half-frozen: the first half of the blocks frozen (``requires_grad`` False; in the bare loop
  those blocks are put in eval mode, as ours does).

``fine_tune`` also validates after each epoch: it gets a tiny validation set (one stratified
batch of 32) and the time of that validation pass, measured by wrapping ``training.evaluate``,
is subtracted, so the figure compares training steps. Everything else ``fine_tune`` does (param
groups, channels_last, keeping the best epoch's weights) counts as ours. After a full warm-up run
of each, ``--repeats`` runs of each are interleaved in alternating order; the table gives median
(min-max) images/s, the median of the pairs' ratios ours / bare (target >= 0.95), and the median
time between two optimizer steps (one training iteration; a stall within a run does not move
it). Single runs on a shared VM vary by +-15 %: read the ratio with its "ours faster in k of n"
count, the step times and the line on other processes' CPU use. With ``--device cuda`` every
run is made with AMP + channels_last on and off. It also times loading the dataset cold and from
the on-disk cache (``load_dataset(cache_dir=)`` in a temporary folder), for the bench's split
and all of MNIST.

    .venv/bin/python bench/train_throughput.py                  # CPU, about 4 minutes on 2 idle cores
    .venv/bin/python bench/train_throughput.py --device cuda --images 8192 --batch-size 96
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from unittest import mock

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from biotune_optuna.finetune import training
from biotune_optuna.finetune.backbones import load_backbone
from biotune_optuna.config import DatasetSpec
from biotune_optuna.finetune.data import ImageSet, load_dataset, to_input
from biotune_optuna.config import Recipe
from biotune_optuna.finetune.training import evaluate, fine_tune, seed_everything

SEED = 684
LR = 1e-3
STEP_ENDS: list[float] = []  # perf_counter() after every optimizer step (global optimizer hook)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(model_name: str, n_classes: int):
    seed_everything(SEED)
    return load_backbone(model_name, n_classes)


def median_step() -> float:
    """Median seconds between consecutive optimizer steps of the run just made: one whole
    training iteration (batch, forward, backward, step), robust to a stall within the run."""
    gaps = [b - a for a, b in zip(STEP_ENDS, STEP_ENDS[1:])]
    STEP_ENDS.clear()
    return statistics.median(gaps) if gaps else float("nan")


def trained_blocks(blocks: tuple[str, ...], setting: str) -> list[str]:
    return list(blocks) if setting == "full" else list(blocks[len(blocks) // 2 :])


def ours(model_name, n_classes, train: ImageSet, val: ImageSet, setting, recipe: Recipe, device) -> tuple[float, float]:
    """(images/s, median step s) of one epoch of fine_tune, the time of its own validation pass
    subtracted (measured by wrapping ``training.evaluate``, which fine_tune calls after each epoch)."""
    backbone = build(model_name, n_classes)
    lr_by_block = {b: LR for b in trained_blocks(backbone.blocks, setting)}
    backbone.model.to(device)  # as the bare loop does before its clock starts
    evals = []

    def timed_evaluate(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            sync(device)
            evals.append(time.perf_counter() - start)

    with mock.patch.object(training, "evaluate", timed_evaluate):
        sync(device)
        STEP_ENDS.clear()
        start = time.perf_counter()
        fine_tune(backbone, lr_by_block, train, val, recipe, seed=SEED, device=device)
        sync(device)
        seconds = time.perf_counter() - start
    if not evals:
        raise SystemExit("fine_tune no longer calls training.evaluate: update how this bench subtracts validation")
    return len(train) / (seconds - sum(evals)), median_step()


def bare(model_name, n_classes, train: ImageSet, setting, recipe: Recipe, device) -> tuple[float, float]:
    """(images/s, median step s) of one epoch of a plain PyTorch loop (uint8 data kept on the device)."""
    backbone = build(model_name, n_classes)
    model = backbone.model.to(device)
    trained = set(trained_blocks(backbone.blocks, setting))
    for block, params in backbone.block_parameters().items():
        for p in params:
            p.requires_grad_(block in trained)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, labels = train.images.to(device), train.labels.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    use_amp = recipe.amp and device.type == "cuda"
    generator = torch.Generator().manual_seed(SEED)
    sync(device)
    STEP_ENDS.clear()
    start = time.perf_counter()
    model.train()
    for name, module in model.named_modules():
        if backbone.block_of(name) not in trained and backbone.block_of(name) is not None:
            module.eval()
    order = torch.randperm(len(train), generator=generator).to(device)
    for i in range(0, len(order), recipe.batch_size):
        idx = order[i : i + recipe.batch_size]
        x = to_input(images[idx], backbone.mean, backbone.std)
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model(x).float(), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return len(train) / (time.perf_counter() - start), median_step()


def cpu_times() -> tuple[float, float] | None:
    """(seconds all CPUs were busy, seconds this process used), from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def load_times(spec: DatasetSpec, repeats: int) -> tuple[float, float, float]:
    """(cold s, first load that writes the cache s, cache hit s), medians, in a fresh cache folder."""
    cold = statistics.median(timed(load_dataset, spec)[0] for _ in range(repeats))
    with tempfile.TemporaryDirectory(prefix="biotune-bench-cache-") as cache:
        write = timed(load_dataset, spec, cache)[0]
        hit = statistics.median(timed(load_dataset, spec, cache)[0] for _ in range(repeats))
    return cold, write, hit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=512, help="training images per epoch (MNIST train_size)")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs of each loop, interleaved; medians are reported")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    if args.images < 2 * args.batch_size or args.repeats < 1:
        ap.error("--images must be >= 2 × --batch-size and --repeats >= 1")
    device = torch.device(args.device)
    n_val = 32  # tiny validation set: one stratified batch, >= 1 image per class
    spec = DatasetSpec("mnist", image_size=args.image_size, train_size=args.images, val_size=n_val, test_size=n_val)

    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.images} MNIST images per epoch, "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    splits_times = {
        "bench split": load_times(spec, 3),
        "all of MNIST": load_times(DatasetSpec("mnist", image_size=args.image_size), 1),
    }
    print(f"\ndataset load ({args.image_size} px)   cold (s)   first, writes cache (s)   from cache (s)   cold / cache")
    for name, (cold, write, hit) in splits_times.items():
        print(f"{name:<22} {cold:>9.2f} {write:>25.2f} {hit:>16.2f} {cold / hit:>13.1f}x")

    splits = load_dataset(spec)
    train, val, n_classes = splits.train, splits.val, len(splits.classes)
    settings = [("default", Recipe(max_epochs=1, patience=1, batch_size=args.batch_size))]
    if device.type == "cuda":
        settings = [("AMP+CL on", Recipe(max_epochs=1, patience=1, batch_size=args.batch_size, amp=True, channels_last=True)),
                    ("AMP+CL off", Recipe(max_epochs=1, patience=1, batch_size=args.batch_size, amp=False, channels_last=False))]

    def after_step(optimizer, step_args, step_kwargs) -> None:  # every optimizer: ours and bare alike
        sync(device)  # on CUDA this times the GPU work of the step (one sync per step in both loops)
        STEP_ENDS.append(time.perf_counter())

    register_optimizer_step_post_hook(after_step)
    print(f"\ntraining, one epoch; ours: fine_tune with a {len(val)}-image validation set, its eval time subtracted; "
          f"bare: the same uint8 tensors, kept on the device; {args.repeats} interleaved pairs: median (min-max) img/s, "
          "median of the pairs' ratios; step: median time of one training iteration")
    print(f"{'genome':<12} {'setting':<11} {'ours img/s':>17} {'bare img/s':>17} {'ours/bare':>10} {'target':>7} "
          f"{'ours faster':>12} {'step ours/bare (ms)':>20}")
    rates, before, wall = {}, cpu_times(), time.perf_counter()
    for setting in ("full", "half-frozen"):
        for label, recipe in settings:
            ours(args.model, n_classes, train, val, setting, recipe, device)  # warm-up: a process gets faster
            bare(args.model, n_classes, train, setting, recipe, device)  # over its first runs (allocator, caches)
            runs = {"ours": [], "bare": []}  # (images/s, median step s) per run
            for i in range(args.repeats):  # interleaved, in alternating order, so drift hits both alike
                for who in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                    if who == "ours":
                        runs[who].append(ours(args.model, n_classes, train, val, setting, recipe, device))
                    else:
                        runs[who].append(bare(args.model, n_classes, train, setting, recipe, device))
            a, b = ([r for r, _ in runs[who]] for who in ("ours", "bare"))
            step = [1000 * statistics.median(s for _, s in runs[who]) for who in ("ours", "bare")]
            rates[setting, label] = (statistics.median(a), statistics.median(b))
            ratio = statistics.median(x / y for x, y in zip(a, b))
            spread = [f"{statistics.median(v):.1f} ({min(v):.0f}-{max(v):.0f})" for v in (a, b)]
            print(f"{setting:<12} {label:<11} {spread[0]:>17} {spread[1]:>17} {ratio:>9.2f}x {'>=0.95':>7} "
                  f"{sum(x > y for x, y in zip(a, b)):>5} of {len(a):<3} {step[0]:>9.0f} / {step[1]:<6.0f}")
    after, wall = cpu_times(), time.perf_counter() - wall
    if before and after:  # other processes competing for the cores make every figure above unreliable
        others = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall
        print(f"other processes kept {others:.2f} of {os.cpu_count()} CPUs busy during the timed runs"
              + (": NOT A QUIET MACHINE, run again" if others > 0.1 else ""))
    if device.type == "cuda":
        for setting in ("full", "half-frozen"):
            on, off = rates[setting, "AMP+CL on"], rates[setting, "AMP+CL off"]
            print(f"{setting}: AMP+channels_last on vs off: ours {on[0] / off[0]:.2f}x, bare {on[1] / off[1]:.2f}x")


if __name__ == "__main__":
    main()
