"""The one fine-tuning loop every method uses (spec/biotune-algorithm.md §4).

Adam (betas 0.9/0.999, no weight decay) with one param group per fine-tuned block at that
block's learning rate (or the groups a baseline :class:`Method` asks for), cosine annealing
stepped once per epoch, cross-entropy, early stopping
on validation macro accuracy (patience 3, strict improvement), and the best epoch's weights
kept in memory. Departures from the reference, on purpose (DESIGN.md): per-block learning
rates really reach the optimizer; frozen blocks run in eval mode (BatchNorm running
statistics do not drift, dropout and stochastic depth are off, so a frozen block is a fixed
function) unless ``frozen_bn="train"`` asks for the reference behaviour. A frozen prefix can then
be computed once and cached (:mod:`biotune_optuna.finetune.features`).

Uses CUDA when present (bf16 autocast there) and the CPU otherwise; channels_last memory format
on both by default. Imports no Optuna: progress goes out through the ``on_epoch`` callback.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from biotune_optuna.config import Recipe
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.data import ImageSet
from biotune_optuna.finetune.features import Batch, FeatureCache, Features, model_input, prefix_features, replay, rows


@dataclass
class TrainResult:
    """Outcome of one fine-tuning run.

    Attributes:
        best_accuracy: validation macro accuracy at the best epoch, in [0, 1].
        best_epoch: 1-based epoch of that accuracy (0 if nothing was trained).
        history: validation macro accuracy after each epoch.
        seconds: wall time of the run.
        trainable_params, total_params: parameter counts (trainable = in a fine-tuned block).
        model: the model with the best epoch's weights loaded, in eval mode.
        cached_prefix: True if the frozen prefix ran once, from the feature cache.
    """

    best_accuracy: float
    best_epoch: int
    history: list[float]
    seconds: float
    trainable_params: int
    total_params: int
    model: nn.Module | None = field(default=None, repr=False)
    cached_prefix: bool = False

    @property
    def trainable_fraction(self) -> float:
        """Fraction of parameters fine-tuned, in [0, 1]."""
        return self.trainable_params / max(1, self.total_params)


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available else CPU; otherwise ``torch.device(device)``.

    Raises:
        ValueError: if CUDA is asked for and not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) — spec §4: right before the model is built."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def macro_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``labels`` (torchmetrics' macro
    accuracy, spec §4). Both tensors int64 of shape (N,); returns a value in [0, 1]."""
    if labels.numel() == 0:
        raise ValueError("macro accuracy of an empty set")
    classes = labels.unique()
    recalls = [(predictions[labels == c] == c).float().mean() for c in classes]
    return float(torch.stack(recalls).mean())


def configure(backbone: Backbone, lr_by_block: Mapping[str, float]) -> list[dict]:
    """Freeze and unfreeze blocks; return Adam param groups, one per fine-tuned block.

    Args:
        backbone: the model and its block partition.
        lr_by_block: learning rate of each block to fine-tune; blocks not named are frozen
            (``requires_grad=False``).

    Returns:
        ``[{"params": [...], "lr": lr, "name": block}, ...]`` in block order.

    Raises:
        ValueError: on a block name the backbone does not have.
    """
    unknown = set(lr_by_block) - set(backbone.blocks)
    if unknown:
        raise ValueError(f"unknown blocks {sorted(unknown)}; this model has {list(backbone.blocks)}")
    groups = []
    for block, params in backbone.block_parameters().items():
        train = block in lr_by_block
        for p in params:
            p.requires_grad_(train)
        if train and params:
            groups.append({"params": params, "lr": float(lr_by_block[block]), "name": block})
    return groups


def set_train_mode(model: nn.Module, backbone: Backbone, trained: set[str], frozen_bn: str) -> None:
    """``model.train()``, then every module of a frozen block back to eval mode: BatchNorm
    statistics stay fixed and dropout / stochastic depth are off, so a frozen block is a fixed
    function of its input (what the frozen-prefix cache relies on). ``frozen_bn="train"``
    (reference behaviour) leaves the whole model in train mode."""
    model.train()
    if frozen_bn == "train":
        return
    for name, module in model.named_modules():
        block = backbone.block_of(name)
        if block is not None and block not in trained:
            module.eval()


def _is_channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def main_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """The classifier's logits (N, classes) of a model's output: Inception-v3 returns
    ``(logits, aux_logits)`` in train mode, and only the main logits count (spec §2.2)."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


@torch.no_grad()
def predict(
    model: nn.Module,
    images: ImageSet,
    backbone: Backbone,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    features: Features | None = None,
) -> torch.Tensor:
    """Predicted class of every image, int64 (N,), with the model in eval mode.

    With ``features`` (the cached frozen-prefix features of ``images``, as
    :func:`biotune_optuna.features.prefix_features` gives for the validation set), only the
    blocks after the prefix run.
    """
    model.eval()
    out = []
    use_amp = amp and device.type == "cuda"
    channels_last = _is_channels_last(model)
    current = Batch()
    with replay(model, features, current) if features is not None else contextlib.nullcontext():
        for start in range(0, len(images), batch_size):
            if features is not None:
                current.rows = rows(features.val, slice(start, start + batch_size), channels_last)
                x = features.placeholder
            else:
                x = model_input(images.images[start : start + batch_size], backbone, device, channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out.append(main_logits(model(x)).argmax(1).cpu())
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    images: ImageSet,
    backbone: Backbone,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    features: Features | None = None,
) -> float:
    """Macro accuracy of ``model`` on ``images``, in [0, 1] (``features``: see :func:`predict`)."""
    return macro_accuracy(predict(model, images, backbone, device, batch_size, amp, features), images.labels)


class Method:
    """How one fine-tuning configuration sets up the shared loop (spec/baselines.md §1.11:
    every method is a trainable mask, per-group learning rates, an extra loss term and/or
    adapter modules over one training loop).

    Subclasses override what they need; the default trains nothing.
    """

    #: Display name.
    name = "method"
    #: True when the method only freezes whole blocks and trains the others as they are, so the
    #: frozen first blocks are a fixed function of the input and may be computed once
    #: (:mod:`biotune_optuna.finetune.features`). Methods that add modules or penalties: False.
    frozen_prefix_cacheable = False

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        """Set ``requires_grad`` (and add modules, e.g. adapters); return Adam param groups
        ``{"params": [...], "lr": float, "name": str}``. Called once, on the fresh model."""
        return configure(backbone, {})

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        """Blocks whose BatchNorm layers run in train mode (the others stay in eval mode)."""
        return set()

    def added_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the method added to the model (adapters): trained, but not part of the
        original model, so the trainable share is reported relative to the original."""
        return []

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term added at every step (e.g. L2-SP), or None."""
        return None

    def on_epoch_start(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    ) -> torch.optim.Optimizer | None:
        """Called before each epoch with a way to draw training batches (already on the device);
        may return a new optimizer that replaces the current one (AutoRGN)."""
        return None


class BlockLR(Method):
    """Fine-tune whole blocks, each at its own learning rate; freeze the rest (BioTune's decoded
    genome, full fine-tuning and linear probing are all of this kind; spec §3.4).

    Args:
        lr_by_block: learning rate of each fine-tuned block.
        name: display name.
    """

    frozen_prefix_cacheable = True

    def __init__(self, lr_by_block: Mapping[str, float], name: str = "block learning rates") -> None:
        self.lr_by_block = dict(lr_by_block)
        self.name = name

    def param_groups(self, backbone: Backbone, base_lr: float) -> list[dict]:
        return configure(backbone, self.lr_by_block)

    def trained_blocks(self, backbone: Backbone) -> set[str]:
        return set(self.lr_by_block)


def cosine_factor(epoch: int, t_max: int) -> float:
    """Learning-rate factor of CosineAnnealingLR (eta_min 0) at 0-based ``epoch``:
    ``(1 + cos(π·epoch/T_max))/2`` (spec §4: stepped once per epoch)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, t_max) / t_max))


def fine_tune(
    backbone: Backbone,
    method: Method | Mapping[str, float],
    train: ImageSet,
    val: ImageSet,
    recipe: Recipe,
    seed: int,
    device: torch.device | str = "auto",
    on_epoch: Callable[[int, float, float], None] | None = None,
    feature_cache: FeatureCache | None = None,
    data_key: Hashable | None = None,
) -> TrainResult:
    """Fine-tune ``backbone.model`` in place and keep its best epoch (spec §4).

    Args:
        backbone: a freshly built model (build it right after :func:`seed_everything`).
        method: a :class:`Method`, or a mapping block → learning rate (a :class:`BlockLR`:
            fine-tuned blocks; the others frozen). Nothing to train: the model is only evaluated.
        train, val: uint8 image sets (N, C, H, W) with labels.
        recipe: hyper-parameters.
        seed: fixes the shuffling order (spec §4 common random numbers).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        on_epoch: called as ``on_epoch(epoch, val_macro_accuracy, mean_train_loss)`` after each
            epoch (1-based); it may raise to stop training (e.g. ``optuna.TrialPruned``).
        feature_cache, data_key: with both, a :class:`BlockLR` whose first blocks are frozen
            trains from cached frozen-prefix features (:mod:`biotune_optuna.features`; same
            result to float tolerance). ``data_key`` must identify ``train`` and ``val``
            (e.g. dataset fingerprint and fold). Off with ``frozen_bn="train"``.

    Returns:
        A :class:`TrainResult` whose ``model`` holds the best epoch's weights.

    Raises:
        ValueError: on an empty split or an unknown block.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"empty split: {len(train)} training and {len(val)} validation images")
    method = method if isinstance(method, Method) else BlockLR(method)
    dev = pick_device(device) if isinstance(device, str) else device
    start = time.perf_counter()
    groups = method.param_groups(backbone, recipe.base_lr)  # may add adapter modules: before .to()
    added = {id(p) for p in method.added_parameters(backbone.model)}
    total = sum(p.numel() for p in backbone.model.parameters() if id(p) not in added)
    model = backbone.model.to(dev)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not groups:
        acc = evaluate(model, val, backbone, dev, recipe.eval_batch_size, recipe.amp)
        return TrainResult(acc, 0, [], time.perf_counter() - start, 0, total, model)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    trained = method.trained_blocks(backbone)
    use_amp = recipe.amp and dev.type == "cuda"
    features = None
    if feature_cache is not None and data_key is not None and method.frozen_prefix_cacheable and recipe.frozen_bn == "eval":
        features = prefix_features(
            feature_cache, data_key, backbone, trained, train, val, dev,
            recipe.eval_batch_size, recipe.channels_last, use_amp,
        )
    loop = _Loop(model, backbone, method, groups, train, recipe, dev, features, seed)
    best = _BestEpoch()
    for epoch in range(1, recipe.max_epochs + 1):
        set_train_mode(model, backbone, trained, recipe.frozen_bn)
        loss = loop.train_epoch(epoch)
        acc = evaluate(model, val, backbone, dev, recipe.eval_batch_size, recipe.amp, features)
        best.update(epoch, acc, model)
        if on_epoch is not None:
            on_epoch(epoch, acc, loss)
        if best.stale >= recipe.patience:
            break
    best.restore(model)
    model.eval()
    return TrainResult(
        best.accuracy, best.epoch, best.history, time.perf_counter() - start, trainable, total, model, features is not None
    )


class _BestEpoch:
    """Early-stopping bookkeeping: the best validation accuracy (strict improvement), its epoch
    and a copy of its weights (spec §4)."""

    def __init__(self) -> None:
        self.accuracy, self.epoch, self.stale = -1.0, 0, 0
        self.history: list[float] = []
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, accuracy: float, model: nn.Module) -> None:
        self.history.append(accuracy)
        if accuracy > self.accuracy:
            self.accuracy, self.epoch, self.stale = accuracy, epoch, 0
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights, unless the model already holds them (last epoch best)."""
        if self.epoch != len(self.history) and self._state is not None:
            model.load_state_dict(self._state)


class _Loop:
    """One fine-tuning run's optimizer, batches and epoch step."""

    def __init__(
        self, model: nn.Module, backbone: Backbone, method: Method, groups: list[dict], train: ImageSet,
        recipe: Recipe, device: torch.device, features: Features | None, seed: int,
    ) -> None:
        self.model, self.backbone, self.method, self.train = model, backbone, method, train
        self.recipe, self.device, self.features = recipe, device, features
        self.use_amp = recipe.amp and device.type == "cuda"
        # fused: one kernel for all parameters (about 4× faster steps on CPU than the per-tensor
        # default, same values); torch has it for CPU and CUDA tensors.
        self.optimizer = torch.optim.Adam(
            groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=device.type in ("cpu", "cuda")
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.shuffle = torch.Generator().manual_seed(seed)
        self.current = Batch()

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input, labels) on the device, in ``order``; from cached features when there are any."""
        recipe, features = self.recipe, self.features
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            if features is not None:  # read by the replay hook when the model runs on x
                self.current.rows = rows(features.train, idx.to(features.train.device), recipe.channels_last)
                x = features.placeholder
            else:
                x = model_input(self.train.images[idx], self.backbone, self.device, recipe.channels_last)
            yield x, self.train.labels[idx].to(self.device, non_blocking=True)

    def _shuffled(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(torch.randperm(len(self.train), generator=self.shuffle))

    def train_epoch(self, epoch: int) -> float:
        """One epoch (1-based): the method's epoch hook, the cosine learning rate, every batch.
        Returns the mean training loss."""
        # A fresh shuffle each epoch, like the official AutoRGN loader (only methods that draw move the stream).
        replaced = self.method.on_epoch_start(self.model, self.optimizer, self._shuffled)
        if replaced is not None:
            self.optimizer = replaced
        if replaced is not None or epoch == 1:
            for group in self.optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        factor = cosine_factor(epoch - 1, self.recipe.cosine_t_max)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        losses = []
        replaying = replay(self.model, self.features, self.current) if self.features is not None else contextlib.nullcontext()
        with replaying:
            for x, y in self._shuffled():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                    loss = self.loss_fn(main_logits(self.model(x)).float(), y)
                extra = self.method.penalty(self.model)
                if extra is not None:
                    loss = loss + extra
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(loss.detach())
        return float(torch.stack(losses).mean())
