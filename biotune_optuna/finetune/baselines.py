"""The peer methods BioTune is compared against, each a :class:`~biotune_optuna.training.Method`
over the one fine-tuning loop (spec/baselines.md §1; §1.11: a trainable mask, per-group
learning rates, an extra loss term and/or adapter modules).

=========  ======================  =========================================================
key        label                   what it does (spec section)
=========  ======================  =========================================================
full       Full fine-tuning        every block at ``base_lr`` (§1.1)
linear     Linear probing          only the head block at ``base_lr`` (§1.2)
autorgn    AutoRGN                 per-tensor lr = ``base_lr·RGN_i/max RGN``, every epoch (§1.3)
l2sp       L2-SP                   all at ``base_lr`` + ``α/2‖θ_S−θ⁰_S‖² + β/2‖θ_head‖²`` (§1.5)
l1sp       L1-SP                   all at ``base_lr`` + ``α‖θ_S−θ⁰_S‖₁ + β/2‖θ_head‖²`` (§1.5)
lora       LoRA                    low-rank conv adapters + head, peft formulation (§1.4)
bitfit     BitFit                  BatchNorm β (optionally γ) + head (§1.7)
llrd       LLRD                    block ``b`` of ``B`` at ``base_lr·d^(B−1−b)`` (§1.6)
=========  ======================  =========================================================

Every entry of :data:`BASELINES` is called as ``BASELINES[key](backbone, base_lr, **options)``;
:func:`make_baseline` does that with a check of the key and the options. The method uses the
``base_lr`` it was built with (as :class:`~biotune_optuna.training.BlockLR` does, whose rates
are fixed at construction); the ``base_lr`` the loop passes to ``param_groups`` is ignored,
so build the method with the recipe's base learning rate. A method instance configures one
fresh backbone: build a new one per run (``param_groups`` adds adapters, snapshots θ⁰…).

Example::

    bb = load_backbone("resnet50", n_classes=102)
    method = make_baseline("lora", bb, recipe.base_lr, r=16)
    result = fine_tune(bb, method, train, val, recipe, seed=684)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable


from biotune_optuna.config import BASELINE_LABELS, check_learning_rate
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.autorgn import AutoRGN
from biotune_optuna.finetune.lora import LoRA, LoRAConv2d, merge_lora
from biotune_optuna.finetune.method_parts import _BN, head_block
from biotune_optuna.finetune.sp import L1SP, L2SP
from biotune_optuna.finetune.training import BlockLR, Method, configure

__all__ = [
    "BASELINES",
    "LABELS",
    "AutoRGN",
    "BitFit",
    "L1SP",
    "L2SP",
    "LLRD",
    "LoRA",
    "LoRAConv2d",
    "full_fine_tuning",
    "linear_probing",
    "make_baseline",
    "merge_lora",
]

#: Display names of the baselines (kept with the pure config, for the CLI's help).
LABELS = BASELINE_LABELS



# ---------------------------------------------------------------------------------------------
# Full fine-tuning and linear probing (§1.1, §1.2): plain BlockLR


def full_fine_tuning(backbone: Backbone, base_lr: float) -> BlockLR:
    """Full fine-tuning (spec/baselines.md §1.1): every parameter trainable at one learning rate,
    ``lr_b = base_lr`` for every block ``b``. No hyper-parameter besides ``base_lr``."""
    lr = check_learning_rate(base_lr)
    return BlockLR({b: lr for b in backbone.blocks}, name=LABELS["full"])


def linear_probing(backbone: Backbone, base_lr: float) -> BlockLR:
    """Linear probing (spec/baselines.md §1.2): only the head block trains, at ``base_lr``; the
    backbone is frozen and its BatchNorm layers stay in eval mode (the loop's policy for frozen
    blocks), so their running statistics do not drift."""
    return BlockLR({head_block(backbone): check_learning_rate(base_lr)}, name=LABELS["linear"])


# ---------------------------------------------------------------------------------------------
# LLRD (§1.6)


class LLRD(BlockLR):
    """Layer-wise learning-rate decay (spec/baselines.md §1.6, BEiT/MAE style).

    No block is frozen; block ``b`` (0-based, input side first, ``B`` blocks, head last) trains at
    ``lr_b = base_lr · d^(B−1−b)``: the head at ``base_lr``, each block below it ``d`` times
    slower. For ResNets that is the stem, layer1…layer4 and fc (6 blocks, as BioTune).

    Args:
        backbone: gives the block names.
        base_lr: learning rate of the head block.
        decay: ``d`` in (0, 1]; default 0.75 (timm's ``layer_decay`` example; the spec's range is
            [0.65, 0.9]). ULMFiT's discriminative rate is ``d = 1/2.6 ≈ 0.385``.
    """

    def __init__(self, backbone: Backbone, base_lr: float, *, decay: float = 0.75) -> None:
        if not (isinstance(decay, (int, float)) and 0 < decay <= 1):
            raise ValueError(f"layer decay must be in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.base_lr = check_learning_rate(base_lr)
        n = len(backbone.blocks)
        super().__init__({b: self.base_lr * self.decay ** (n - 1 - i) for i, b in enumerate(backbone.blocks)}, name=LABELS["llrd"])


# ---------------------------------------------------------------------------------------------
# BitFit (§1.7)


class BitFit(Method):
    """BitFit-style bias-only tuning for CNNs (Ben Zaken et al., ACL 2022; spec §1.7).

    torchvision ResNet convolutions have no bias, so "bias-only" means every BatchNorm β (its
    ``bias``) plus the head block; ``train_gamma=True`` also trains BatchNorm γ ("BN-tuning").
    Everything else is frozen. Design choice (the spec asks to report it): BatchNorm running
    statistics are **kept** — ``trained_blocks`` is the head block only, so outside the head
    BatchNorm layers run in eval mode (the loop's policy for blocks whose weights are frozen):
    β/γ adapt around the pretrained statistics instead of recomputing them.

    Param groups: one with the BatchNorm biases (and weights when asked) outside the head, one
    with the head block, both at ``base_lr``.

    Args:
        backbone: the model and its blocks.
        base_lr: learning rate of both groups.
        train_gamma: also train BatchNorm γ (default False).
    """

    name = LABELS["bitfit"]

    def __init__(self, backbone: Backbone, base_lr: float, *, train_gamma: bool = False) -> None:
        self.base_lr = check_learning_rate(base_lr)
        self.train_gamma = bool(train_gamma)

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        head = head_block(backbone)
        groups = configure(backbone, {head: self.base_lr})
        bn = []
        for name, m in backbone.model.named_modules():
            if not isinstance(m, _BN) or backbone.block_of(name) == head:
                continue
            for p in (m.bias, m.weight if self.train_gamma else None):
                if p is not None:
                    p.requires_grad_(True)
                    bn.append(p)
        return ([{"params": bn, "lr": self.base_lr, "name": "batchnorm"}] if bn else []) + groups

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        return {head_block(backbone)}


# ---------------------------------------------------------------------------------------------
# Registry


BASELINES: dict[str, Callable[..., Method]] = {
    "full": full_fine_tuning,
    "linear": linear_probing,
    "autorgn": AutoRGN,
    "l2sp": L2SP,
    "l1sp": L1SP,
    "lora": LoRA,
    "bitfit": BitFit,
    "llrd": LLRD,
}


def options(key: str) -> dict[str, object]:
    """The hyper-parameters ``key`` accepts, with their defaults.

    Raises:
        ValueError: on an unknown key, naming the valid ones.
    """
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {key!r}; valid: {', '.join(BASELINES)}")
    params = inspect.signature(BASELINES[key]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_baseline(key: str, backbone: Backbone, base_lr: float, **overrides) -> Method:
    """Build baseline ``key`` for ``backbone`` (fresh, not yet trained) at ``base_lr``.

    Args:
        key: one of :data:`BASELINES`.
        backbone: the model the method will configure.
        base_lr: the base learning rate (use the recipe's).
        overrides: hyper-parameters of that method (see :func:`options`), e.g. ``r=16``.

    Raises:
        ValueError: on an unknown key (naming the valid keys), an unknown override (naming that
            method's valid ones) or a bad value.
    """
    valid = options(key)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ValueError(f"baseline {key!r} has no option {', '.join(unknown)}; valid options: {allowed}")
    return BASELINES[key](backbone, base_lr, **overrides)
