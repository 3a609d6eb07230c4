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
import itertools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from biotune_optuna.config import BASELINE_LABELS
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.training import BlockLR, Method, _logits, configure

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

_BN = nn.modules.batchnorm._BatchNorm


def _head(backbone: Backbone) -> str:
    """The classifier block (blocks are listed input side first, classifier last)."""
    return backbone.blocks[-1]


def _bn_param_ids(model: nn.Module) -> set[int]:
    """ids of the affine parameters (γ, β) of every BatchNorm layer, decided by module type."""
    return {id(p) for m in model.modules() if isinstance(m, _BN) for p in m.parameters(recurse=False)}


def _check_lr(base_lr: float) -> float:
    if not (isinstance(base_lr, (int, float)) and math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base learning rate must be a finite number > 0, got {base_lr!r}")
    return float(base_lr)


def _check_nonneg(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Full fine-tuning and linear probing (§1.1, §1.2): plain BlockLR


def full_fine_tuning(backbone: Backbone, base_lr: float) -> BlockLR:
    """Full fine-tuning (spec/baselines.md §1.1): every parameter trainable at one learning rate,
    ``lr_b = base_lr`` for every block ``b``. No hyper-parameter besides ``base_lr``."""
    lr = _check_lr(base_lr)
    return BlockLR({b: lr for b in backbone.blocks}, name=LABELS["full"])


def linear_probing(backbone: Backbone, base_lr: float) -> BlockLR:
    """Linear probing (spec/baselines.md §1.2): only the head block trains, at ``base_lr``; the
    backbone is frozen and its BatchNorm layers stay in eval mode (the loop's policy for frozen
    blocks), so their running statistics do not drift."""
    return BlockLR({_head(backbone): _check_lr(base_lr)}, name=LABELS["linear"])


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
        self.base_lr = _check_lr(base_lr)
        n = len(backbone.blocks)
        super().__init__({b: self.base_lr * self.decay ** (n - 1 - i) for i, b in enumerate(backbone.blocks)}, name=LABELS["llrd"])


# ---------------------------------------------------------------------------------------------
# AutoRGN (§1.3)


class AutoRGN(Method):
    """AutoRGN (Lee et al., ICLR 2023; spec/baselines.md §1.3), the official rule of
    ``anniesch/surgical-finetuning`` (``get_lr_weights``, ``auto_tune == 'RGN'``).

    At the start of every epoch, over the first ``n_batches`` training batches (in the model's
    current mode: train, as the loop left it), for every parameter tensor ``i`` that is not a
    BatchNorm parameter::

        RGN_i = mean over the batches of ‖∇_{θ_i} L_CE‖₂ / ‖θ_i‖₂
        w_i   = RGN_i / max_j RGN_j                       (w_i ∈ [0, 1], 1 at the top)
        lr_i  = w_i · base_lr

    and a NEW ``torch.optim.Adam`` with one group per tensor replaces the old one, so the Adam
    state resets every epoch. The loop's cosine factor multiplies each group's ``initial_lr``,
    which is set to ``lr_i``.

    BatchNorm parameters are told apart by module type (``nn.modules.batchnorm._BatchNorm``):
    that is the intent of the official ``"bn" not in name`` test, which would miss e.g.
    torchvision ResNet's ``downsample.1`` BatchNorm. By default they are frozen
    (``requires_grad=False``) and left out of the optimizer, as in the official code; their
    running statistics still update (every block holds trained weights, so every BatchNorm runs
    in train mode, as the official ``net.train()``; the RGN batches update them too).

    A tensor whose norm is 0 has no relative gradient norm: it gets ``w = 1`` and is left out
    of the maximum (the official code would divide by zero). If every gradient is 0, all
    ``w = 1``. A tensor the loss does not reach (Inception-v3's ``AuxLogits``: only the main
    logits count) has RGN 0, so ``w = 0``.

    Args:
        backbone: the model and its blocks.
        base_lr: the learning rate of the tensor with the largest RGN.
        n_batches: batches per RGN estimate (official: 5).
        weight_decay: Adam's (L2) weight decay; default 0 to match our recipe, the spec's runs
            use 1e-4.
        train_bn: also train BatchNorm γ/β, at ``w = 1`` (the spec's suggested option).

    Attributes:
        last_ratios: parameter name → ``w_i`` of the latest epoch start (BN parameters, when
            trained, at 1.0 are not listed).
        last_rgn: parameter name → ``RGN_i`` (before normalisation; NaN for a zero-norm tensor)
            of the latest epoch start.
    """

    name = LABELS["autorgn"]

    def __init__(
        self, backbone: Backbone, base_lr: float, *, n_batches: int = 5, weight_decay: float = 0.0, train_bn: bool = False
    ) -> None:
        if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
            raise ValueError(f"n_batches must be an integer ≥ 1, got {n_batches!r}")
        self.base_lr = _check_lr(base_lr)
        self.n_batches = n_batches
        self.weight_decay = _check_nonneg("weight decay", weight_decay)
        self.train_bn = bool(train_bn)
        self.last_ratios: dict[str, float] = {}
        self.last_rgn: dict[str, float] = {}

    def _split(self, model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
        bn = _bn_param_ids(model)
        named = list(model.named_parameters())
        return [(n, p) for n, p in named if id(p) not in bn], [(n, p) for n, p in named if id(p) in bn]

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        weighted, bn = self._split(backbone.model)
        for _, p in weighted:
            p.requires_grad_(True)
        for _, p in bn:
            p.requires_grad_(self.train_bn)
        # Until the first epoch start replaces it: every tensor at base_lr (w = 1).
        chosen = weighted + (bn if self.train_bn else [])
        return [{"params": [p], "lr": self.base_lr, "name": n} for n, p in chosen]

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        return set(backbone.blocks)

    def relative_gradient_norms(
        self, model: nn.Module, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    ) -> dict[str, float]:
        """``RGN_i`` of every non-BatchNorm tensor, averaged over the first ``n_batches`` batches.

        Gradients come from ``torch.autograd.grad`` (no ``.grad`` is touched), in float32.

        Raises:
            ValueError: if ``batches`` yields nothing.
        """
        weighted, _ = self._split(model)
        weighted = [(n, p) for n, p in weighted if p.requires_grad]
        params = [p for _, p in weighted]
        if not params:
            raise ValueError("AutoRGN: no trainable non-BatchNorm parameter")
        with torch.no_grad():
            norms = torch.stack([p.detach().float().norm() for p in params])
        total = torch.zeros_like(norms)
        count = 0
        for x, y in itertools.islice(batches(), self.n_batches):
            loss = F.cross_entropy(_logits(model(x)).float(), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():  # one device sync per epoch start, not one per tensor
                total += torch.stack([norms.new_zeros(()) if g is None else g.float().norm() for g in grads]) / norms
            count += 1
        if count == 0:
            raise ValueError("AutoRGN: no training batch to estimate relative gradient norms on")
        values = (total / count).tolist()
        zero = (norms == 0).tolist()
        return {n: (math.nan if z else v) for (n, _), v, z in zip(weighted, values, zero)}

    def on_epoch_start(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    ) -> torch.optim.Optimizer:
        rgn = self.relative_gradient_norms(model, batches)
        finite = [v for v in rgn.values() if not math.isnan(v)]
        top = max(finite, default=0.0)
        self.last_rgn = rgn
        self.last_ratios = {n: (v / top if top > 0 and not math.isnan(v) else 1.0) for n, v in rgn.items()}
        weighted, bn = self._split(model)
        groups = []
        for n, p in weighted:
            if n in self.last_ratios:
                lr = self.last_ratios[n] * self.base_lr
                groups.append({"params": [p], "lr": lr, "initial_lr": lr, "name": n})
        if self.train_bn:
            groups += [{"params": [p], "lr": self.base_lr, "initial_lr": self.base_lr, "name": n} for n, p in bn if p.requires_grad]
        return torch.optim.Adam(groups, lr=self.base_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=self.weight_decay)


# ---------------------------------------------------------------------------------------------
# L2-SP / L1-SP (§1.5)


class L2SP(Method):
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018; spec/baselines.md §1.5).

    Every parameter trains at ``base_lr`` (no weight decay) under the extra loss::

        Ω(θ) = (α/2)·‖θ_S − θ⁰_S‖₂² + (β/2)·‖θ_head‖₂²

    where S = every parameter outside the head block (BatchNorm γ/β included, as TLlib's
    ``SPRegularization``), θ⁰ = their values when :meth:`param_groups` runs on the fresh
    pretrained model (detached copies, moved to the parameters' device on first use), and the
    head block (the new classifier) gets plain L2. Both terms are sums over all elements, not
    means, so α interacts with model size. The backbone term is 0 at the start.

    Args:
        backbone: the model and its blocks.
        base_lr: learning rate of every parameter.
        alpha: backbone strength α (default 0.1, the paper's; TLlib's default is 0.01; the
            spec suggests searching {1e-3, 1e-2, 1e-1, 1}).
        beta: head strength β (default 0.01, the paper's and TLlib's).
    """

    name = LABELS["l2sp"]

    def __init__(self, backbone: Backbone, base_lr: float, *, alpha: float = 0.1, beta: float = 0.01) -> None:
        self.base_lr = _check_lr(base_lr)
        self.alpha = _check_nonneg("alpha", alpha)
        self.beta = _check_nonneg("beta", beta)
        self._start: dict[str, torch.Tensor] = {}  # backbone parameter name → θ⁰ (CPU/original device)
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._head_names: list[str] = []

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        head = _head(backbone)
        groups = configure(backbone, {b: self.base_lr for b in backbone.blocks})
        self._head_names, self._start, self._on_device = [], {}, {}
        for n, p in backbone.model.named_parameters():
            if backbone.block_of(n) == head:
                self._head_names.append(n)
            else:
                self._start[n] = p.detach().clone()
        return groups

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        return set(backbone.blocks)

    def _reference(self, name: str, like: torch.Tensor) -> torch.Tensor:
        ref = self._start[name]
        if ref.device == like.device and ref.dtype == like.dtype:
            return ref
        key = (name, like.device)
        cached = self._on_device.get(key)
        if cached is None or cached.dtype != like.dtype:
            cached = self._on_device[key] = ref.to(like.device, like.dtype)
        return cached

    def _distance(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.pow(2).sum()

    def backbone_term(self, model: nn.Module) -> torch.Tensor:
        """Σ over backbone tensors of ``‖θ − θ⁰‖₂²`` (L1-SP: ``‖θ − θ⁰‖₁``), before α."""
        params = dict(model.named_parameters())
        if not self._start:
            raise RuntimeError(f"{self.name}: param_groups() has not run, there is no starting point θ⁰")
        terms = [self._distance(params[n] - self._reference(n, params[n])) for n in self._start]
        return torch.stack(terms).sum()

    def head_term(self, model: nn.Module) -> torch.Tensor:
        """``‖θ_head‖₂²``, before β/2."""
        params = dict(model.named_parameters())
        return torch.stack([params[n].pow(2).sum() for n in self._head_names]).sum()

    def _backbone_weight(self) -> float:
        return self.alpha / 2

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self._backbone_weight() * self.backbone_term(model) + (self.beta / 2) * self.head_term(model)


class L1SP(L2SP):
    """L1-SP (same paper, spec/baselines.md §1.5): as :class:`L2SP` with the backbone term
    replaced by its L1 distance::

        Ω(θ) = α·‖θ_S − θ⁰_S‖₁ + (β/2)·‖θ_head‖₂²

    (sums over all elements; BatchNorm γ/β in S). Defaults α = 0.1, β = 0.01, as L2-SP.
    """

    name = LABELS["l1sp"]

    def _distance(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs().sum()

    def _backbone_weight(self) -> float:
        return self.alpha


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

    The adapter parameters carry ``_biotune_adapter = True``, so that the loop counts the
    trainable share relative to the original model.

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
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank must be an integer ≥ 1, got {r!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
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
        for p in (self.lora_A.weight, self.lora_B.weight):
            p._biotune_adapter = True

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

    name = LABELS["lora"]

    def __init__(self, backbone: Backbone, base_lr: float, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be an integer ≥ 1, got {r!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        self.base_lr = _check_lr(base_lr)
        self.r, self.alpha, self.dropout = r, float(alpha), float(dropout)
        self.adapted: list[str] = []
        self.skipped: list[str] = []

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        model, head = backbone.model, _head(backbone)
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
        # By module, not by the marker: copy.deepcopy of a Parameter drops Python attributes.
        adapters = [p for m in model.modules() if isinstance(m, LoRAConv2d) for p in (m.lora_A.weight, m.lora_B.weight)]
        for p in adapters:
            p.requires_grad_(True)
        return ([{"params": adapters, "lr": self.base_lr, "name": "lora"}] if adapters else []) + groups

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        return {_head(backbone)}


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
        self.base_lr = _check_lr(base_lr)
        self.train_gamma = bool(train_gamma)

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        head = _head(backbone)
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
        return {_head(backbone)}


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
