"""Loaded datasets and how they are cut: the :class:`ImageSet` / :class:`Splits` types, the
class-stratified seeded train / val / test split of a source (defaults in finetune/data.py), and
the stratified folds of the search (spec/biotune-algorithm.md §5.1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from biotune_optuna.config import DataError, DatasetSpec

#: Fractions of the source training split carved off when a split is missing (data.py's doc).
CARVE = {
    "mnist": {"val": 1 / 6},
    "fashion-mnist": {"val": 1 / 6},
    "digits": {"test": 0.2, "val": 0.2},
    "folder": {"test": 0.15, "val": 0.15},
}
PARTS = ("train", "val", "test")
#: part -> (source split it is drawn from, sorted positions in that source split)
Picks = dict[str, tuple[str, np.ndarray]]


@dataclass
class ImageSet:
    """Images and labels of one split.

    Attributes:
        images: uint8 tensor (N, C, H, W), values 0..255, C = 1 (grayscale) or 3 (RGB),
            H = W = ``image_size``.
        labels: int64 tensor (N,), values in [0, n_classes).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSet:
        """The images at ``indices`` (positions in this set), in that order."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        return ImageSet(self.images[idx], self.labels[idx])


@dataclass
class Splits:
    """A loaded dataset.

    Attributes:
        train, val, test: the three splits (disjoint).
        classes: class names; label ``i`` is ``classes[i]``.
        fingerprint: sha256 hex over the source files' sha256, the spec (without ``path``, so
            the same files elsewhere give the same value) and the names of the unreadable files
            skipped; same data and spec -> same value (finetune/fingerprint.py).
        files: source file name (relative to the dataset folder, or a name such as
            ``"sklearn:digits"``) -> sha256 of its bytes, for every file the load read
            (skipped ones included); comparing two of these names the file that differs.
        skipped: unreadable image files left out (name as in ``files`` -> why, one line).
        spec: the spec the splits were built from (sizes a preset asked for beyond what the
            dataset has are None here: see ``load_dataset(fit=)``).
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    fingerprint: str
    files: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)
    spec: DatasetSpec | None = None


class SizeError(DataError):
    """A size (``train_size``, ``val_size`` or ``test_size``) larger than what the dataset has.

    Attributes:
        name: the size's field name, e.g. ``"train_size"``.
        requested: the size asked for.
        available: the most that can be given.
        what: what is available, for the message ("the 838 train images available in digits …").
    """

    def __init__(self, name: str, requested: int, available: int, what: str) -> None:
        self.name, self.requested, self.available, self.what = name, requested, available, what
        super().__init__(self.worded(name))

    def worded(self, option: str) -> str:
        """The message, naming the size as ``option`` (the command line says ``--train-size``)."""
        asked = f"{option} {self.requested}" if option.startswith("--") else f"{option}={self.requested}"
        return f"{asked} is larger than {self.what}; lower {option} to at most {self.available}"


# --------------------------------------------------------------------------------------------
# Splitting and subsampling
# --------------------------------------------------------------------------------------------


def split_indices(spec: DatasetSpec, sources: dict[str, np.ndarray], classes: Sequence[str]) -> Picks:
    """Decide which source items form train / val / test (defaults: finetune/data.py's doc).

    Args:
        spec: sizes and seed (``spec.path or spec.name`` names the data in messages).
        sources: "train" (required), "val", "test" -> label array of each split the dataset has.
        classes: class names (their count is the number of labels).

    Returns:
        part -> (source split name, sorted positions in that source split), for all three parts.

    Raises:
        SizeError: a size larger than what is available.
        DataError: a class with too few training images to carve the missing splits from.
    """
    rng = {part: np.random.default_rng([spec.seed, k]) for k, part in enumerate(("test", "val", "train"))}
    carve = [p for p in ("test", "val") if p not in sources]
    _check_class_sizes(spec, sources["train"], classes, carve)
    picks = _carve(spec, sources["train"], len(classes), carve, rng)
    for part in ("val", "test"):
        if part in sources:
            picks[part] = (part, np.arange(len(sources[part])))
    caps = {"train": spec.train_size, "val": spec.val_size if "val" in sources else None, "test": spec.test_size}
    where = spec.path or spec.name
    for part, cap in caps.items():
        src, idx = picks[part]
        if cap is None:
            continue
        if cap > len(idx):
            carved = ", ".join(f"{len(picks[p][1])} for {p}" for p in carve)
            extra = f" (after carving {carved})" if carve and part == "train" else ""
            raise SizeError(f"{part}_size", cap, len(idx), f"the {len(idx)} {part} images available in {where}{extra}")
        picks[part] = (src, idx[stratified_pick(sources[src][idx], cap, len(classes), rng[part])])
    return {part: picks[part] for part in PARTS}


def _check_class_sizes(spec: DatasetSpec, labels: np.ndarray, classes: Sequence[str], carve: list[str]) -> None:
    """Every class needs one training image plus one per carved part (DataError naming it)."""
    counts = np.bincount(labels, minlength=len(classes))
    need = 1 + len(carve)
    for c in np.flatnonzero(counts < need):
        if counts[c] == 0 and not carve:
            continue  # a class absent from a given train split cannot be helped; nothing to split
        raise DataError(
            f"class {classes[c]!r} has {counts[c]} training image(s) in {spec.path or spec.name}; "
            f"at least {need} are needed to split it into train/{'/'.join(reversed(carve))}"
        )


def _carve(spec: DatasetSpec, labels: np.ndarray, k: int, carve: list[str], rng: dict) -> Picks:
    """Carve the missing parts (``carve``, in that order) off the training split; the rest is train."""
    remaining = np.arange(len(labels))
    picks: Picks = {}
    for i, part in enumerate(carve):
        sub = labels[remaining]
        # keep one image per class for each later carved part and for train
        caps = np.maximum(np.bincount(sub, minlength=k) - (len(carve) - i), 0)
        requested = spec.val_size if part == "val" else None
        if requested is not None:
            if requested > caps.sum():
                raise SizeError(
                    "val_size", requested, int(caps.sum()),
                    f"the {caps.sum()} images available for validation in {spec.path or spec.name} (one per class stays in train)",
                )
            n = requested
        else:
            n = round(CARVE[spec.name][part] * len(labels))
            n = min(max(n, int((caps > 0).sum())), int(caps.sum()))
        chosen = stratified_pick(sub, n, k, rng[part], caps)
        picks[part] = ("train", remaining[chosen])
        remaining = np.delete(remaining, chosen)
    picks["train"] = ("train", remaining)
    return picks


def fit_sizes(spec: DatasetSpec, sources: dict[str, np.ndarray], classes: Sequence[str], names: Sequence[str]) -> DatasetSpec:
    """``spec`` with each size in ``names`` that asks for more than the dataset's default split
    gives set to None (that default). The carved ``val_size`` is settled first, as it decides
    what is left for train; sizes not in ``names`` count as given.

    The command line passes the sizes that came from a preset, so ``--preset quick`` (2,400
    training images) on ``digits`` (1,079 by default) takes all there is instead of failing.

    Raises:
        SizeError, DataError: as :func:`split_indices`, for the sizes not in ``names``.
    """
    soft = {n for n in names if getattr(spec, n) is not None}
    for group in (("val_size",), ("train_size", "test_size")):
        base = dataclasses.replace(spec, **{n: None for n in soft})
        available = {f"{part}_size": len(idx) for part, (_, idx) in split_indices(base, sources, classes).items()}
        spec = dataclasses.replace(spec, **{n: None for n in group if n in soft and getattr(spec, n) > available[n]})
        soft -= set(group)
    return spec


def allocate(counts: np.ndarray, n: int, caps: np.ndarray | None = None) -> np.ndarray:
    """Split ``n`` among classes in proportion to ``counts`` (largest remainder).

    Each class gets at most ``caps`` (default ``counts``) and, when ``n`` is at least the number
    of classes that can give one, at least 1.
    """
    counts = np.asarray(counts, dtype=np.int64)
    caps = counts.copy() if caps is None else np.minimum(np.asarray(caps, dtype=np.int64), counts)
    if n > caps.sum():
        raise ValueError(f"cannot take {n} items from {caps.sum()}")
    quota = n * counts / max(counts.sum(), 1)
    alloc = np.minimum(np.floor(quota).astype(np.int64), caps)
    floor = (caps > 0).astype(np.int64) if n >= (caps > 0).sum() else np.zeros_like(caps)
    alloc = np.maximum(alloc, floor)
    while alloc.sum() < n:  # give to the most under-served class that can still take one
        room = np.where(alloc < caps, quota - alloc, -np.inf)
        alloc[int(np.argmax(room))] += 1
    while alloc.sum() > n:  # take from the most over-served class above its floor
        over = np.where(alloc > floor, alloc - quota, -np.inf)
        alloc[int(np.argmax(over))] -= 1
    return alloc


def stratified_pick(
    labels: np.ndarray, n: int, n_classes: int, rng: np.random.Generator, caps: np.ndarray | None = None
) -> np.ndarray:
    """Sorted positions of a stratified random sample of ``n`` items of ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    alloc = allocate(counts, n, caps)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: alloc[c]] for c in range(n_classes)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Folds (spec §5.1)
# --------------------------------------------------------------------------------------------


def stratified_folds(labels: Sequence[int], n_folds: int) -> list[list[int]]:
    """Disjoint class-stratified folds in dataset order (spec §5.1, imbalance fixed).

    Per class, its indices (in dataset order, no shuffling) are cut into ``n_folds`` contiguous
    chunks whose sizes differ by at most 1 (larger chunks first); fold ``f`` is the sorted union
    of every class's chunk ``f``. The reference sized all classes' chunks by class 0's count
    and gave the remainder to the last fold; here each class is cut by its own count.

    Args:
        labels: class label of each item (any hashable ints).
        n_folds: number of folds, >= 1 (the reference: ``ceil(1 / train_split_pct)``).

    Returns:
        ``n_folds`` sorted index lists that are disjoint and cover ``range(len(labels))``.

    Raises:
        ValueError: ``n_folds`` < 1, or a class with fewer than ``n_folds`` items (named).

    Example:
        >>> stratified_folds([0, 0, 0, 1, 1], 2)
        [[0, 1, 3], [2, 4]]
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise ValueError(f"n_folds must be an integer >= 1, got {n_folds!r}")
    labels = np.asarray(torch.as_tensor(labels).cpu()) if isinstance(labels, torch.Tensor) else np.asarray(labels)
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n_folds:
            raise ValueError(f"class {c.item()!r} has {len(idx)} item(s), fewer than n_folds={n_folds}")
        for f, chunk in enumerate(np.array_split(idx, n_folds)):
            folds[f] += chunk.tolist()
    return [sorted(f) for f in folds]


def fold_split(splits: Splits, fold: int, n_folds: int) -> tuple[ImageSet, ImageSet]:
    """(train part, val part) of fold ``fold``: the same-index stratified fold of the train and
    of the val split (spec §5.1; the search uses ``fold = generation mod n_folds``).

    Raises:
        ValueError: ``fold`` outside [0, n_folds), or as :func:`stratified_folds`.
    """
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
    train = splits.train.subset(stratified_folds(splits.train.labels, n_folds)[fold])
    val = splits.val.subset(stratified_folds(splits.val.labels, n_folds)[fold])
    return train, val
