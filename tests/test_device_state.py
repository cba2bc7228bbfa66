"""Policy state on the training device: deferred NaN checks, state round trips, CPU/GPU agreement.

How often the loop would stall a GPU is counted on the real loop (loader, augmentation, driver,
Trainer, API, DDP) by tests/test_sync_budget.py. Here, on the CPU: the deferred NaN check, the
driver's epoch-end check and state round trips through ``.to()``.
On a GPU (skipped without one): the same policies on CUDA keep the same tables and history as on the
CPU, the driver's loop synchronises at most once per candidate batch
(``torch.cuda.set_sync_debug_mode``), and phase times are recorded on the training device's stream.
"""
import warnings

import pytest
import torch

from sb_accel.selection import InfoBatch, Kath18, Primed, SelectiveBackpropPolicy, StaleSB
from sb_accel.train import SelectionDriver
from sb_accel.train.divergence import DivergenceGuard, SelectionLossCheck
from sb_accel.train.timer import PhaseTimer

READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero",
         "repeat_interleave"}


class Watched(torch.Tensor):
    """A tensor that records every host read made of it or of tensors computed from it."""

    reads: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            cls.reads.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


class _Engine:
    name = "test"

    def losses(self, x, y):
        return x.flatten(1).float().mean(1) + y.float()


class _Refresher:
    engine = _Engine()

    def after_step(self, model, step):
        return []


def _deferred(driver):
    """The driver as it behaves on a GPU: the selection losses' NaN check deferred to check()."""
    driver.selection_losses.deferred = True
    return driver


def _candidates(batches, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(batches * n, generator=g)
    for idx in order.split(n):
        yield torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 10, (n,), generator=g), idx


# InfoBatch decides from its own table, which this tensor subclass cannot watch: the stand-in device
# of test_sync_budget.py counts its reads on the real loop
@pytest.mark.parametrize("strategy", ["sb", "kath18"])
def test_one_host_read_per_candidate_batch(strategy):
    if strategy == "sb":
        policy = SelectiveBackpropPolicy(seed=0, history=256)
    else:  # importance sampling on: a draw with replacement, trained as repeated rows
        policy = Kath18(32, seed=0)
        policy.tau = torch.tensor(5.0, dtype=torch.float64)
    driver = _deferred(SelectionDriver(policy, 32, _Refresher()))
    driver.start_epoch(1)
    Watched.reads.clear()
    steps = 0
    for x, y, idx in _candidates(10):
        for batch in driver.train_batches(x.as_subclass(Watched), y, idx):
            steps += 1
            driver.observe(batch, torch.rand(len(batch)).as_subclass(Watched))
    assert steps >= 2 and driver.kept < driver.candidates
    rows = "repeat_interleave" if strategy == "kath18" else "nonzero"
    assert Watched.reads == [rows] * 10, "the only read per candidate batch is how many were kept"


def test_stale_sb_reads_its_forward_mask_once_more():
    """Stale-SB's partial forward sets (in a stale epoch, the examples with no loss yet) need the mask
    read once (to gather them into selection batches)."""
    policy = StaleSB(640, n=3, seed=0, history=256)
    policy.observe(torch.arange(640), torch.rand(640), 0)
    policy.cached_loss[::2] = float("nan")  # half the examples have no loss yet: they need a forward
    driver = _deferred(SelectionDriver(policy, 32, _Refresher(), forward_batch_size=64))
    driver.start_epoch(1)
    Watched.reads.clear()
    for x, y, idx in _candidates(4):
        list(driver.train_batches(x, y, idx.as_subclass(Watched)))
    # per candidate batch: the mask once, then how many were kept of the cached candidates and of
    # each full selection batch of stale ones (64 candidates, half stale: one every other batch)
    assert Watched.reads.count("nonzero") <= 4 + 4 + 2 and len(Watched.reads) == Watched.reads.count("nonzero")


def test_deferred_nan_check_raises_at_the_next_check_not_per_batch():
    check = SelectionLossCheck(deferred=True)
    losses = torch.tensor([0.5, float("nan"), 1.0]).as_subclass(Watched)
    Watched.reads.clear()
    check.update(losses, forwards=3)  # no read, no raise
    assert Watched.reads == []
    guard = DivergenceGuard(torch.device("cpu"), check_every=4)
    guard.watch(check.check)
    guard.check(3)  # not a checking step
    with pytest.raises(FloatingPointError, match="selection losses are NaN/inf"):
        guard.check(4)
    check.check()  # reported once
    with pytest.raises(FloatingPointError, match="1 of 3 selection losses"):
        SelectionLossCheck().update(losses.as_subclass(torch.Tensor), forwards=3)  # on the host: at once


def test_driver_checks_deferred_nan_at_epoch_end():
    policy = SelectiveBackpropPolicy(seed=0)
    driver = _deferred(SelectionDriver(policy, 4, _Refresher()))
    driver.start_epoch(0)
    x, y, idx = next(_candidates(1, n=8))
    x[3] = float("nan")
    list(driver.train_batches(x, y, idx))
    with pytest.raises(FloatingPointError):
        driver.finish_epoch()


def assert_same_state(a, b, ignore=frozenset()) -> None:
    """Policies ``a`` and ``b`` hold the same state: every value of their ``state_dict`` s (nested
    ones included, tensors compared exactly on the CPU, NaN equal to NaN) and the same loss history,
    its last R losses in order (``LossHistory.values()``: the unfilled slots of its ring buffer hold
    arbitrary memory)."""
    histories = [getattr(p.policy if isinstance(p, Primed) else p, "history", None) for p in (a, b)]
    assert (histories[0] is None) == (histories[1] is None)
    if histories[0] is not None:
        first, second = (h.values().cpu() for h in histories)
        assert len(first) > 0 and torch.equal(first, second), f"loss histories differ: {first} != {second}"
    _assert_same_values(a.state_dict(), b.state_dict(), {*ignore, "buffer"}, "state")


def _assert_same_values(a: dict, b: dict, ignore: set, where: str) -> None:
    assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
    for key in sorted(set(a) - ignore):
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _assert_same_values(x, y, ignore, f"{where}.{key}")
        elif torch.is_tensor(x):  # exactly; NaN ("no loss yet" in the per-example tables) equals NaN
            torch.testing.assert_close(x.cpu(), y.cpu(), rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"{where}.{key} differs: {m}")
        else:
            assert x == y, f"{where}.{key}: {x!r} != {y!r}"


def test_same_state_compares_the_loss_history():
    """The comparison reaches the nested history: one differing loss of R is found."""
    a, b = SelectiveBackpropPolicy(seed=0, history=8), SelectiveBackpropPolicy(seed=0, history=8)
    losses = torch.rand(4)
    a.select(losses, torch.arange(4), 0)
    b.select(losses, torch.arange(4), 0)
    assert_same_state(a, b)
    b.history.load_state_dict({**b.history.state_dict(), "buffer": b.history.state_dict()["buffer"] * 2})
    with pytest.raises(AssertionError, match="loss histories differ"):
        assert_same_state(a, b)


@pytest.mark.parametrize("make", [
    lambda: SelectiveBackpropPolicy(seed=3, history=16),
    lambda: StaleSB(32, seed=3, history=16),
    lambda: InfoBatch(32, seed=3),
    lambda: Primed(StaleSB(32, seed=3, history=16), 1),
], ids=["sb", "stale-sb", "infobatch", "primed"])
def test_to_cpu_keeps_state_and_decisions(make):
    a, b = make(), make()
    assert b.to("cpu") is b and b.device == torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        a.on_epoch_start(epoch, 3)
        b.on_epoch_start(epoch, 3)
        idx = torch.randperm(32, generator=g)[:16]
        losses = torch.rand(16, generator=g)
        assert torch.equal(a.select(losses, idx, epoch), b.select(losses, idx, epoch))
        a.observe(idx, losses, epoch)
        b.observe(idx, losses, epoch)
    assert_same_state(a, b)  # the loss history (R losses) and the generator included
    c = make().to("cpu")
    c.load_state_dict(b.state_dict())
    assert_same_state(c, b)
    idx, losses = torch.randperm(32, generator=g)[:16], torch.rand(16, generator=g)
    assert torch.equal(c.select(losses, idx, 3), b.select(losses, idx, 3))  # the restored one decides alike


# --- GPU ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("make", [
    lambda: SelectiveBackpropPolicy(beta=0.0, history=64, seed=0),  # keeps everything: no draw decides
    lambda: StaleSB(256, n=2, beta=0.0, history=64, seed=0),
    lambda: InfoBatch(256, prune_ratio=0.0, seed=0),
], ids=["sb", "stale-sb", "infobatch"])
def test_gpu_policy_state_matches_cpu(cuda, make):
    cpu, gpu = make(), make().to(cuda)
    g = torch.Generator().manual_seed(1)
    for epoch in range(4):
        cpu.on_epoch_start(epoch, 4)
        gpu.on_epoch_start(epoch, 4)
        for idx in torch.randperm(256, generator=g).split(64):
            fresh = torch.rand(64, generator=g)
            need = cpu.requires_forward(idx, epoch)
            need_gpu = gpu.requires_forward(idx.to(cuda), epoch)
            if isinstance(need, torch.Tensor):
                assert torch.equal(need, need_gpu.cpu())
                fresh = torch.where(need, fresh, torch.full_like(fresh, float("nan")))
            keep = cpu.select(fresh, idx, epoch)
            keep_gpu = gpu.select(fresh.to(cuda), idx.to(cuda), epoch)
            assert keep_gpu.device.type == "cuda" and torch.equal(keep, keep_gpu.cpu())
            cpu.observe(idx, fresh.nan_to_num(1.0), epoch)
            gpu.observe(idx.to(cuda), fresh.nan_to_num(1.0).to(cuda), epoch)
    # every table and the loss history; the generators differ by device (CPU and CUDA streams of draws)
    assert_same_state(cpu, gpu, ignore={"generator"})
    for key, value in cpu.state_dict().items():
        if torch.is_tensor(value) and key != "generator":
            assert torch.equal(value, gpu.state_dict()[key].cpu()), key


@pytest.mark.gpu
def test_gpu_driver_synchronises_at_most_once_per_candidate_batch(cuda):
    from test_sync_budget import _Refresher  # an engine scoring x's mean + y, never refreshed

    policy = SelectiveBackpropPolicy(seed=0, history=256).to(cuda)
    driver = SelectionDriver(policy, 32, _Refresher())
    driver.start_epoch(0)
    batches = [(x.to(cuda), y.to(cuda), idx.pin_memory()) for x, y, idx in _candidates(10)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x, y, idx in batches:
                for batch in driver.train_batches(x, y, idx):
                    driver.observe(batch, batch.x.flatten(1).mean(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= len(batches), [str(w.message) for w in syncs[:5]]


@pytest.mark.gpu
def test_gpu_phase_times_are_recorded_on_the_training_devices_stream(cuda):
    """On the last GPU (cuda:N, N != 0 where there are several) the events time that device's work."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    timer = PhaseTimer(device)
    assert timer.on_device
    timer.start()
    with torch.cuda.device(0):  # the current device stays GPU 0: the events must not follow it
        with timer.phase("train_forward"):
            a = torch.randn(2048, 2048, device=device)
            for _ in range(20):
                a = a @ a / 2048
        totals = timer.totals()
    assert totals["train_forward"] > 0.0
