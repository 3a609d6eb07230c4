"""The baselines (spec/baselines.md §1) on a real small network: resnet18, random init, 32 px."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from biotune_optuna.finetune.backbones import load_backbone
from biotune_optuna.finetune.baselines import BASELINES, LABELS, AutoRGN, LoRAConv2d, make_baseline, merge_lora
from biotune_optuna.finetune.data import ImageSet
from biotune_optuna.config import Recipe
from biotune_optuna.finetune.training import cosine_factor, fine_tune, seed_everything

LR = 1e-3
ONE_EPOCH = Recipe(max_epochs=1, batch_size=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, 2 threads made these tiny steps ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def resnet18(n_classes: int = 3):
    seed_everything(0)
    return load_backbone("resnet18", n_classes, pretrained=False)


def tiny_set(n: int = 16, n_classes: int = 3, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % n_classes)


def bn_param_names(model: nn.Module) -> set[str]:
    return {
        f"{mn}.{pn}"
        for mn, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for pn, _ in m.named_parameters(recurse=False)
    }


def running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_registry_keys_labels_and_errors():
    keys = ["full", "linear", "autorgn", "l2sp", "l1sp", "lora", "bitfit", "llrd"]
    assert list(BASELINES) == keys and list(LABELS) == keys
    bb = resnet18()
    with pytest.raises(ValueError) as e:
        make_baseline("spottune", bb, LR)
    assert all(k in str(e.value) for k in keys)
    with pytest.raises(ValueError, match=r"rank.*valid options: r=8, alpha=16.0, dropout=0.0"):
        make_baseline("lora", bb, LR, rank=4)
    with pytest.raises(ValueError, match="valid options: none"):
        make_baseline("full", bb, LR, decay=0.5)
    with pytest.raises(ValueError, match="rank"):
        make_baseline("lora", bb, LR, r=0)
    with pytest.raises(ValueError, match="learning rate"):
        make_baseline("l2sp", bb, 0.0)
    for key in keys:
        assert make_baseline(key, bb, LR).name == LABELS[key]
    full = make_baseline("full", bb, LR)
    groups = full.param_groups(bb, LR)
    assert [g["name"] for g in groups] == list(bb.blocks) and all(g["lr"] == LR for g in groups)
    assert all(p.requires_grad for p in bb.model.parameters())


def test_linear_probing_leaves_only_the_head_with_gradients():
    bb = resnet18()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    result = fine_tune(bb, make_baseline("linear", bb, LR), tiny_set(), tiny_set(8, seed=1), ONE_EPOCH, seed=1, device="cpu")
    assert result.trainable_params == 512 * 3 + 3
    for name, p in bb.model.named_parameters():
        if name.startswith("fc."):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    for key, value in bb.model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, before[key]) != key.startswith("fc."), key  # BN stats too


def _batches(n: int, size: int = 2, seed: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_autorgn_ratios_are_relative_gradient_norms_over_the_first_five_batches():
    bb = resnet18()
    method = make_baseline("autorgn", bb, LR)
    groups = method.param_groups(bb, LR)
    model = bb.model.train()
    old = torch.optim.Adam(groups)
    reference = copy.deepcopy(model)
    data = _batches(6)  # the 6th must not count

    optimizer = method.on_epoch_start(model, old, lambda: iter(data))

    # Independent recomputation: plain backward on a copy, BatchNorm told apart by module type.
    bn = bn_param_names(reference)
    assert "layer2.0.downsample.1.weight" in bn  # a BatchNorm without "bn" in its name
    sums: dict[str, float] = {}
    for x, y in data[:5]:
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        for n, p in reference.named_parameters():
            if n not in bn:
                sums[n] = sums.get(n, 0.0) + float(p.grad.norm() / p.detach().norm())
    rgn = {n: s / 5 for n, s in sums.items()}
    top = max(rgn.values())
    assert set(method.last_ratios) == set(rgn) and not set(rgn) & bn
    for n, r in rgn.items():
        assert method.last_ratios[n] == pytest.approx(r / top, rel=1e-5), n
    assert max(method.last_ratios.values()) == 1.0
    assert all(0 < w <= 1 for w in method.last_ratios.values())
    assert min(method.last_ratios.values()) < 0.5  # the weights really differ across tensors

    # A new Adam, empty state, one group per tensor at w·lr (initial_lr too), BN left out.
    assert isinstance(optimizer, torch.optim.Adam) and optimizer is not old and len(optimizer.state) == 0
    named = dict(model.named_parameters())
    assert len(optimizer.param_groups) == len(rgn)
    for group in optimizer.param_groups:
        (p,) = group["params"]
        assert p is named[group["name"]]
        assert group["lr"] == group["initial_lr"] == pytest.approx(method.last_ratios[group["name"]] * LR)
        assert group["weight_decay"] == 0.0
    for n in bn:
        assert not named[n].requires_grad

    # Option: BatchNorm trained at w = 1.
    bb2 = resnet18()
    with_bn = make_baseline("autorgn", bb2, LR, train_bn=True, weight_decay=1e-4, n_batches=1)
    with_bn.param_groups(bb2, LR)
    opt2 = with_bn.on_epoch_start(bb2.model.train(), old, lambda: iter(data))
    lrs = {g["name"]: g["lr"] for g in opt2.param_groups}
    assert set(lrs) == set(rgn) | bn and all(lrs[n] == LR for n in bn)
    assert all(g["weight_decay"] == 1e-4 for g in opt2.param_groups)


def test_autorgn_resets_adam_every_epoch_in_the_loop():
    class Spy(AutoRGN):
        def on_epoch_start(self, model, optimizer, batches):
            new = super().on_epoch_start(model, optimizer, batches)
            seen.append((optimizer, new, len(new.state), dict(self.last_ratios)))
            return new

    seen: list = []
    bb = resnet18()
    recipe = Recipe(max_epochs=2, patience=5, batch_size=8)
    fine_tune(bb, Spy(bb, LR), tiny_set(8), tiny_set(6, seed=1), recipe, seed=1, device="cpu")
    assert len(seen) == 2
    (_, first, n1, r1), (passed, second, n2, r2) = seen
    assert n1 == n2 == 0 and passed is first and second is not first
    assert len(first.state) > 0  # epoch 1 trained with it; epoch 2 starts afresh
    assert r1 != r2  # recomputed after the weights moved
    for group in second.param_groups:  # the loop's cosine factor applied on initial_lr
        assert group["lr"] == pytest.approx(group["initial_lr"] * cosine_factor(1, recipe.cosine_t_max))


@pytest.mark.parametrize("key", ["l2sp", "l1sp"])
def test_sp_penalty_is_exact(key):
    bb = resnet18()
    alpha, beta = 0.1, 0.01
    method = make_baseline(key, bb, LR, alpha=alpha, beta=beta)
    groups = method.param_groups(bb, LR)
    model = bb.model
    assert all(p.requires_grad for p in model.parameters()) and all(g["lr"] == LR for g in groups)
    head_sq = sum(float(p.detach().double().pow(2).sum()) for n, p in model.named_parameters() if n.startswith("fc."))
    p0 = method.penalty(model)
    assert float(method.backbone_term(model).detach()) == 0.0
    assert float(p0.detach()) == pytest.approx(beta / 2 * head_sq, rel=1e-6)

    g = torch.Generator().manual_seed(3)
    target = model.layer3[0].conv1.weight
    delta = 0.01 * torch.randn(target.shape, generator=g)
    bn_delta = 0.1 * torch.randn(model.bn1.bias.shape, generator=g)  # BN affine belongs to S
    with torch.no_grad():
        target.add_(delta)
        model.bn1.bias.add_(bn_delta)
    p1 = method.penalty(model)
    if key == "l2sp":
        expected = alpha / 2 * (float(delta.double().pow(2).sum()) + float(bn_delta.double().pow(2).sum()))
    else:
        expected = alpha * (float(delta.double().abs().sum()) + float(bn_delta.double().abs().sum()))
    assert float((p1 - p0).detach()) == pytest.approx(expected, rel=1e-5)
    p1.backward()  # differentiable; gradient of the backbone term alone on that tensor
    want = alpha * delta if key == "l2sp" else alpha * delta.sign()
    torch.testing.assert_close(target.grad, want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(model.fc.weight.grad, beta * model.fc.weight.detach())


def test_lora_starts_equal_trains_only_adapters_and_head_and_merges_exactly():
    bb = resnet18()
    reference = copy.deepcopy(bb.model).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    method = make_baseline("lora", bb, LR)
    method.param_groups(bb, LR)
    model = bb.model
    assert len(method.adapted) == 20 and method.skipped == []  # every conv of resnet18 but none in fc
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), rtol=0, atol=1e-6)  # B = 0
    for name, p in model.named_parameters():
        trainable = ".lora_A." in name or ".lora_B." in name or name.startswith("fc.")
        assert p.requires_grad == trainable, name

    result = fine_tune(bb, method, tiny_set(8), tiny_set(6, seed=1), ONE_EPOCH, seed=1, device="cpu")
    model = result.model
    # The trainable share is relative to the original model: adapters count as trained, not in the total.
    assert result.total_params == sum(p.numel() for p in reference.parameters())
    assert result.trainable_params == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n or n.startswith("fc."))
    assert any(m.lora_B.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRAConv2d))
    adapted = dict(model.state_dict())
    for name, value in reference.state_dict().items():  # frozen kernels and BN statistics
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        parts = name.rsplit(".", 1)
        key = f"{parts[0]}.base.{parts[1]}" if f"{parts[0]}.base.{parts[1]}" in adapted else name
        assert torch.equal(adapted[key], value), name
    with torch.no_grad():
        y = model.eval()(x)
        merge_lora(model)
        merged = model(x)
    assert not any(isinstance(m, LoRAConv2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(type(m) is nn.Conv2d for m in convs)
    assert set(model.state_dict()) == set(reference.state_dict())  # original names again
    torch.testing.assert_close(merged, y, rtol=0, atol=1e-5)
    assert not torch.allclose(merged, reference(x), atol=1e-3)  # the update is really there


def test_lora_conv_merge_handles_stride_padding_dilation_and_bias():
    torch.manual_seed(7)
    base = nn.Conv2d(6, 10, 3, stride=2, padding=2, dilation=2, bias=True)
    lora = LoRAConv2d(base, r=4, alpha=8, dropout=0.1).eval()
    nn.init.normal_(lora.lora_B.weight)
    x = torch.randn(2, 6, 17, 17)
    with torch.no_grad():
        torch.testing.assert_close(lora.merge()(x), lora(x), rtol=0, atol=1e-5)
        delta = lora.merge().weight - base.weight
    unfolded = delta.reshape(10, -1)
    assert torch.linalg.matrix_rank(unfolded) == 4 and lora.scaling == 2.0
    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(8, 8, 3, groups=8))


def test_lora_trainable_fraction_on_resnet18():
    bb = resnet18(1000)
    original = sum(p.numel() for p in bb.model.parameters())
    method = make_baseline("lora", bb, LR, r=8)
    groups = method.param_groups(bb, LR)
    adapters = sum(p.numel() for p in method.added_parameters(bb.model))
    trainable = sum(p.numel() for g in groups for p in g["params"])
    fc = 512 * 1000 + 1000
    assert original == 11_689_512 and adapters == 287_384 and trainable == adapters + fc
    assert trainable / original == pytest.approx(0.06847, abs=1e-5)  # 6.85 % (the loop's fraction)
    # The spec's peft figure, 292,514 trainable of 11.47 M (2.55 %), is for a 10-class fc:
    # the same 287,384 adapter parameters + 5,130 fc parameters. peft's denominator also counts
    # the adapters and modules_to_save's second copy of fc; ours is the original model only.
    fc10 = 512 * 10 + 10
    assert adapters + fc10 == 292_514
    peft_total = original - fc + fc10 + adapters + fc10
    assert round(peft_total / 1e6, 2) == 11.47 and round(100 * (adapters + fc10) / peft_total, 2) == 2.55


@pytest.mark.parametrize("train_gamma", [False, True])
def test_bitfit_trains_batchnorm_beta_and_head_with_fixed_statistics(train_gamma):
    bb = resnet18()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    bn = bn_param_names(bb.model)
    method = make_baseline("bitfit", bb, LR, train_gamma=train_gamma)
    stats = running_stats(bb.model)
    fine_tune(bb, method, tiny_set(8), tiny_set(6, seed=1), ONE_EPOCH, seed=1, device="cpu")
    for name, p in bb.model.named_parameters():
        trains = name.startswith("fc.") or (name in bn and (name.endswith(".bias") or train_gamma))
        assert p.requires_grad == trains, name
        assert (not torch.equal(p.detach(), before[name])) == trains, name
    after = running_stats(bb.model)
    assert stats.keys() == after.keys() and len(stats) == 2 * 20
    assert all(torch.equal(stats[k], after[k]) for k in stats)


def test_llrd_learning_rates_decay_geometrically_from_the_head():
    bb = resnet18()
    for decay in (0.75, 1 / 2.6):
        method = make_baseline("llrd", bb, LR) if decay == 0.75 else make_baseline("llrd", bb, LR, decay=decay)
        groups = method.param_groups(bb, LR)
        assert [g["name"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
        assert [g["lr"] for g in groups] == [LR * decay ** (5 - b) for b in range(6)]
        assert groups[-1]["lr"] == LR and groups[0]["lr"] == pytest.approx(LR * decay**5)
        assert all(p.requires_grad for p in bb.model.parameters())
        assert method.trained_blocks(bb) == set(bb.blocks)
    with pytest.raises(ValueError, match="decay"):
        make_baseline("llrd", bb, LR, decay=1.5)


def test_every_baseline_runs_one_epoch_in_the_loop():
    for key in BASELINES:
        bb = resnet18()
        result = fine_tune(bb, make_baseline(key, bb, LR), tiny_set(8), tiny_set(6, seed=1), Recipe(max_epochs=1, batch_size=8), seed=1, device="cpu")
        assert result.best_epoch == 1 and 0 < result.trainable_fraction <= 1, key
        assert math.isfinite(result.best_accuracy), key
