import time

import pytest
import torch

from sb_accel.selection import LossHistory
from sb_accel.selection import history as history_module


def brute_cdf(history, loss):
    return sum(h < loss for h in history) / len(history) if history else 0.0


def test_cdf_exact_small():
    h = LossHistory(4)
    out = h.update_and_cdf(torch.tensor([3.0, 1.0, 2.0]))
    # history {3,1,2}: strictly below 3 -> 2/3, below 1 -> 0, below 2 -> 1/3
    assert out.tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    out = h.update_and_cdf(torch.tensor([2.0, 5.0]))
    # ring of 4 keeps the newest, oldest first: 1, 2, 2, 5
    assert h.values().tolist() == [1.0, 2.0, 2.0, 5.0]
    assert out.tolist() == pytest.approx([1 / 4, 3 / 4])


@pytest.mark.parametrize("size", [1, 7, 64, 1024])
def test_batch_mode_matches_brute_force(size):
    g = torch.Generator().manual_seed(size)
    h = LossHistory(size)
    seen = []
    for _ in range(20):
        batch = torch.rand(int(torch.randint(1, 300, (1,), generator=g)), generator=g).round(decimals=2)
        seen.extend(batch.tolist())
        window = seen[-size:]
        got = h.update_and_cdf(batch)
        want = [brute_cdf(window, v) for v in batch.tolist()]
        assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_sequential_mode_matches_paper_alg2():
    g = torch.Generator().manual_seed(3)
    h = LossHistory(16, mode="sequential")
    seen = []
    for _ in range(5):
        batch = torch.rand(10, generator=g)
        got = h.update_and_cdf(batch)
        want = []
        for v in batch.tolist():
            seen.append(v)
            want.append(brute_cdf(seen[-16:], v))
        assert got.tolist() == pytest.approx(want, abs=1e-12)


def one_at_a_time(history, batch):
    """Paper Alg. 2 as ``"sequential"`` was first written: append one loss, re-sort, score it."""
    out = torch.empty(batch.numel(), dtype=torch.float64)
    for i in range(batch.numel()):
        history.append(batch[i:i + 1])
        out[i] = history.cdf(batch[i:i + 1])[0]
    return out


@pytest.mark.parametrize("size, chunk", [(1, 1024), (2, 1024), (7, 1024), (64, 1024), (1024, 1024), (64, 5)])
def test_sequential_mode_equals_one_at_a_time_exactly(size, chunk, monkeypatch):
    """Random batches from empty to much longer than the history (B > R, wrap-around mid-batch),
    with ties (two decimals) and infinities, in chunks of the history's size or shorter: the same
    percentiles to the bit, the same ring."""
    monkeypatch.setattr(history_module, "_CHUNK", chunk)
    g = torch.Generator().manual_seed(size)
    fast, slow = LossHistory(size, mode="sequential"), LossHistory(size, mode="batch")
    for _ in range(30):
        batch = torch.rand(int(torch.randint(0, 3 * size + 5, (1,), generator=g)), generator=g).round(decimals=2)
        batch[torch.rand(batch.shape, generator=g) < 0.05] = float("inf")
        batch[torch.rand(batch.shape, generator=g) < 0.05] = -float("inf")
        assert torch.equal(fast.update_and_cdf(batch), one_at_a_time(slow, batch))
        assert fast.state_dict()["count"] == slow.state_dict()["count"]
        assert torch.equal(fast.state_dict()["buffer"][:len(fast)], slow.state_dict()["buffer"][:len(slow)])


def test_sequential_mode_by_hand():
    h = LossHistory(3, mode="sequential")
    h.update_and_cdf(torch.tensor([5.0, 1.0]))  # history, oldest first: 5, 1
    # 2 joins (5, 1, 2): 1 below; 0 evicts 5 (1, 2, 0): none below; 3 evicts 1 (2, 0, 3): 2 below;
    # 2 evicts 2 (0, 3, 2): 1 below (a tie is not below)
    assert h.update_and_cdf(torch.tensor([2.0, 0.0, 3.0, 2.0])).tolist() == [1 / 3, 0.0, 2 / 3, 1 / 3]


def test_state_roundtrip():
    h = LossHistory(8)
    h.update_and_cdf(torch.arange(11.0))
    h2 = LossHistory(8)
    h2.load_state_dict(h.state_dict())
    x = torch.tensor([4.5, 9.5])
    assert h.update_and_cdf(x).tolist() == h2.update_and_cdf(x).tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="history size"):
        LossHistory(0)
    with pytest.raises(ValueError, match="mode"):
        LossHistory(4, mode="paper")


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_cdf_cost_is_small(mode):
    """Bookkeeping budget: a 128-candidate batch against R = 1024 costs well under a millisecond
    (a small-CNN training step on this CPU takes ~100 ms; the issue asks for < 1%). The best of a
    few rounds, so that another process on the machine does not fail it."""
    h = LossHistory(1024, mode)
    batch = torch.rand(128)
    for _ in range(10):
        h.update_and_cdf(batch)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(40):
            h.update_and_cdf(batch)
        rounds.append((time.perf_counter() - start) / 40)
    assert min(rounds) < 1e-3


def test_make_global_shares_the_history_through_the_gather():
    """The one collective a global history needs is handed over explicitly, before the first update."""
    other = torch.tensor([5.0, 6.0])
    h = LossHistory(8)
    h.make_global(lambda mine: (torch.cat([other, mine]), len(other)))  # this process is the second
    assert torch.equal(h.update_and_cdf(torch.tensor([5.5, 7.0])), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.equal(h.values(), torch.tensor([5.0, 6.0, 5.5, 7.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="before the first update_and_cdf"):
        h.make_global(lambda mine: (mine, 0))
    with pytest.raises(TypeError, match="callable"):
        LossHistory(8).make_global("all_gather")
