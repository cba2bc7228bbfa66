import pytest
import torch

from sb_accel.selection import BackpropBatcher
from sb_accel.selection.batcher import kept_rows


def feed(batcher, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out, kept_all, start = [], [], 0
    for n in sizes:
        idx = torch.arange(start, start + n)
        start += n
        x = idx.float()[:, None].repeat(1, 3)
        keep = torch.rand(n, generator=g) < 0.4
        kept_all.extend(idx[keep].tolist())
        out.extend(batcher.add_rows(x, idx.clone(), idx, kept_rows(keep)))
    return out, kept_all


def test_full_batches_conserve_examples_in_order():
    b = BackpropBatcher(16)
    batches, kept = feed(b, [50, 7, 64, 128, 3])
    assert all(len(t) == 16 for t in batches)
    emitted = [i for t in batches for i in t.indices.tolist()]
    assert emitted == kept[: len(emitted)]           # no loss, no duplicate, FIFO
    assert b.pending() == len(kept) - len(emitted) < 16
    for t in batches:                                # rows stay aligned
        assert torch.equal(t.x[:, 0].long(), t.indices) and torch.equal(t.y, t.indices)


def test_selection_batch_larger_than_training_batch():
    b = BackpropBatcher(4)
    keep = torch.ones(10, dtype=torch.bool)
    batches = list(b.add_rows(torch.zeros(10, 1), torch.arange(10), torch.arange(10), kept_rows(keep)))
    assert [len(t) for t in batches] == [4, 4] and b.pending() == 2


@pytest.mark.parametrize("rule,expect_sizes,pending", [("carry", [], 5), ("partial", [5], 0), ("drop", [], 0)])
def test_end_of_epoch_rules(rule, expect_sizes, pending):
    b = BackpropBatcher(8, end_of_epoch=rule)
    list(b.add_rows(torch.zeros(5, 1), torch.arange(5), torch.arange(5), None))
    assert [len(t) for t in b.end_epoch()] == expect_sizes
    assert b.pending() == pending
    assert b.dropped == (5 if rule == "drop" else 0)


def test_weights_travel_with_examples_and_state_roundtrip():
    b = BackpropBatcher(4)
    w = torch.tensor([1.0, 2.0, 3.0])
    list(b.add_rows(torch.zeros(3, 1), torch.arange(3), torch.arange(3), None, w))
    b2 = BackpropBatcher(4)
    b2.load_state_dict(b.state_dict())
    out = list(b2.add_rows(torch.zeros(2, 1), torch.arange(3, 5), torch.arange(3, 5), None))
    assert out[0].weights.tolist() == [1.0, 2.0, 3.0, 1.0] and out[0].indices.tolist() == [0, 1, 2, 3]


def test_bad_input():
    with pytest.raises(ValueError, match="end_of_epoch"):
        BackpropBatcher(4, end_of_epoch="flush")
    with pytest.raises(ValueError, match="disagree"):
        list(BackpropBatcher(4).add_rows(torch.zeros(2, 1), torch.arange(3), torch.arange(3), None))
