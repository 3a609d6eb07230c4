"""Evaluation time of a genome with and without the frozen-prefix feature cache.

One evaluation = what a worker does for one trial: fine-tune a fresh model once per seed on one
fold and keep the best validation accuracy (biotune_optuna.objective). Measured for a genome
with the first half of the blocks frozen, one that trains only the last three blocks, and linear
probing (only the classifier trained):

* uncached: the whole model runs forward every batch and every validation pass;
* cached, cold: the cache is empty, so this evaluation computes the prefix features first;
* cached, warm: another genome on the same fold already froze the same first blocks.

The three are run seed by seed in turn, so that other load on the machine hits them alike.

It also checks that cached and uncached runs reach the same validation accuracies, prints the
memory the cache holds, and counts the forward FLOPs of the whole model and of the blocks after
the frozen prefix (torch.utils.flop_counter): with a backward of about twice the forward, they
bound what any prefix cache can save on a compute-bound training step. Targets (issue 5): ≥ 3× for the half-frozen genome, ≥ 10× for
linear probing.

    .venv/bin/python bench/feature_cache.py [--device cpu|cuda] [--images 1200] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from torch.utils.flop_counter import FlopCounterMode

from biotune_optuna.finetune.backbones import load_backbone
from biotune_optuna.config import DatasetSpec
from biotune_optuna.finetune.data import load_dataset
from biotune_optuna.finetune.features import Batch, FeatureCache, model_input, prefix_features, replay, rows
from biotune_optuna.config import Recipe
from biotune_optuna.finetune.training import configure, fine_tune, pick_device, seed_everything, set_train_mode


def fine_tune_once(model, trained, data, recipe, seed, device, cache):  # noqa: ANN001
    """Seconds and validation history of one fine-tune of a fresh model."""
    start = time.perf_counter()
    seed_everything(seed)
    bb = load_backbone(model, len(data.classes))
    lr = {b: recipe.base_lr for b in bb.blocks if b in trained}
    result = fine_tune(bb, lr, data.train, data.val, recipe, seed, device, feature_cache=cache, data_key="fold0")
    return time.perf_counter() - start, result.history


def forward_flops(model, trained, data, recipe, device):  # noqa: ANN001
    """Forward FLOPs of one training batch through the whole model and through the blocks
    after the frozen prefix (torch.utils.flop_counter; its backward counts ignore conv groups,
    so only forwards are counted)."""
    bb = load_backbone(model, len(data.classes))
    configure(bb, {b: recipe.base_lr for b in trained})
    bb.model.to(device, memory_format=torch.channels_last)
    features = prefix_features(FeatureCache(), "flops", bb, trained, data.train, data.val, device,
                               recipe.eval_batch_size, True, False)
    set_train_mode(bb.model, bb, trained, "eval")
    n, current = recipe.batch_size, Batch()
    current.rows = rows(features.train, slice(0, n), True)
    with torch.no_grad(), FlopCounterMode(display=False) as full:
        bb.model(model_input(data.train.images[:n], bb, device, True))
    with torch.no_grad(), FlopCounterMode(display=False) as cut, replay(bb.model, features, current):
        bb.model(features.placeholder)
    return full.get_total_flops(), cut.get_total_flops()


def evaluate_genome(model, trained, data, recipe, seeds, device):  # noqa: ANN001
    """Seconds of one evaluation (one fine-tune per seed) uncached, cold and warm, interleaved
    seed by seed so that load from other processes hits all three alike."""
    cold_cache, warm_cache = FeatureCache(), FeatureCache()
    fine_tune_once(model, trained, data, replace(recipe, max_epochs=1), seeds[0], device, warm_cache)  # fill it
    seconds, same = {"uncached": 0.0, "cold": 0.0, "warm": 0.0}, True
    for seed in seeds:
        t_plain, h_plain = fine_tune_once(model, trained, data, recipe, seed, device, None)
        t_cold, h_cold = fine_tune_once(model, trained, data, recipe, seed, device, cold_cache)
        t_warm, h_warm = fine_tune_once(model, trained, data, recipe, seed, device, warm_cache)
        seconds["uncached"] += t_plain
        seconds["cold"] += t_cold
        seconds["warm"] += t_warm
        same &= all(abs(a - b) < 1e-6 for a, b in zip(h_plain, h_cold)) and h_cold == h_warm
    return seconds, same, warm_cache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=600, help="training images of the fold (validation: a quarter)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3, help="fine-tunes per evaluation (paper: 3)")
    args = ap.parse_args()
    device = pick_device(args.device)
    data = load_dataset(DatasetSpec("mnist", image_size=args.image_size, train_size=args.images, val_size=args.images // 4, test_size=10))
    recipe = Recipe(max_epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size)
    blocks = load_backbone(args.model, 10).blocks
    seeds = [684, 559, 629][: args.seeds] + list(range(args.seeds - 3))
    genomes = {
        f"first half frozen (train {', '.join(blocks[len(blocks) // 2:])})": set(blocks[len(blocks) // 2 :]),
        f"last three trained (train {', '.join(blocks[-3:])})": set(blocks[-3:]),
        "linear probing (train classifier)": {blocks[-1]},
    }
    print(f"{args.model} at {args.image_size}px on {device} ({torch.get_num_threads()} threads), "
          f"{len(data.train)} train / {len(data.val)} val images, {args.epochs} epochs, batch {args.batch_size}, "
          f"{len(seeds)} seeds per evaluation", flush=True)
    ok = True
    for label, trained in genomes.items():
        t, same, cache = evaluate_genome(args.model, trained, data, recipe, seeds, device)
        ok &= same
        full, cut = forward_flops(args.model, trained, data, recipe, device)
        bound = (full + 2 * cut) / (3 * cut)  # backward of the trained blocks ≈ 2× their forward
        print(f"\n{label}")
        print(f"  forward FLOPs per batch: {full / 1e9:.2f} G whole model, {cut / 1e9:.3f} G after the frozen prefix "
              f"({1 - cut / full:.0%} of the forward is frozen) → a training step can be at most ~{bound:.1f}× "
              "faster with the cache where compute-bound (backward ≈ 2× forward)")
        print(f"  uncached      {t['uncached']:7.1f} s")
        print(f"  cached, cold  {t['cold']:7.1f} s   {t['uncached'] / t['cold']:5.1f}×   (features computed in this evaluation)")
        print(f"  cached, warm  {t['warm']:7.1f} s   {t['uncached'] / t['warm']:5.1f}×   (features already cached for this fold)")
        print(f"  cache holds {cache.nbytes / 2**20:.1f} MB (peak {cache.peak_bytes / 2**20:.1f} MB, budget "
              f"{cache.max_bytes / 2**30:.0f} GB); same validation accuracies as uncached: {'yes' if same else 'NO'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
