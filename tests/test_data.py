import numpy as np
import pytest
import torch

from sb_accel.data import (ArrayDataset, Augment, CandidateLoader, DataError, cutout, load_dataset, random_crop,
                           random_flip, synthetic_dataset)


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


def test_real_cifar10_from_shared_copy():
    d = load_dataset("cifar10")
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(d.y_train).tolist() == [5000] * 10
    assert d.mean.tolist() == pytest.approx([125.3 / 255, 122.9 / 255, 113.9 / 255], abs=0.01)


def test_real_fashion_mnist():
    d = load_dataset("fashion_mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.num_classes == 10
