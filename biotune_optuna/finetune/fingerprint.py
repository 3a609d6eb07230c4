"""Dataset fingerprints, and naming the files that differ between a worker and its study.

The fingerprint (:func:`fingerprint`) is a sha256 over every file a load read (name and sha256
of its bytes), the spec without its ``path``, and the names of the unreadable files it left out,
so two machines agree on it exactly when they build the same splits.

A study keeps what its dataset's files were, so that a worker whose data differ can say which
file (:func:`study_record`): for up to :data:`~biotune_optuna.config.MAX_LISTED_FILES` files
the plain list (name -> sha256); above that a :class:`FileSketch`, an invertible Bloom lookup
table of the (name, content) pairs: 128 cells, about 4.5 KB in the study whatever the number of
files, from which the difference of two sketches names up to ~40 changed files (a changed file
is two entries: its old and its new content; of more, some are named and the rest counted as more). Figures for 60,000 files
are in bench/README.md (``bench/dataset_fingerprint.py``).

Pure Python (no torch): the worker's check and the bench use it alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import zlib
from collections.abc import Mapping

from biotune_optuna.config import MAX_LISTED_FILES, DatasetSpec

#: Bump when loading/resizing changes the tensors produced from the same files (it keys the cache too).
_FINGERPRINT_VERSION = 1
#: Names shown at most in one refusal.
_SHOWN = 10


def fingerprint(spec: DatasetSpec, files: Mapping[str, str], skipped: Mapping[str, str] | None = None) -> str:
    """sha256 hex over ``files`` (name -> sha256), ``spec`` without ``path`` and the names of the
    ``skipped`` (unreadable) files. Without skipped files it is the value of earlier releases,
    so their studies keep working."""
    h = hashlib.sha256(f"biotune-data-v{_FINGERPRINT_VERSION}\n".encode())
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    d = spec.to_dict()
    d.pop("path")
    h.update(json.dumps(d, sort_keys=True).encode())
    if not skipped:
        return h.hexdigest()
    return hashlib.sha256(f"{h.hexdigest()}\nunreadable\n{chr(10).join(sorted(skipped))}".encode()).hexdigest()


class FileSketch:
    """An invertible Bloom lookup table of (file name, content) pairs (Goodrich & Mitzenmacher 2011).

    Each pair is added to one cell in each of 4 sub-tables of :attr:`WIDTH` cells: the cell's
    count goes up by one, and the pair's key (8 bytes of its content hash, then its name in
    UTF-8) and a 64-bit check of that key are XORed into it. Subtracting two sketches cancels
    every pair both hold; the cells left holding exactly one pair (count ±1, check matching)
    give it back, name included, and removing it frees more cells ("peeling").
    """

    WIDTH = 32
    HASHES = 4

    def __init__(self) -> None:
        size = self.WIDTH * self.HASHES
        self.count, self.key, self.check = [0] * size, [0] * size, [0] * size

    @classmethod
    def of(cls, files: Mapping[str, str]) -> FileSketch:
        """The sketch of ``files`` (name -> sha256 hex, or any text standing for the content)."""
        sketch = cls()
        for name, sha in files.items():
            key = hashlib.sha256(sha.encode()).digest()[:8] + name.encode("utf-8", "surrogateescape")
            sketch._toggle(int.from_bytes(key, "little"), key, 1)
        return sketch

    def _cells(self, key: bytes) -> tuple[list[int], int]:
        """The key's cell in each sub-table (from 6 bytes of its sha256 each) and its check (the last 8)."""
        digest = hashlib.sha256(key).digest()
        cells = [i * self.WIDTH + int.from_bytes(digest[6 * i : 6 * i + 6], "little") % self.WIDTH for i in range(self.HASHES)]
        return cells, int.from_bytes(digest[24:], "little")

    def _toggle(self, number: int, key: bytes, sign: int) -> None:
        cells, check = self._cells(key)
        for c in cells:
            self.count[c] += sign
            self.key[c] ^= number
            self.check[c] ^= check

    @property
    def n_files(self) -> int:
        """Pairs added (the count of every sub-table sums to it)."""
        return sum(self.count[: self.WIDTH])

    def minus(self, other: FileSketch) -> FileSketch:
        """The difference: pairs only in ``self`` count +1, pairs only in ``other`` −1."""
        out = FileSketch()
        out.count = [a - b for a, b in zip(self.count, other.count)]
        out.key = [a ^ b for a, b in zip(self.key, other.key)]
        out.check = [a ^ b for a, b in zip(self.check, other.check)]
        return out

    def peel(self) -> tuple[dict[str, bytes], dict[str, bytes], bool]:
        """Pairs of a difference: (only in the first: name -> content tag, only in the second,
        complete). ``complete`` is False when some pairs could not be recovered (too many)."""
        found: tuple[dict[str, bytes], dict[str, bytes]] = ({}, {})
        progress = True
        while progress:
            progress = False
            for c in range(len(self.count)):
                if self.count[c] not in (1, -1):
                    continue
                key = self.key[c].to_bytes((self.key[c].bit_length() + 7) // 8, "little")
                cells, check = self._cells(key)
                if check != self.check[c] or c not in cells or len(key) <= 8:
                    continue
                sign = self.count[c]
                found[0 if sign == 1 else 1][key[8:].decode("utf-8", "surrogateescape")] = key[:8]
                self._toggle(self.key[c], key, -sign)
                progress = True
        return found[0], found[1], not any(self.count) and not any(self.key)

    def encode(self) -> str:
        """Text for a study attribute: base64 of the zlib-compressed cells."""
        raw = b"".join(
            struct.pack("<iH", n, (k.bit_length() + 7) // 8) + k.to_bytes((k.bit_length() + 7) // 8, "little") + ch.to_bytes(8, "little")
            for n, k, ch in zip(self.count, self.key, self.check)
        )
        return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> FileSketch:
        """Inverse of :meth:`encode`. Raises ValueError on text that is not a sketch."""
        try:
            raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
            sketch, at = cls(), 0
            for c in range(len(sketch.count)):
                sketch.count[c], length = struct.unpack_from("<iH", raw, at)
                at += 6
                sketch.key[c] = int.from_bytes(raw[at : at + length], "little")
                sketch.check[c] = int.from_bytes(raw[at + length : at + length + 8], "little")
                at += length + 8
        except (binascii.Error, zlib.error, struct.error, UnicodeEncodeError) as e:
            raise ValueError(f"not a file sketch ({e})") from None
        if at != len(raw):
            raise ValueError("not a file sketch (wrong length)")
        return sketch


def study_record(files: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """What a study keeps of its dataset's ``files``: (the list, "") for up to
    :data:`~biotune_optuna.config.MAX_LISTED_FILES` files, else ({}, encoded :class:`FileSketch`)."""
    if len(files) <= MAX_LISTED_FILES:
        return dict(files), ""
    return {}, FileSketch.of(files).encode()


def describe_unreadable(skipped: Mapping[str, str]) -> str:
    """"N unreadable image file(s): a (why), b (why)" — every one, in name order."""
    listed = ", ".join(f"{name} ({why})" for name, why in sorted(skipped.items()))
    return f"{len(skipped)} unreadable image file(s): {listed}"


def describe_difference(
    stored_files: Mapping[str, str], stored_sketch: str, files: Mapping[str, str], skipped: Mapping[str, str]
) -> str:
    """Which files differ between a study's record (:func:`study_record`) and a worker's load
    (``files``, ``skipped``: ``Splits.files`` / ``Splits.skipped``), in one line: changed
    files, files only here, files missing here; else what else can make fingerprints differ."""
    if stored_files:
        changed = {n for n in stored_files.keys() & files.keys() if stored_files[n] != files[n]}
        here, there, complete, n_study = set(files) - set(stored_files), set(stored_files) - set(files), True, len(stored_files)
    elif stored_sketch:
        try:
            study = FileSketch.decode(stored_sketch)
        except ValueError:
            return "the study's record of its files is damaged, so this worker cannot tell which of its files differ"
        plus, minus, complete = FileSketch.of(files).minus(study).peel()
        changed, here, there, n_study = plus.keys() & minus.keys(), plus.keys() - minus.keys(), minus.keys() - plus.keys(), study.n_files
    else:
        return (f"the study keeps no list of its files (made by an older biotune-optuna), so this worker cannot "
                f"tell which of its {len(files)} files differ")
    labels = sorted([(n, "changed") for n in changed] + [(n, "not in the study's data") for n in here]
                    + [(n, "missing here") for n in there])
    text = ", ".join(f"{n} ({why})" for n, why in labels[:_SHOWN])
    if len(labels) > _SHOWN:
        text += f" and {len(labels) - _SHOWN} more"
    if not complete:
        more = f"{text} and more" if text else "many files"
        return f"{more} (too many differences to name them all: {len(files)} files here, {n_study} in the study)"
    if text:
        return text
    if skipped:
        return (f"the same files, but this worker left out {describe_unreadable(skipped)}, which the study did not "
                "(compare the image libraries, e.g. Pillow, of both machines)")
    return ("the same files, but the study left out unreadable image files that this worker reads, or it was made "
            "with other split settings or another biotune-optuna (compare the image libraries, e.g. Pillow, of both machines)")
