"""Frozen-prefix feature cache: train only what a genome fine-tunes.

When the first k blocks of a model are frozen and run in eval mode (BatchNorm statistics fixed,
dropout and stochastic depth off — see :func:`biotune_optuna.training.set_train_mode`), and the
input has no random augmentation, their output is a fixed function of the image. It is computed
once per (weights, dataset fingerprint, fold, first trained block, resolution, precision) and
every later epoch, seed and trial on the same fold feeds it straight to block k: the trained model
and its accuracy are those of the uncached loop, to float tolerance (tests/test_features.py).

How the model is cut, for any architecture (no per-model code):

1. One traced forward (eval mode, one image) lists modules in call order. The *boundary* is the
   first module called that belongs to the first trained block; every module of the frozen
   blocks must be called before it, and none of a later block (:func:`find_split`). Models
   where this fails (a block reused later, cross-block skips) are trained without the cache.
2. Features = the input the boundary receives, captured by a forward pre-hook that stops the
   forward there (nothing after it is computed).
3. Replay (:func:`replay`): the frozen modules pass their input through unchanged, and the
   pre-hook on the boundary swaps in the cached features of the current batch. Parameter-free
   glue between them (a ReLU, a pooling layer) still runs, on a zero placeholder, and is
   discarded.
4. Before a cache entry is used, the replayed model's eval output on a few images is checked
   against the full model's; a mismatch (a model that does something the trace cannot see)
   disables the cache for that model and block, with a warning.

Memory: entries live on the training device; :class:`FeatureCache` evicts the least recently
used entries to stay under ``max_bytes`` and skips (trains uncached) any entry larger than that.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from biotune_optuna.config import check_int
from biotune_optuna.finetune.backbones import Backbone
from biotune_optuna.finetune.data import ImageSet, to_input

_logger = logging.getLogger(__name__)

#: Default memory budget of a worker's feature cache (bytes).
DEFAULT_MAX_BYTES = 2 * 1024**3


class _Stop(Exception):
    """Raised by the capture hook to end a forward at the boundary."""


@dataclass(frozen=True)
class Split:
    """Where a model is cut.

    Attributes:
        first_trained: the first trained block (index k in ``backbone.blocks``, k ≥ 1).
        boundary: name of the first module of that block to run; its input is the feature.
        frozen: outermost modules wholly inside blocks[:k] (they pass their input through
            during replay).
        feature_shape: shape of one image's feature (without the batch dimension).
        itemsize: bytes per feature value (4 for float32, 2 under bf16 autocast).
    """

    first_trained: str
    boundary: str
    frozen: tuple[str, ...]
    feature_shape: tuple[int, ...]
    itemsize: int

    def nbytes(self, n_images: int) -> int:
        """Bytes the features of ``n_images`` images take."""
        return n_images * self.itemsize * math.prod(self.feature_shape)


def find_split(backbone: Backbone, first_trained: str, example: torch.Tensor, autocast: bool = False) -> Split | None:
    """Cut ``backbone.model`` before block ``first_trained``, or None where it cannot be cut.

    Args:
        backbone: the model and its blocks.
        first_trained: a block name; blocks before it are the frozen prefix.
        example: one normalised input, shape (1, 3, H, W), on the model's device.
        autocast: trace under bf16 autocast (as training on CUDA does), so that the recorded
            feature dtype is the one training will see.

    Returns:
        The :class:`Split`, or None for the first block (nothing to cache) or a model whose
        call order does not put every frozen module before the boundary.

    Raises:
        ValueError: on a block the backbone does not have.
    """
    if first_trained not in backbone.blocks:
        raise ValueError(f"unknown block {first_trained!r}; this model has {list(backbone.blocks)}")
    k = backbone.blocks.index(first_trained)
    if k == 0:
        return None
    order: list[tuple[str, torch.Tensor | None]] = []

    def record(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            order.append((name, args[0] if args and isinstance(args[0], torch.Tensor) else None))

        return hook

    model = backbone.model
    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if name]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.autocast(example.device.type, dtype=torch.bfloat16, enabled=autocast):
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    inputs = dict(reversed(order))  # first call of each module → its input
    calls = list(dict.fromkeys(name for name, _ in order))
    rank = {b: i for i, b in enumerate(backbone.blocks)}
    blocks = {name: backbone.block_of(name) for name in calls}
    boundary = next((n for n in calls if blocks[n] == first_trained), None)
    if boundary is None or inputs[boundary] is None:
        return None
    at = calls.index(boundary)
    if any(blocks[n] is not None and rank[blocks[n]] < k for n in calls[at:]):
        return None  # a frozen module runs after the boundary (e.g. a skip across blocks)
    if any(blocks[n] is not None and rank[blocks[n]] > k for n in calls[:at]):
        return None  # a later block runs before it
    prefix = {n for n in calls[:at] if blocks[n] is not None and rank[blocks[n]] < k}
    frozen = tuple(n for n in calls[:at] if n in prefix and n.rpartition(".")[0] not in prefix)
    feature = inputs[boundary]
    return Split(first_trained, boundary, frozen, tuple(feature.shape[1:]), feature.element_size())


def _passthrough(x, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
    return x


@contextlib.contextmanager
def _cut(model: nn.Module, split: Split, hook: Callable) -> Iterator[None]:
    modules = dict(model.named_modules())
    handle = modules[split.boundary].register_forward_pre_hook(hook)
    for name in split.frozen:
        modules[name].forward = _passthrough  # instance attribute: shadows the class's forward
    try:
        yield
    finally:
        handle.remove()
        for name in split.frozen:
            del modules[name].forward


@dataclass
class Features:
    """Cached boundary inputs of one (model, data, block).

    Attributes:
        split: where the model is cut.
        train, val: features of every training / validation image, in set order; shape
            (N, ...) — e.g. (N, C, h, w) inside a CNN, (N, D) before a classifier.
        placeholder: zero input of shape (1, C, H, W) fed to the model during replay.
    """

    split: Split
    train: torch.Tensor
    val: torch.Tensor
    placeholder: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes."""
        return sum(t.untyped_storage().nbytes() for t in (self.train, self.val, self.placeholder))


class Batch:
    """The features the boundary receives next (set before each forward)."""

    rows: torch.Tensor | None = None


@contextlib.contextmanager
def replay(model: nn.Module, features: Features, current: Batch) -> Iterator[None]:
    """Inside, ``model(features.placeholder)`` runs only the blocks from the boundary on, fed
    with ``current.rows`` (the cached features of the current batch)."""

    def swap(module: nn.Module, args: tuple) -> tuple:
        return (current.rows, *args[1:])

    with _cut(model, features.split, swap):
        yield


def compute_features(
    backbone: Backbone,
    split: Split,
    train: ImageSet,
    val: ImageSet,
    device: torch.device,
    batch_size: int,
    channels_last: bool,
    autocast: bool,
) -> Features:
    """Run the frozen prefix once over ``train`` and ``val`` (eval mode, no grad), in batches
    of ``batch_size``.

    Returns:
        :class:`Features` on ``device``; dtype as the boundary receives it (float32, or
        bfloat16 under CUDA autocast).
    """
    model = backbone.model
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise _Stop

    def run(images: ImageSet) -> torch.Tensor:
        captured.clear()
        for start in range(0, len(images), batch_size):
            x = model_input(images.images[start : start + batch_size], backbone, device, channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                try:
                    model(x)
                except _Stop:
                    pass
        return torch.cat(captured)

    was_training = model.training
    model.eval()
    handle = dict(model.named_modules())[split.boundary].register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            train_f, val_f = run(train), run(val)
    finally:
        handle.remove()
        model.train(was_training)
    # One zero image, whatever the batch: the frozen modules only pass it on to parameter-free
    # glue layers (ReLU, pooling), and the boundary swaps in the batch's features.
    placeholder = torch.zeros_like(model_input(train.images[:1], backbone, device, channels_last))
    return Features(split, train_f, val_f, placeholder)


def model_input(images: torch.Tensor, backbone: Backbone, device: torch.device, channels_last: bool) -> torch.Tensor:
    """The model's input for a batch of stored images: uint8 (B, 1|3, H, W) on any device →
    float32 (B, 3, H, W) on ``device``, normalised with the backbone's mean/std
    (:func:`biotune_optuna.data.to_input`), channels_last if asked. The uint8 batch is moved
    first (a quarter of the bytes of float32 over PCIe) and normalised on ``device``."""
    x = to_input(images.to(device, non_blocking=True), backbone.mean, backbone.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def rows(features: torch.Tensor, index: torch.Tensor | slice, channels_last: bool) -> torch.Tensor:
    """Rows of a feature tensor for one batch, in the memory format the model expects."""
    out = features[index]
    if channels_last and out.dim() == 4:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def matches_full_model(
    backbone: Backbone, features: Features, images: ImageSet, device: torch.device, channels_last: bool, autocast: bool
) -> bool:
    """True if replaying ``features`` gives the full model's eval logits on the first
    (up to 8) images of ``images`` — the guard of step 4 in the module doc."""
    model = backbone.model
    n = min(8, len(images))
    was_training = model.training
    model.eval()
    current = Batch()
    current.rows = rows(features.val, slice(0, n), channels_last)
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            full = _first(model(model_input(images.images[:n], backbone, device, channels_last))).float()
            with replay(model, features, current):
                cached = _first(model(features.placeholder)).float()
    except RuntimeError:  # the placeholder reached a layer it should not have (shape mismatch)
        return False
    finally:
        model.train(was_training)
    tol = 2e-2 if autocast else 1e-4
    return full.shape == cached.shape and torch.allclose(full, cached, rtol=tol, atol=tol * max(1.0, float(full.abs().max())))


def _first(output: torch.Tensor | tuple) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


class FeatureCache:
    """Frozen-prefix features of one worker process, bounded in memory, shared by its threads.

    Args:
        max_bytes: memory budget (bytes, ≥ 0; 0 turns the cache off). Least recently used
            entries are evicted to make room; an entry larger than the budget is not kept.

    Attributes:
        hits, misses, skipped: lookups served from memory, computed, and refused (too large,
            or the model could not be cut); ``peak_bytes``: the most memory held at once.

    Raises:
        ValueError: on a negative budget.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        check_int("feature cache size in bytes", max_bytes, 0)
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, Features] = OrderedDict()
        self._refused: set[Hashable] = set()
        self._lock = threading.Lock()
        self.hits = self.misses = self.skipped = self.peak_bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached features now."""
        return sum(f.nbytes for f in self._entries.values())

    def get(self, key: Hashable, prepare: Callable[[], tuple[int, Callable[[], Features | None]] | None]) -> Features | None:
        """The entry for ``key``; on a miss, ``prepare()`` gives (bytes needed, compute) or None
        (the model cannot be cut), room is made, and ``compute()`` builds the entry (None if it
        fails the exactness check). Refusals are remembered per key.

        Returns:
            The features, or None: off, too large for the budget, or the model cannot be cut.
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            plan = None if key in self._refused or self.max_bytes == 0 else prepare()
            if plan is not None and plan[0] > self.max_bytes:
                _logger.info("frozen-prefix features need %.0f MB, over the cache's %.0f MB: training uncached",
                             plan[0] / 2**20, self.max_bytes / 2**20)
                plan = None
            if plan is not None:
                self._make_room(plan[0])
            features = plan[1]() if plan is not None else None
            if features is None or features.nbytes > self.max_bytes:
                self._refused.add(key)
                self.skipped += 1
                return None
            self._make_room(features.nbytes)
            self.misses += 1
            self._entries[key] = features
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
            return features


    def _make_room(self, need: int) -> None:
        while self._entries and self.nbytes + need > self.max_bytes:
            self._entries.popitem(last=False)


def prefix_signature(backbone: Backbone, first_trained: str) -> str:
    """sha256 hex of the weights and buffers of the blocks before ``first_trained`` (what the
    cached features are a function of): other weights, same file name or not, give another key."""
    k = backbone.blocks.index(first_trained)
    prefix = set(backbone.blocks[:k])
    digest = hashlib.sha256(backbone.name.encode())
    for name, tensor in backbone.model.state_dict().items():
        if backbone.block_of(name) in prefix:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prefix_features(
    cache: FeatureCache,
    data_key: Hashable,
    backbone: Backbone,
    trained: set[str],
    train: ImageSet,
    val: ImageSet,
    device: torch.device,
    batch_size: int,
    channels_last: bool,
    autocast: bool,
) -> Features | None:
    """Cached features of the frozen prefix in front of the first trained block.

    Args:
        cache: the worker's cache.
        data_key: identifies ``train`` and ``val`` (dataset fingerprint, fold, number of folds);
            the key also holds :func:`prefix_signature`, the resolution, device and precision.
        trained: the blocks that will be fine-tuned (every other block frozen, in eval mode).
        train, val: the images (uint8 (N, C, H, W)).
        device, channels_last, autocast: as training will run.
        batch_size: batch size of the feature pass.

    Returns:
        :class:`Features`, or None when the first block is trained, nothing is trained, the
        model cannot be cut there, or the features do not fit in the cache.
    """
    first = next((b for b in backbone.blocks if b in trained), None)
    if first is None or first == backbone.blocks[0]:
        return None
    key = (prefix_signature(backbone, first), data_key, first, tuple(train.images.shape[1:]), str(device), channels_last, autocast)

    def prepare() -> tuple[int, Callable[[], Features | None]] | None:
        example = model_input(train.images[:1], backbone, device, channels_last)
        split = find_split(backbone, first, example, autocast)
        if split is None:
            _logger.warning("%s cannot be cut before block %s: frozen-prefix cache off for it", backbone.name, first)
            return None

        def compute() -> Features | None:
            features = compute_features(backbone, split, train, val, device, batch_size, channels_last, autocast)
            if not matches_full_model(backbone, features, val, device, channels_last, autocast):
                _logger.warning("%s: replayed features before %s differ from the full model: cache off for it",
                                backbone.name, first)
                return None
            return features

        return split.nbytes(len(train) + len(val)) + example.numel() * 4, compute

    return cache.get(key, prepare)
