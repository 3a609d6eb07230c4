"""L2-SP and L1-SP (spec/baselines.md §1.5): fine-tune everything, penalised towards the
pretrained starting point."""

from __future__ import annotations


import torch
from torch import nn

from biotune_optuna.config import BASELINE_LABELS, check_learning_rate, check_non_negative
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.training import Method, configure
from biotune_optuna.finetune.method_parts import head_block


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

    name = BASELINE_LABELS["l2sp"]

    def __init__(self, backbone: Backbone, base_lr: float, *, alpha: float = 0.1, beta: float = 0.01) -> None:
        self.base_lr = check_learning_rate(base_lr)
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self._start: dict[str, torch.Tensor] = {}  # backbone parameter name → θ⁰ (CPU/original device)
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._head_names: list[str] = []

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        head = head_block(backbone)
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

    name = BASELINE_LABELS["l1sp"]

    def _distance(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs().sum()

    def _backbone_weight(self) -> float:
        return self.alpha
