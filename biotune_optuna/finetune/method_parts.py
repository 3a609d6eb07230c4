"""Small helpers the baseline methods share."""

from __future__ import annotations

from torch import nn

from biotune_optuna.finetune.backbones import Backbone

_BN = nn.modules.batchnorm._BatchNorm


def head_block(backbone: Backbone) -> str:
    """The classifier block (blocks are listed input side first, classifier last)."""
    return backbone.blocks[-1]


def bn_param_ids(model: nn.Module) -> set[int]:
    """ids of the affine parameters (γ, β) of every BatchNorm layer, decided by module type."""
    return {id(p) for m in model.modules() if isinstance(m, _BN) for p in m.parameters(recurse=False)}
