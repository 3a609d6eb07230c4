"""LoRA for convolutions (spec/baselines.md §1.4): frozen kernels plus low-rank updates, peft's
conv formulation; mergeable back into the kernel."""

from __future__ import annotations

import math

import torch
from torch import nn

from biotune_optuna.config import BASELINE_LABELS, check_int, check_learning_rate, check_positive, check_probability
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.training import Method, configure
from biotune_optuna.finetune.method_parts import head_block


# ---------------------------------------------------------------------------------------------
# LoRA (§1.4)


class LoRAConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` plus a low-rank update, peft's conv formulation (spec §1.4)::

        y = base(x) + (α/r) · lora_B(lora_A(dropout(x)))

    ``lora_A = Conv2d(C_in, r, same kernel/stride/padding/dilation, bias=False)`` (Kaiming-uniform
    init, ``a=√5``, as peft) and ``lora_B = Conv2d(r, C_out, 1×1, bias=False)`` initialised to
    zero, so the module starts equal to ``base``. Equivalently the kernel is
    ``W⁰ + (α/r)·ΔW`` with ``ΔW[o,i,:,:] = Σ_k B[o,k]·A[k,i,:,:]`` (rank ≤ r once unfolded to
    C_out × C_in·k·k); :meth:`merge` folds it in. Only ``groups == 1`` convolutions qualify (a
    grouped/depthwise kernel has no such factorisation here).

    Args:
        base: the convolution to adapt (frozen here: ``requires_grad=False``).
        r: rank (≥ 1).
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout probability on the adapter's input (0: none).
    """

    def __init__(self, base: nn.Conv2d, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Conv2d) or base.groups != 1:
            raise ValueError(f"LoRAConv2d adapts a Conv2d with groups=1, got {base!r}")
        check_int("LoRA rank", r, 1)
        check_probability("LoRA dropout", dropout)
        self.base = base
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r
        w = base.weight
        self.lora_A = nn.Conv2d(
            base.in_channels, r, base.kernel_size, base.stride, base.padding, base.dilation,
            bias=False, padding_mode=base.padding_mode, device=w.device, dtype=w.dtype,
        )
        self.lora_B = nn.Conv2d(r, base.out_channels, 1, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.lora_B(self.lora_A(self.dropout(x)))

    def delta_weight(self) -> torch.Tensor:
        """``(α/r)·ΔW``, shaped like the base kernel (C_out, C_in, kh, kw)."""
        b = self.lora_B.weight[:, :, 0, 0].float()
        a = self.lora_A.weight.float()
        return self.scaling * torch.einsum("or,rihw->oihw", b, a)

    @torch.no_grad()
    def merge(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with weight ``W⁰ + (α/r)·ΔW`` (and the base bias): same outputs
        as this module in eval mode (dropout off). Its parameters keep the base's
        ``requires_grad``; the adapter is not modified."""
        base = self.base
        w = base.weight
        conv = nn.Conv2d(
            base.in_channels, base.out_channels, base.kernel_size, base.stride, base.padding, base.dilation,
            groups=1, bias=base.bias is not None, padding_mode=base.padding_mode, device=w.device, dtype=w.dtype,
        )
        conv.weight.copy_((w.float() + self.delta_weight()).to(w.dtype))
        if base.bias is not None:
            conv.bias.copy_(base.bias)
        if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
            conv = conv.to(memory_format=torch.channels_last)
        conv.weight.requires_grad_(w.requires_grad)
        if base.bias is not None:
            conv.bias.requires_grad_(base.bias.requires_grad)
        conv.train(base.training)
        return conv


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRAConv2d` in ``model`` by its merged plain ``nn.Conv2d`` (in
    place; parameter names become the original ones again). Returns ``model``."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRAConv2d)]
    for name, module in found:
        _replace(model, name, module.merge())
    return model


class LoRA(Method):
    """LoRA for CNNs (spec/baselines.md §1.4), peft's conv formulation in our own adapter.

    Every eligible ``nn.Conv2d`` outside the head block becomes a :class:`LoRAConv2d`
    (``W = W⁰ + (α/r)·B·A``, ``B`` zero-initialised); everything else is frozen except the
    adapters and the head block, all at ``base_lr``. Eligible: exactly ``nn.Conv2d`` (not a
    subclass with its own forward, e.g. timm's dynamic-padding ``Conv2dSame``, whose padding the
    adapter would not reproduce) with ``groups == 1``: grouped and depthwise convolutions
    (MobileNet/EfficientNet) keep their frozen kernels. BatchNorm layers are frozen and stay in
    eval mode (``trained_blocks`` is the head block only). :func:`merge_lora` folds the
    adapters back into plain convolutions for inference.

    Args:
        backbone: the model and its blocks.
        base_lr: learning rate of adapters and head.
        r: rank (default 8; spec range {4, 8, 16}).
        alpha: scaling numerator (default 16, i.e. α/r = 2 as the spec's peft run).
        dropout: adapter input dropout (default 0; spec range 0–0.1).

    Attributes:
        adapted: names of the convolutions given an adapter (after ``param_groups``).
        skipped: names of convolutions outside the head left without one (grouped or
            non-plain).
    """

    name = BASELINE_LABELS["lora"]

    def __init__(self, backbone: Backbone, base_lr: float, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        check_int("LoRA rank r", r, 1)
        check_positive("LoRA alpha", alpha)
        check_probability("LoRA dropout", dropout)
        self.base_lr = check_learning_rate(base_lr)
        self.r, self.alpha, self.dropout = r, float(alpha), float(dropout)
        self.adapted: list[str] = []
        self.skipped: list[str] = []

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        model, head = backbone.model, head_block(backbone)
        inside = {id(m) for w in model.modules() if isinstance(w, LoRAConv2d) for m in w.modules()}
        self.adapted, self.skipped = [], []
        targets = []
        for name, m in model.named_modules():
            if not isinstance(m, nn.Conv2d) or id(m) in inside or backbone.block_of(name) == head:
                continue
            if type(m) is nn.Conv2d and m.groups == 1:
                targets.append((name, m))
            else:
                self.skipped.append(name)
        for name, m in targets:
            _replace(model, name, LoRAConv2d(m, self.r, self.alpha, self.dropout))
            self.adapted.append(name)
        groups = configure(backbone, {head: self.base_lr})  # head trains, everything else frozen
        adapters = self.added_parameters(model)
        for p in adapters:
            p.requires_grad_(True)
        return ([{"params": adapters, "lr": self.base_lr, "name": "lora"}] if adapters else []) + groups

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        return {head_block(backbone)}

    def added_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The adapters' weights (``lora_A``, ``lora_B`` of every :class:`LoRAConv2d`)."""
        return [p for m in model.modules() if isinstance(m, LoRAConv2d) for p in (m.lora_A.weight, m.lora_B.weight)]
