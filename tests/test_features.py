"""Frozen-prefix feature cache: exact, keyed by what the features depend on, bounded, guarded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biotune_optuna.finetune.backbones import Backbone, load_backbone
from biotune_optuna.config import DatasetSpec
from biotune_optuna.finetune.data import ImageSet, fold_split, load_dataset
from biotune_optuna.finetune.features import FeatureCache, find_split
from biotune_optuna.config import Recipe
from biotune_optuna.finetune.training import fine_tune, predict, seed_everything

torch.set_num_threads(2)

RECIPE = Recipe(max_epochs=2, patience=2, batch_size=32)


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DatasetSpec("digits", image_size=32, train_size=320, val_size=96, test_size=96))


def _train(splits, trained, cache, data_key="fold0", seed=7, train=None, val=None, model="tf_efficientnet_lite0"):
    seed_everything(seed)
    bb = load_backbone(model, len(splits.classes))
    lr = {b: 1e-3 for b in bb.blocks if b in trained}
    result = fine_tune(bb, lr, train or splits.train, val or splits.val, RECIPE, seed, "cpu", feature_cache=cache, data_key=data_key)
    return bb, result


@pytest.mark.parametrize(
    "trained",
    [("stage3", "stage4", "stage5", "stage6", "head_conv", "classifier"), ("stage2", "stage5", "classifier"), ("classifier",)],
    ids=["second-half", "gaps", "linear-probe"],
)
def test_cached_training_gives_the_same_weights_and_predictions(splits, trained):
    plain_bb, plain = _train(splits, trained, None)
    cache = FeatureCache()
    cached_bb, cached = _train(splits, trained, cache)
    assert cached.cached_prefix and not plain.cached_prefix
    assert cache.misses == 1 and cache.nbytes > 0
    assert cached.history == pytest.approx(plain.history, abs=1e-6)
    assert cached.best_epoch == plain.best_epoch
    a, b = plain.model.state_dict(), cached.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key
    assert any(not torch.equal(a[k], p) for k, p in load_backbone("tf_efficientnet_lite0", 10).model.state_dict().items() if k in a and a[k].shape == p.shape)
    # The returned model is whole again: the test split runs through every block.
    dev = torch.device("cpu")
    assert torch.equal(predict(plain.model, splits.test, plain_bb, dev), predict(cached.model, splits.test, cached_bb, dev))


def test_cache_is_reused_for_the_same_data_and_prefix_and_invalidated_when_they_change(splits):
    cache = FeatureCache()
    half = ("stage3", "stage4", "stage5", "stage6", "head_conv", "classifier")
    _train(splits, half, cache, seed=1)
    _train(splits, half, cache, seed=2)  # another seed (new head), same frozen prefix and data
    assert (cache.hits, cache.misses) == (1, 1)
    _, result = _train(splits, ("stage3", "classifier"), cache, seed=3)  # same first trained block
    assert (cache.hits, cache.misses) == (2, 1) and result.cached_prefix

    train1, val1 = fold_split(splits, 1, 2)
    _train(splits, half, cache, data_key="fold1", train=train1, val=val1)  # another fold
    assert cache.misses == 2
    other = load_dataset(DatasetSpec("digits", image_size=32, train_size=300, val_size=96, test_size=96, seed=5))
    assert other.fingerprint != splits.fingerprint
    _train(other, half, cache, data_key=other.fingerprint)  # another dataset
    assert cache.misses == 3
    _train(splits, ("stage4", "classifier"), cache)  # another frozen prefix
    assert cache.misses == 4

    # Other weights with the same name: the key holds a digest of the prefix weights themselves.
    seed_everything(9)
    bb = load_backbone("tf_efficientnet_lite0", 10)
    with torch.no_grad():
        bb.model.conv_stem.weight.mul_(0.5)
    before = cache.misses
    fine_tune(bb, {b: 1e-3 for b in half}, splits.train, splits.val, RECIPE, 9, "cpu", feature_cache=cache, data_key="fold0")
    assert cache.misses == before + 1


def test_memory_budget_evicts_and_refuses_and_training_still_runs(splits):
    half = ("stage3", "stage4", "stage5", "stage6", "head_conv", "classifier")
    probe = FeatureCache()
    _train(splits, half, probe)
    one = probe.nbytes
    cache = FeatureCache(max_bytes=int(one * 1.5))  # room for one such entry, not two
    _train(splits, half, cache, data_key="a")
    _train(splits, half, cache, data_key="b")
    assert cache.misses == 2 and cache.nbytes <= cache.max_bytes and cache.peak_bytes <= cache.max_bytes
    _train(splits, half, cache, data_key="a")  # evicted: computed again
    assert cache.misses == 3

    tiny = FeatureCache(max_bytes=one // 10)
    _, result = _train(splits, half, tiny)
    assert not result.cached_prefix and tiny.skipped == 1 and tiny.nbytes == 0
    off = FeatureCache(max_bytes=0)
    _, result = _train(splits, half, off)
    assert not result.cached_prefix
    with pytest.raises(ValueError, match="≥ 0"):
        FeatureCache(max_bytes=-1)


def test_resnet_glue_between_blocks_runs_on_the_placeholder_and_training_is_unchanged(splits):
    # ResNet's in-place ReLU and max-pool sit between the stem and layer1, outside every block.
    def train(cache):
        seed_everything(3)
        bb = load_backbone("resnet18", len(splits.classes), pretrained=False)
        result = fine_tune(bb, {"layer1": 1e-3, "layer4": 1e-3, "fc": 1e-3}, splits.train, splits.val, RECIPE, 3, "cpu",
                           feature_cache=cache, data_key="fold0")
        return result

    plain, cached = train(None), train(FeatureCache())
    assert cached.cached_prefix
    assert cached.history == pytest.approx(plain.history, abs=1e-6)
    for key, value in plain.model.state_dict().items():
        assert torch.allclose(value.float(), cached.model.state_dict()[key].float(), rtol=1e-4, atol=1e-5), key


def test_split_points_before_each_block_of_a_real_network():
    bb = load_backbone("resnet18", 10, pretrained=False)
    x = torch.zeros(1, 3, 32, 32)
    assert find_split(bb, bb.blocks[0], x) is None  # nothing frozen: nothing to cache
    split = find_split(bb, "layer3", x)
    assert split.boundary == "layer3" and split.frozen == ("conv1", "bn1", "layer1", "layer2")
    assert split.feature_shape == (128, 4, 4) and split.itemsize == 4
    assert find_split(bb, "fc", x).feature_shape == (512,)
    with pytest.raises(ValueError, match="unknown block"):
        find_split(bb, "nope", x)


class _SkipAcross(nn.Module):
    """b's input also reaches c directly: the trace cannot see it, the exactness check must."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(self.b(h) + h)


def test_model_with_a_skip_across_blocks_is_trained_without_the_cache():
    torch.manual_seed(0)
    bb = Backbone("skip", _SkipAcross(), ("a", "b", "c"), (0.5,) * 3, (0.25,) * 3, 16, "random init")
    data = ImageSet(torch.randint(0, 255, (24, 3, 16, 16), dtype=torch.uint8), torch.arange(24) % 3)
    cache = FeatureCache()
    result = fine_tune(bb, {"b": 1e-3, "c": 1e-3}, data, data, Recipe(max_epochs=1, batch_size=8), 1, "cpu",
                       feature_cache=cache, data_key="x")
    assert not result.cached_prefix and cache.skipped == 1 and cache.nbytes == 0
    assert isinstance(bb.model.a.forward.__self__, nn.Conv2d)  # the cut left nothing behind
