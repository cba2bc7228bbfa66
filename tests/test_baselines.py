"""Stale-SB, Kath18 and InfoBatch pinned against brute-force statements of their published rules
(the papers and the reference code: angelajiang/SelectiveBackprop, idiap/importance-sampling,
NUS-HPC-AI-Lab/InfoBatch)."""
import math

import numpy as np
import pytest
import torch

from sb_accel.engines import EngineRefresher, SelectionEngine
from sb_accel.selection import InfoBatch, Kath18, StaleSB, StrategyOptions, create_strategy
from sb_accel.selection.batcher import BackpropBatcher, kept_rows
from sb_accel.train import SelectionDriver


class _IndexEngine(SelectionEngine):
    """Loss = 1 + (example index mod 5) (the index is the first feature); records the indices it scores."""

    backend, precision = "test", "fp32"

    def __init__(self):
        self.scored = []

    @property
    def is_live(self):
        return True

    def losses(self, x, y):
        self.scored.extend(int(i) for i in x[:, 0])
        return 1.0 + x[:, 0] % 5

    def refresh(self, model, rebuild=False):
        pass


def _run_epochs(policy, n, batch, epochs, engine, training_loss=lambda idx: 1.0 + idx % 3,
                end_of_epoch="partial"):
    """Drive ``policy`` through ``epochs`` epochs of a shuffled dataset of ``n`` examples; returns the
    set of example indices given a selection forward in each epoch."""
    driver = SelectionDriver(policy, batch_size=batch, refresher=EngineRefresher(engine), end_of_epoch=end_of_epoch,
                             num_epochs=epochs, forward_batch_size=batch)
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.zeros(n, dtype=torch.long)
    forwarded = []

    def train(batches):
        for b in batches:
            driver.observe(b, training_loss(b.indices.float()))

    for epoch in range(epochs):
        engine.scored.clear()
        driver.start_epoch(epoch)
        size = batch * driver.candidates_per_batch()
        for idx in torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).split(size):
            train(driver.train_batches(x[idx], y[idx], idx))
        train(driver.end_epoch())
        driver.finish_epoch()
        forwarded.append(set(engine.scored))
    return forwarded, driver


# --- Stale-SB ----------------------------------------------------------------------------------------
def _authors_stale_schedule(n, epochs, stale_n, prime_epochs):
    """angelajiang/SelectiveBackprop, literally: priming marks every example for a forward
    (AlwaysOnSelector); afterwards StaleSelector adds one to ``epochs_since_update`` each time the
    example is seen and asks for a forward when it reaches ``staleness`` (or there is no loss);
    only a forward resets it (CutoutForwardpropper). Returns the forwarded set per epoch."""
    since = {i: 0 for i in range(n)}
    has_loss = set()
    out = []
    for epoch in range(epochs):
        fwd = set()
        for i in range(n):
            if epoch >= prime_epochs:
                since[i] += 1
                if i in has_loss and since[i] < stale_n:
                    continue
            fwd.add(i)
            since[i] = 0
            has_loss.add(i)
        out.append(fwd)
    return out


@pytest.mark.parametrize("stale_n", [1, 2, 3])
def test_stale_sb_forwards_every_nth_epoch_as_the_authors_code(stale_n):
    n, epochs = 50, 8
    policy = create_strategy("stale-sb", StrategyOptions(stale_n=stale_n, selectivity=0.5), batch_size=8,
                             dataset_size=n)
    forwarded, driver = _run_epochs(policy, n, 8, epochs, _IndexEngine())
    expected = _authors_stale_schedule(n, epochs, stale_n, prime_epochs=1)
    # Priming (epoch 0) trains on everything; its training losses stand in for the authors' priming forwards.
    assert forwarded[0] == set()
    assert forwarded[1:] == expected[1:]
    assert all(f in (set(), set(range(n))) for f in forwarded)  # every epoch all-fresh or all-stale
    assert driver.forwards == sum(map(len, forwarded))


def test_stale_sb_reuses_the_latest_loss_selection_or_training():
    """Stale epochs apply SB's rule to the cached loss; as in the authors' backpropper, a trained
    example's cache takes its training loss, without resetting the forward schedule."""
    policy = StaleSB(dataset_size=6, n=3, seed=0)
    idx = torch.arange(6)
    policy.on_epoch_start(0, 6)
    assert policy.requires_forward(idx, 0) is True
    policy.select(torch.arange(6.0), idx, 0)
    policy.observe(torch.tensor([0, 1]), torch.tensor([10.0, 11.0]), epoch=0)
    for epoch in (1, 2):
        policy.on_epoch_start(epoch, 6)
        assert policy.requires_forward(idx, epoch) is False  # a plain "none": no mask to read back
        policy.select(torch.full((6,), float("nan")), idx, epoch)
    assert policy.cached_loss.tolist() == [10.0, 11.0, 2.0, 3.0, 4.0, 5.0]
    policy.on_epoch_start(3, 6)
    assert policy.requires_forward(idx, 3) is True  # the training losses did not postpone it


def test_stale_sb_example_without_a_loss_gets_a_forward_in_a_stale_epoch():
    policy = StaleSB(dataset_size=4, n=3)
    policy.observe(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]), epoch=0)  # 3 was never trained
    policy.on_epoch_start(1, 4)
    assert policy.requires_forward(torch.arange(4), 1).tolist() == [False, False, False, True]
    engine = _IndexEngine()
    driver = SelectionDriver(policy, 4, EngineRefresher(engine))  # the caller that honours the mask
    driver.start_epoch(1)
    list(driver.train_batches(torch.arange(4.0).unsqueeze(1), torch.zeros(4, dtype=torch.long), torch.arange(4)))
    list(driver.end_epoch())  # the last, smaller selection batch: example 3
    assert engine.scored == [3] and policy.cached_loss.tolist() == [1.0, 2.0, 3.0, 4.0]


# --- Kath18 ------------------------------------------------------------------------------------------
def _their_variance_reduction(scores, vr=0.0, momentum=0.9):
    """idiap/importance-sampling VarianceReductionCondition.update, in numpy."""
    scores = np.asarray(scores, dtype=np.float64)
    u = 1.0 / len(scores)
    s = scores.sum()
    g = np.array(u) if s == 0 else scores / s
    new_vr = 1.0 / np.sqrt(1 - ((g - u) ** 2).sum() / (g ** 2).sum())
    return momentum * vr + (1 - momentum) * new_vr


def test_kath18_no_selection_forwards_before_switch_on_and_tau_from_training_losses():
    """Uniform training losses keep tau at 1 < 2: uniform batches of b, every candidate trained,
    no forward at all; tau follows the trained batches' training losses as their code's."""
    n, b, epochs = 64, 8, 3
    policy = create_strategy("kath18", StrategyOptions(), batch_size=b)
    engine = _IndexEngine()
    forwarded, driver = _run_epochs(policy, n, b, epochs, engine, training_loss=lambda idx: torch.ones(len(idx)))
    assert forwarded == [set()] * epochs and driver.forwards == 0
    assert driver.kept == driver.candidates == epochs * n
    assert driver.candidates_per_batch() == 1
    expected = 0.0
    for _ in range(epochs * n // b):
        expected = _their_variance_reduction(np.ones(b), expected)
    assert float(policy.tau) == pytest.approx(expected, rel=1e-12)


def test_kath18_switches_on_once_tau_passes_then_presamples_and_scores():
    n, b = 96, 8
    policy = Kath18(batch_size=b, multiplier=3, seed=0)
    assert policy.tau_threshold == pytest.approx((24 + 24) / 24)
    skewed = lambda idx: torch.where(torch.arange(len(idx)) == 0, 100.0, 1e-3)  # one example carries the loss  # noqa: E731
    forwarded, driver = _run_epochs(policy, n, b, 2, _IndexEngine(), training_loss=skewed)
    tau = 0.0
    for _ in range(n // b):  # epoch 0: uniform batches, tau from their training losses
        tau = _their_variance_reduction(skewed(torch.arange(b)).numpy(), tau)
    assert tau > policy.tau_threshold  # so epoch 1 samples
    assert forwarded[0] == set() and forwarded[1] == set(range(n))
    assert driver.forwards == n
    assert driver.kept == n + n // 3  # epoch 0: all of them; epoch 1: b of each 3b pre-sample


def test_kath18_draw_with_replacement_matches_the_closed_form():
    """P(i in the batch) = 1 - (1 - p_i) ** b and E[count_i] = b p_i for p_i = L_i / sum L."""
    n, b, draws = 24, 8, 4000
    policy = Kath18(batch_size=b, seed=1)
    policy.sampling = True
    losses = torch.linspace(0.05, 3.0, n)
    p = (losses / losses.sum()).double()
    included = torch.zeros(n, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.float64)
    for _ in range(draws):
        c = policy.select(losses, torch.arange(n), 1)
        assert c.dtype == torch.int64 and int(c.sum()) == b
        counts += c
        included += c > 0
    closed = 1 - (1 - p) ** b
    sigma = (closed * (1 - closed) / draws).sqrt()
    assert ((included / draws - closed).abs() <= 4 * sigma + 1e-3).all()
    assert torch.allclose(counts / draws, b * p, atol=0.05)
    assert (counts > included).any()  # duplicates happen: the high-loss examples are drawn twice


def test_kath18_without_replacement_option_keeps_b_distinct():
    policy = Kath18(batch_size=8, replacement=False, seed=0)
    policy.sampling = True
    keep = policy.select(torch.linspace(0.1, 1.0, 24), torch.arange(24), 1)
    assert keep.dtype == torch.bool and int(keep.sum()) == 8


def test_duplicates_of_a_draw_are_trained_as_repeated_rows():
    batcher = BackpropBatcher(4)
    x = torch.arange(6.0).unsqueeze(1)
    (batch,) = list(batcher.add_rows(x, torch.zeros(6, dtype=torch.long), torch.arange(6),
                                     kept_rows(torch.tensor([0, 2, 0, 1, 1, 0]))))
    assert batch.indices.tolist() == [1, 1, 3, 4] and batch.x[:, 0].tolist() == [1.0, 1.0, 3.0, 4.0]


def test_kath18_state_round_trips():
    a = Kath18(batch_size=4, seed=3)
    a.observe(torch.arange(4), torch.tensor([5.0, 0.0, 0.0, 0.0]), 0)
    a.on_epoch_start(1, 2)
    c = Kath18(batch_size=4, seed=9)
    c.load_state_dict(a.state_dict())
    assert float(c.tau) == float(a.tau) and c.sampling == a.sampling and c.epoch == 1
    losses = torch.linspace(0.1, 1.0, 12)
    assert torch.equal(a.select(losses, torch.arange(12), 1), c.select(losses, torch.arange(12), 1))


# --- InfoBatch ---------------------------------------------------------------------------------------
def _reference_prunes(epoch, num_epochs, delta):
    """NUS-HPC-AI-Lab/InfoBatch IBSampler: reset() runs once in __init__ and once per epoch's
    __iter__, pruning unless ``iterations > num_epochs * delta`` (iterations counted before += 1)."""
    iterations = 1 + epoch  # the constructor's reset came first
    return not iterations > num_epochs * delta


@pytest.mark.parametrize("anneal", [0.0, 0.1, 0.125, 0.25, 0.3, 0.5, 1.0])
def test_infobatch_anneals_at_the_reference_epoch(anneal):
    for num_epochs in range(1, 41):
        policy = InfoBatch(10, anneal=anneal)
        for epoch in range(num_epochs):
            policy.on_epoch_start(epoch, num_epochs)
            assert policy.pruning == _reference_prunes(epoch, num_epochs, 1.0 - anneal), (num_epochs, epoch)
        assert InfoBatch.first_full_epoch(num_epochs, anneal) == math.floor(num_epochs * (1 - anneal) + 1e-9)


@pytest.mark.parametrize("prune_ratio,keep_ratio", [(0.5, 0.5), (0.7, 0.3), (0.95, 0.1), (1.0, 0.1), (0.0, 1.0)])
def test_infobatch_prunes_an_exact_share_with_the_clamped_keep_ratio(prune_ratio, keep_ratio):
    """As the reference: floor(keep_ratio * #well-learned) of the below-mean examples stay, weighted
    1 / keep_ratio, with keep_ratio = max(0.1, 1 - prune_ratio)."""
    n = 1000
    policy = InfoBatch(n, prune_ratio=prune_ratio, anneal=0.125, seed=0)
    assert policy.keep_ratio == pytest.approx(keep_ratio)
    idx = torch.arange(n)
    scores = torch.cat([torch.full((600,), 0.1), torch.full((400,), 2.0)])  # mean 0.86: 600 well learned
    policy.observe(idx, scores, 0)
    policy.on_epoch_start(1, 8)
    keep = policy.select(torch.full((n,), float("nan")), idx, 1)
    assert keep[600:].all()
    assert int(keep[:600].sum()) == math.floor(keep_ratio * 600)
    w = policy.loss_weights(idx, 1)
    assert torch.equal(w[:600][keep[:600]], torch.full((int(keep[:600].sum()),), 1 / keep_ratio))
    assert (w[600:] == 1.0).all()
    policy.on_epoch_start(7, 8)  # the annealing epoch: everything, unweighted
    assert policy.select(torch.zeros(n), idx, 7).all() and policy.loss_weights(idx, 7) is None
