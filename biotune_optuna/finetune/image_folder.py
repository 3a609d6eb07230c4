"""Image folders: ``PATH/{train,val,test}/<class>/<image>`` (val and test optional) or
``PATH/<class>/<image>``.

Unreadable image files (empty, not an image, truncated, corrupt) are found in the one pass that
decodes the images a split draws: each is left out, the split is drawn again without it (so the
sizes and the stratification hold), and the images newly drawn are decoded, until every image
drawn decodes. :class:`Decoded.skipped <biotune_optuna.finetune.sources.Decoded>` names them;
``load_dataset`` warns once or, with ``strict=True``, refuses. Removing the named files and
loading again gives the same splits, with nothing to skip.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from biotune_optuna.config import DataError, DatasetSpec
from biotune_optuna.finetune.fingerprint import describe_unreadable
from biotune_optuna.finetune.sources import Decoded, Source, first_line, progress, read_bytes
from biotune_optuna.finetune.splitting import PARTS, ImageSet, Picks, SizeError, split_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
#: The sha256 recorded for a file that could not even be read (permissions, I/O error).
UNREADABLE = "unreadable"
_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
Listing = dict[str, list[tuple[Path, int]]]


class Unreadable(Exception):
    """An image file that cannot be decoded; the message is the reason, one line."""


class FolderSource(Source):
    """An image folder (module doc); files are read and decoded only for the images a split draws."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec, self.root = spec, Path(spec.path)
        if not self.root.exists():
            raise DataError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} is not a directory")
        self.classes, self.listing = _list_folder(self.root)
        self.labels = _labels(self.listing)
        self.hashes: dict[str, str] = {}
        self.read_errors: dict[str, str] = {}

    def name(self, path: Path) -> str:
        """The file's name in ``Splits.files``: its path relative to the folder, with ``/``."""
        return path.relative_to(self.root).as_posix()

    def hash_files(self, picks: Picks) -> dict[str, str]:
        paths = _drawn(picks, self.listing)
        self._hash(paths)
        return {self.name(p): self.hashes[self.name(p)] for p in paths}

    def rehash(self, names: Iterable[str]) -> dict[str, str]:
        return {n: _sha256_or_unreadable(self.root / n)[0] for n in names}

    def decode(self, picks: Picks) -> Decoded:
        """Decode the drawn images, leaving out (and drawing again without) unreadable ones.

        Raises:
            DataError: an image file changed since it was hashed; or, once unreadable files are
                left out, the split no longer works (a class without images, a size too large;
                the message lists what was left out).
        """
        listing, arrays, bad = self.listing, {}, {}
        while True:
            todo = [p for p in _drawn(picks, listing) if self.name(p) not in arrays]
            self._hash(todo)
            new_bad = self._decode_into(todo, arrays)
            if not new_bad:
                break
            bad.update(new_bad)
            listing = {part: [(p, c) for p, c in items if self.name(p) not in bad] for part, items in self.listing.items()}
            try:
                picks = split_indices(self.spec, _labels(listing), self.classes)
            except DataError as e:
                raise _after_leaving_out(e, bad) from None
        files = {n: self.hashes[n] for n in sorted(set(arrays) | set(bad))}
        return Decoded(self._assemble(picks, listing, arrays), files, dict(sorted(bad.items())))

    def _hash(self, paths: list[Path]) -> None:
        for path in progress(paths, len(paths), f"hashing {self.root.name}"):
            name = self.name(path)
            if name not in self.hashes:
                self.hashes[name], error = _sha256_or_unreadable(path)
                if error:
                    self.read_errors[name] = error

    def _decode_into(self, paths: list[Path], arrays: dict[str, np.ndarray]) -> dict[str, str]:
        """Decode ``paths`` into ``arrays`` (by name); returns the unreadable ones: name -> why."""
        bad = {}
        for path in progress(paths, len(paths), f"decoding {self.root.name}"):
            name = self.name(path)
            if name in self.read_errors:
                bad[name] = self.read_errors[name]
                continue
            try:
                arrays[name] = decode_image(path, self.spec.image_size, self.hashes[name])
            except Unreadable as e:
                bad[name] = str(e)
        return bad

    def _assemble(self, picks: Picks, listing: Listing, arrays: dict[str, np.ndarray]) -> dict[str, ImageSet]:
        """The parts as tensors: grayscale (C = 1) when every drawn image is, else RGB (C = 3)."""
        chosen = {part: [listing[src][i] for i in idx] for part, (src, idx) in picks.items()}
        gray = all(arrays[self.name(p)].ndim == 2 for items in chosen.values() for p, _ in items)
        size, parts = self.spec.image_size, {}
        for part in PARTS:
            block = [arrays[self.name(p)] for p, _ in chosen[part]]
            if not gray:
                block = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in block]
            if block:
                x = torch.from_numpy(np.stack(block))
                x = x[:, None] if gray else x.permute(0, 3, 1, 2).contiguous()
            else:
                x = torch.zeros((0, 1 if gray else 3, size, size), dtype=torch.uint8)
            parts[part] = ImageSet(x, torch.tensor([c for _, c in chosen[part]], dtype=torch.int64))
        return parts


def _drawn(picks: Picks, listing: Listing) -> list[Path]:
    """The files ``picks`` draws, in train, val, test order."""
    return [listing[picks[part][0]][i][0] for part in PARTS for i in picks[part][1]]


def _labels(listing: Listing) -> dict[str, np.ndarray]:
    return {part: np.array([c for _, c in items], dtype=np.int64) for part, items in listing.items()}


def _sha256_or_unreadable(path: Path) -> tuple[str, str | None]:
    """(sha256 hex of the file's bytes, None), or (:data:`UNREADABLE`, why) if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest(), None
    except OSError as e:
        return UNREADABLE, f"cannot read: {e.strerror or type(e).__name__}"


def _list_folder(root: Path) -> tuple[list[str], Listing]:
    """Class names and, per split folder present, its image files (sorted) as (path, label)."""
    if (root / "train").is_dir():
        classes, train_files = _scan_classes(root / "train", None)
        listing = {"train": train_files}
        for part in ("val", "test"):
            if (root / part).exists():
                if not (root / part).is_dir():
                    raise DataError(f"{root / part} is not a directory")
                listing[part] = _scan_classes(root / part, classes)[1]
    else:
        classes, train_files = _scan_classes(root, None)
        listing = {"train": train_files}
    if len(classes) < 2:
        where = root / "train" if (root / "train").is_dir() else root
        raise DataError(f"image folder {where} has {len(classes)} class folder(s); at least 2 are needed")
    return classes, listing


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


def decode_image(path: Path, size: int, sha256: str) -> np.ndarray:
    """Decode, resize (shorter side, antialiased) and center-crop one image file.

    Returns a uint8 array (size, size) for mode 'L' or (size, size, 3) otherwise.

    Raises:
        Unreadable: the file cannot be read or decoded (the reason, one line, no object reprs).
        DataError: its bytes no longer match ``sha256``, the hash taken before (for the
            fingerprint): it changed meanwhile, so a cache entry always holds the images its
            fingerprint names.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        raw = read_bytes(path, "image file")
    except DataError as e:
        raise Unreadable(str(e)) from None
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"image file {path} changed while the dataset was loading; load it again")
    if not raw:
        raise Unreadable("empty file")
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
    except UnidentifiedImageError:
        raise Unreadable("not an image in a format PIL reads") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise Unreadable(_ADDRESS.sub("", first_line(e))) from None


def _after_leaving_out(error: DataError, bad: dict[str, str]) -> DataError:
    """``error`` (from splitting again) with what was left out said, keeping a SizeError's type."""
    note = f" after leaving out {describe_unreadable(bad)}"
    if isinstance(error, SizeError):
        return SizeError(error.name, error.requested, error.available, error.what + note)
    return DataError(f"{error}{note}")
