"""AutoRGN (spec/baselines.md §1.3): per-tensor learning rates from relative gradient norms."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from biotune_optuna.config import BASELINE_LABELS, check_int, check_learning_rate, check_non_negative
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.training import Method, main_logits
from biotune_optuna.finetune.method_parts import bn_param_ids


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

    name = BASELINE_LABELS["autorgn"]

    def __init__(
        self, backbone: Backbone, base_lr: float, *, n_batches: int = 5, weight_decay: float = 0.0, train_bn: bool = False
    ) -> None:
        check_int("n_batches", n_batches, 1)
        self.base_lr = check_learning_rate(base_lr)
        self.n_batches = n_batches
        self.weight_decay = check_non_negative("weight decay", weight_decay)
        self.train_bn = bool(train_bn)
        self.last_ratios: dict[str, float] = {}
        self.last_rgn: dict[str, float] = {}

    def _split(self, model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
        bn = bn_param_ids(model)
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
            loss = F.cross_entropy(main_logits(model(x)).float(), y)
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
