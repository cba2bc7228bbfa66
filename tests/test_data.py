from pathlib import Path

import numpy as np
import pytest
import torch

from sb_accel.data import (ArrayDataset, Augment, CandidateLoader, DataError, check_run_fits, cutout, load_dataset,
                           random_crop, random_flip, synthetic_dataset)


def test_crop_is_a_shifted_window():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):  # each output equals some 4x4 window of the padded image
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 4, dx:dx + 4]) for dy in range(3) for dx in range(3))


def test_flip_and_cutout():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    flipped = random_flip(x, torch.Generator().manual_seed(1))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    holes = cutout(torch.ones(32, 1, 8, 8), 4, torch.Generator().manual_seed(2))
    zeros = (holes == 0).flatten(1).sum(1)
    assert int(zeros.max()) == 16 and int(zeros.min()) >= 4  # clipped at borders, at least a 2x2 corner


def test_loader_covers_epoch_once_and_is_reproducible():
    data = synthetic_dataset(train=300, test=10)
    aug = Augment(crop_padding=2, flip=True, cutout=4)
    seen = torch.cat([idx for _, _, idx in CandidateLoader(data, aug, seed=3).epoch(64)])
    assert sorted(seen.tolist()) == list(range(300))
    a = next(CandidateLoader(data, aug, seed=3).epoch(64))
    b = next(CandidateLoader(data, aug, seed=3).epoch(64))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    x, y, idx = a
    assert x.dtype == torch.float32 and torch.equal(y, data.y_train[idx])


def test_npz_format_and_errors(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=np.zeros((5, 8, 8), np.uint8), y_train=np.arange(5), x_test=np.zeros((2, 8, 8), np.uint8),
             y_test=np.arange(2))
    d = load_dataset(str(path))
    assert d.x_train.shape == (5, 1, 8, 8) and d.num_classes == 5
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((5, 8, 8), np.float32))
    with pytest.raises(DataError, match="missing arrays"):
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet-22k")
    with pytest.raises(DataError, match="--download"):
        load_dataset("svhn", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="y_train"):
        ArrayDataset("x", torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2), torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
                     torch.zeros(1), 2)


@pytest.mark.needs_dataset("cifar10")
def test_real_cifar10_from_shared_copy():
    d = load_dataset("cifar10")
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(d.y_train).tolist() == [5000] * 10
    assert d.mean.tolist() == pytest.approx([125.3 / 255, 122.9 / 255, 113.9 / 255], abs=0.01)


@pytest.mark.needs_dataset("fashion_mnist")
def test_real_fashion_mnist():
    d = load_dataset("fashion_mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.num_classes == 10


# --- validation before anything is created ----------------------------------------------------------
def _npz(path, x_train=None, y_train=None, x_test=None, y_test=None, **extra):
    """A tiny .npz dataset (4 train, 2 test 8x8 RGB images, classes 0..1) with any array replaced."""
    arrays = dict(x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.array([0, 1, 0, 1]),
                  x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.array([1, 0]))
    arrays.update({k: v for k, v in dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test).items()
                   if v is not None}, **extra)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, message", [
    (dict(y_train=np.array([0, 0.5, 1, 1])), r"y_train holds fractional labels \(e.g. 0.5\).*np.rint\(y\)"),
    (dict(y_train=np.array([0.0, 1.0, 0.0, 1.0])), r"y_train holds whole numbers as float64.*astype\(np.int64\)"),
    (dict(y_train=np.array([0, 1, -1, 1])), r"y_train has negative labels \(e.g. -1\): labels are class indices 0..1;"),
    (dict(y_test=np.array([1, 2])), r"y_test has label 2 but the training labels only go up to 1"),
    (dict(y_train=np.array([0, 1, 57, 1])), r"up to 57, so there would be 58 classes, but 55 of them have no "
                                            r"training example \(2, 3, 4, 5, 6, ...\)"),
    (dict(y_train=np.array([1, 2, 1, 2]), y_test=np.array([1, 2])), r"labels counted from 1\? subtract 1"),
    (dict(y_train=np.eye(4, dtype=np.int64)), r"y_train must be \(N,\) class indices.*one-hot\? save y.argmax\(1\)"),
    (dict(y_train=np.array(["a", "b", "a", "b"])), r"y_train must hold integer class indices, got dtype <U1"),
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8)), r"x_train has shape \(4, 3, 8, 8\), which looks channels-first"
                                                     r".*np.transpose\(x_train, \(0, 2, 3, 1\)\)"),
    (dict(x_test=np.zeros((2, 8, 8), np.uint8)), r"x_train images are 3x8x8 but x_test images are 1x8x8"),
    (dict(x_test=np.zeros((0, 8, 8, 3), np.uint8), y_test=np.zeros(0, np.int64)), r"x_test is empty"),
    (dict(x_train=np.zeros((4, 8, 8, 3), np.float32)), r"x_train must be uint8.*astype\(np.uint8\)"),
    (dict(num_classes=np.array(1)), r"y_train has label 1 but the dataset has 1 class \(labels 0..0\)"),
    (dict(num_classes=np.array([2, 3])), r"num_classes must be a positive integer scalar"),
])
def test_malformed_npz_datasets_are_refused_with_the_fix(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_npz(tmp_path / "d.npz", **arrays))


def test_npz_classes_are_declared_or_inferred_from_training_labels(tmp_path):
    assert load_dataset(_npz(tmp_path / "a.npz")).num_classes == 2
    declared = load_dataset(_npz(tmp_path / "b.npz", num_classes=np.array(10)))
    assert declared.num_classes == 10 and declared.y_train.dtype == torch.int64
    column = load_dataset(_npz(tmp_path / "c.npz", y_train=np.array([[0], [1], [0], [1]], np.int32)))
    assert column.y_train.tolist() == [0, 1, 0, 1] and column.y_train.dtype == torch.int64
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz is a text file, not an .npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_array_datasets_are_validated():
    x, y = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    d = ArrayDataset("t", x, y, x[:2], y[:2], 4)
    assert d.y_train.dtype == torch.int64
    assert ArrayDataset("t", x, y, x[:2], y[:2]).num_classes == 4
    with pytest.raises(DataError, match=r"t: y_train has label 3 but the dataset has 3 classes \(labels 0..2\)"):
        ArrayDataset("t", x, y, x[:2], y[:2], 3)
    with pytest.raises(DataError, match=r"looks channels-last \(N, H, W, C\).*x.permute\(0, 3, 1, 2\)"):
        ArrayDataset("t", torch.zeros(4, 8, 8, 3, dtype=torch.uint8), y, x[:2], y[:2], 4)
    with pytest.raises(DataError, match="x_train is empty"):
        ArrayDataset("t", x[:0], y[:0], x[:2], y[:2], 4)
    with pytest.raises(DataError, match="must hold integer class indices, got torch.bool"):
        ArrayDataset("t", x, y > 1, x[:2], y[:2], 4)
    with pytest.raises(DataError, match="num_classes must be a positive integer"):
        ArrayDataset("t", x, y, x[:2], y[:2], True)


def test_a_batch_larger_than_the_training_set_is_refused():
    check_run_fits(128, 128)
    with pytest.raises(DataError, match=r"batch_size: 128 is larger than the 100 training examples.*--batch-size 100"):
        check_run_fits(128, 100)
    with pytest.raises(DataError, match="no training examples"):
        check_run_fits(1, 0)


def test_a_failed_download_removes_what_it_wrote(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    class Offline:
        def __init__(self, root, split="train", download=False):
            Path(root, "svhn").mkdir(parents=True, exist_ok=True)
            Path(root, "svhn", "train_32x32.mat.part").write_bytes(b"partial")
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "SVHN", Offline)
    fresh = tmp_path / "new" / "data"
    with pytest.raises(DataError, match=r"could not download svhn.*no network.*svhn.npz") as err:
        load_dataset("svhn", data_dir=str(fresh), download=True)
    assert not (tmp_path / "new").exists() and "removed" in str(err.value)
    existing = tmp_path / "data"
    existing.mkdir()
    (existing / "keep.npz").write_bytes(b"x")
    with pytest.raises(DataError, match="could not download"):
        load_dataset("svhn", data_dir=str(existing), download=True)
    assert [p.name for p in existing.iterdir()] == ["keep.npz"]


def test_files_that_are_not_a_whole_npz_are_named_without_pickle_advice(tmp_path):
    _npz(tmp_path / "good.npz")
    whole = (tmp_path / "good.npz").read_bytes()
    cases = {
        "cut.npz": (whole[:-40], r"is a damaged .npz \(a truncated or corrupted zip archive"),
        "text.npz": (b"hello\n", r"is a text file, not an .npz"),
        "empty.npz": (b"", r"is empty \(0 bytes\)"),
        "binary.npz": (bytes(range(256)), r"is not an .npz file \(it does not start like the zip archive"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message) as refused:
            load_dataset(str(tmp_path / name))
        assert "allow_pickle" not in str(refused.value) and "np.savez(path, x_train=" in str(refused.value)
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match=r"is a single .npy array \(np.save\)"):
        load_dataset(str(tmp_path / "one.npz"))
    np.savez(tmp_path / "objects.npz", x_train=np.array([{}], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match=r"holds object \(pickled\) arrays, which are never loaded"):
        load_dataset(str(tmp_path / "objects.npz"))


def test_subsets_larger_than_the_data_are_refused():
    from sb_accel.data import check_subsets

    data = synthetic_dataset(train=64, test=16)
    check_subsets(data, 64, 16)
    check_subsets(data, 0, 0)
    with pytest.raises(DataError, match=r"^train_subset: 65 is more than the 64 training examples of synthetic; "
                                        r"pass at most 64 \(0: all of them\)$"):
        check_subsets(data, 65, 0)
    with pytest.raises(DataError, match=r"^test_subset: 17 is more than the 16 test examples"):
        check_subsets(data, 0, 17)


def test_the_fingerprint_tells_data_sets_apart_cheaply():
    from sb_accel.data import dataset_fingerprint, describe_fingerprint

    a = synthetic_dataset(train=64, test=16, seed=0)
    assert dataset_fingerprint(a) == dataset_fingerprint(synthetic_dataset(train=64, test=16, seed=0))
    assert dataset_fingerprint(a)["hash"] != dataset_fingerprint(synthetic_dataset(train=64, test=16, seed=1))["hash"]
    relabelled = ArrayDataset("synthetic", a.x_train, (a.y_train + 1) % 10, a.x_test, a.y_test, 10)
    assert dataset_fingerprint(relabelled)["hash"] != dataset_fingerprint(a)["hash"]  # every label is hashed
    assert describe_fingerprint(dataset_fingerprint(a)).startswith(
        "synthetic (64 training / 16 test examples, 10 classes, 3x16x16, content ")


def test_local_dataset_file_prefers_the_decoded_npz_and_finds_what_load_dataset_reads(tmp_path):
    """What the `needs_dataset` marker (tests/conftest.py) asks before a test reads a real dataset."""
    from sb_accel.data.paths import find_data_file
    from sb_accel.data.sources import local_dataset_file

    assert local_dataset_file("svhn", str(tmp_path)) is None  # nowhere here, and not among the offline copies
    (tmp_path / "cifar10_jpeg.npz").write_bytes(b"")
    if find_data_file("cifar10.npz", str(tmp_path)) is None:  # no decoded copy elsewhere: the JPEG copy is read
        assert local_dataset_file("cifar10", str(tmp_path)) == tmp_path / "cifar10_jpeg.npz"
    (tmp_path / "cifar10.npz").write_bytes(b"")
    assert local_dataset_file("cifar10", str(tmp_path)) == tmp_path / "cifar10.npz"
    path = _npz(tmp_path / "svhn.npz")
    assert local_dataset_file("svhn", str(tmp_path)) == Path(path) and load_dataset("svhn", str(tmp_path)).name == "svhn"
