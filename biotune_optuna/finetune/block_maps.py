"""Block partitions of the torchvision architectures (spec/biotune-algorithm.md §2.2–2.3): one
table keyed by model name, each block given as module-name prefixes, input side first."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# torchvision: one table of block partitions, keyed by model name


@dataclass(frozen=True)
class Partition:
    """Blocks of a torchvision architecture as module-name prefixes (spec §2.2–2.3).

    Prefixes name the modules that hold parameters; a parameter-free top-level module (ResNet's
    maxpool) belongs to no block, and ``Backbone.block_of`` gives ``None`` for it.
    """

    blocks: tuple[tuple[str, tuple[str, ...]], ...]  # (block, module-name prefixes), input first
    heads: tuple[str, ...]  # modules whose last nn.Linear becomes the new n_classes head
    kwargs: Mapping[str, object] = field(default_factory=dict)  # same architecture with/without weights
    fix_keys: Callable[[dict], dict] | None = None  # old checkpoint key names → current ones


def _seq(prefix: str, first: int, last: int) -> tuple[str, ...]:
    """``prefix.first`` … ``prefix.last`` (inclusive)."""
    return tuple(f"{prefix}.{i}" for i in range(first, last + 1))


def _densenet_keys(state: dict) -> dict:
    # torchvision's DenseNet checkpoints use 'norm.1' for 'norm1' etc. (torchvision densenet.py).
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    return {(lambda m: m.group(1) + m.group(2) if m else k)(pattern.match(k)): v for k, v in state.items()}


_RESNET = Partition(
    blocks=(
        ("stem", ("conv1", "bn1")),
        ("layer1", ("layer1",)),
        ("layer2", ("layer2",)),
        ("layer3", ("layer3",)),
        ("layer4", ("layer4",)),
        ("fc", ("fc",)),
    ),
    heads=("fc",),
)

_DENSENET = Partition(  # features.norm5 goes with the classifier (DESIGN.md departures)
    blocks=(
        ("stem", ("features.conv0", "features.norm0")),
        ("denseblock1", ("features.denseblock1",)),
        ("transition1", ("features.transition1",)),
        ("denseblock2", ("features.denseblock2",)),
        ("transition2", ("features.transition2",)),
        ("denseblock3", ("features.denseblock3",)),
        ("transition3", ("features.transition3",)),
        ("denseblock4", ("features.denseblock4",)),
        ("classifier", ("features.norm5", "classifier")),
    ),
    heads=("classifier",),
    fix_keys=_densenet_keys,
)

_VGG19 = Partition(  # conv blocks 1–5, each range ending with its max-pool
    blocks=(
        ("block1", _seq("features", 0, 4)),
        ("block2", _seq("features", 5, 9)),
        ("block3", _seq("features", 10, 18)),
        ("block4", _seq("features", 19, 27)),
        ("block5", _seq("features", 28, 36)),
        ("classifier", ("classifier",)),
    ),
    heads=("classifier",),
)

_INCEPTION_V3 = Partition(
    blocks=(
        ("stem", ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")),
        *((m, (m,)) for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")),
        ("AuxLogits", ("AuxLogits",)),
        *((m, (m,)) for m in ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
        ("fc", ("fc",)),
    ),
    heads=("fc", "AuxLogits"),
    # What torchvision builds when it loads weights; kept for random init too (same network).
    kwargs={"aux_logits": True, "transform_input": True, "init_weights": True},
)

_MOBILENET_V2 = Partition(  # stages = runs of inverted residuals with the same output width
    blocks=(
        ("stem", ("features.0",)),
        ("stage1", ("features.1",)),
        ("stage2", _seq("features", 2, 3)),
        ("stage3", _seq("features", 4, 6)),
        ("stage4", _seq("features", 7, 10)),
        ("stage5", _seq("features", 11, 13)),
        ("stage6", _seq("features", 14, 16)),
        ("stage7", ("features.17",)),
        ("head_conv", ("features.18",)),
        ("classifier", ("classifier",)),
    ),
    heads=("classifier",),
)

_MOBILENET_V3_LARGE = Partition(  # same recipe: widths 16 | 24 | 40 | 80 | 112 | 160
    blocks=(
        ("stem", ("features.0",)),
        ("stage1", ("features.1",)),
        ("stage2", _seq("features", 2, 3)),
        ("stage3", _seq("features", 4, 6)),
        ("stage4", _seq("features", 7, 10)),
        ("stage5", _seq("features", 11, 12)),
        ("stage6", _seq("features", 13, 15)),
        ("head_conv", ("features.16",)),
        ("classifier", ("classifier",)),
    ),
    heads=("classifier",),
)

_EFFICIENTNET_B0 = Partition(
    blocks=(
        ("stem", ("features.0",)),
        *((f"stage{i}", (f"features.{i}",)) for i in range(1, 8)),
        ("head_conv", ("features.8",)),
        ("classifier", ("classifier",)),
    ),
    heads=("classifier",),
)

TORCHVISION: dict[str, Partition] = {
    "resnet18": _RESNET,
    "resnet50": _RESNET,
    "densenet121": _DENSENET,
    "vgg19": _VGG19,
    "inception_v3": _INCEPTION_V3,
    "mobilenet_v2": _MOBILENET_V2,
    "mobilenet_v3_large": _MOBILENET_V3_LARGE,
    "efficientnet_b0": _EFFICIENTNET_B0,
}


