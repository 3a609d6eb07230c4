"""The on-disk cache of decoded splits: one file ``<cache_dir>/<key>.pt`` per dataset, where the
key is the fingerprint of the files a split first draws and the spec (finetune/fingerprint.py).

Entries are written atomically (a unique temporary file, fsynced, renamed into place), so
processes may share the folder; an unreadable or damaged entry is logged and rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch

from biotune_optuna.finetune.sources import first_line
from biotune_optuna.finetune.splitting import PARTS, ImageSet, Splits

#: Layout of a cache file. 2 added ``key`` and ``skipped``; entries of layout 1 are still read.
_CACHE_FORMAT = 2

_logger = logging.getLogger(__name__)


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


def _splits_to_dict(splits: Splits, key: str) -> dict:
    d = {"format": _CACHE_FORMAT, "key": key, "fingerprint": splits.fingerprint, "classes": list(splits.classes),
         "files": dict(splits.files), "skipped": dict(splits.skipped)}
    for part in PARTS:
        d[f"{part}_images"], d[f"{part}_labels"] = getattr(splits, part).images, getattr(splits, part).labels
    d["crc32"] = _crc32(d[f"{part}_{kind}"] for part in PARTS for kind in ("images", "labels"))
    return d


def _splits_from_dict(d: object, key: str) -> Splits:
    """Inverse of :func:`_splits_to_dict`; ValueError (the reason) when ``d`` is not a valid entry
    for ``key`` (a layout-1 entry's key is its fingerprint; it skipped nothing)."""
    if isinstance(d, dict) and d.get("format") == 1:
        d = {**d, "key": d.get("fingerprint"), "skipped": {}}
    elif not isinstance(d, dict) or d.get("format") != _CACHE_FORMAT:
        raise ValueError("not an entry of this format")
    if d.get("key") != key or not isinstance(d.get("fingerprint"), str):
        raise ValueError("not the entry of this key")
    if not all(isinstance(d.get(k), t) for k, t in (("classes", list), ("files", dict), ("skipped", dict))):
        raise ValueError("classes, files or skipped missing")
    parts = {}
    for part in PARTS:
        x, y = d.get(f"{part}_images"), d.get(f"{part}_labels")
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4
                and isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (x.shape[0],)):
            raise ValueError(f"{part} images or labels missing or malformed")
        parts[part] = ImageSet(x, y)
    if d.get("crc32") != _crc32(t for part in PARTS for t in (parts[part].images, parts[part].labels)):
        raise ValueError("checksum mismatch: the stored images or labels are damaged")
    return Splits(parts["train"], parts["val"], parts["test"], d["classes"], d["fingerprint"], d["files"], d["skipped"])


def read_cache(path: Path, key: str) -> Splits | None:
    """The splits cached at ``path`` for ``key``, or None when there is none or it is unusable
    (logged as a warning; never raises)."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, permissions…: a miss, never a crash
        _logger.warning("dataset cache %s is unreadable (%s: %s); rebuilding it", path, type(e).__name__, first_line(e))
        return None
    try:
        return _splits_from_dict(d, key)
    except ValueError as e:
        _logger.warning("dataset cache %s is not a valid entry (%s); rebuilding it", path, e)
        return None


def write_cache(path: Path, splits: Splits, key: str) -> None:
    """Store ``splits`` under ``key`` at ``path`` atomically: a unique temporary file in the same
    folder, flushed and fsynced, then ``os.replace``-d over ``path`` (a reader sees the old file or
    the new one, never a partial one). A failure (read-only folder, full disk) is logged, not raised."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(_splits_to_dict(splits, key), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _logger.info("dataset cached in %s", path)
    except (OSError, RuntimeError) as e:  # torch.save reports write errors as RuntimeError
        _logger.warning("cannot write the dataset cache %s (%s); continuing without it", path, first_line(e))
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
