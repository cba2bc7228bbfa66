import pytest
import torch

from sb_accel.selection import (InfoBatch, Kath18, Primed, SelectiveBackpropPolicy, StaleSB, Traditional,
                                beta_for_selectivity, keep_probability, variance_reduction)


def iid_losses(n, seed=0):
    return torch.empty(n).exponential_(generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("selectivity", [0.25, 0.33, 0.5])
def test_sb_selectivity_matches_one_over_beta_plus_one(selectivity):
    policy = SelectiveBackpropPolicy(selectivity=selectivity, seed=1)
    assert policy.beta == pytest.approx(1 / selectivity - 1)
    kept = total = 0
    for i in range(200):
        losses = iid_losses(128, seed=i)
        kept += int(policy.select(losses, torch.arange(128), epoch=1).sum())
        total += 128
    rate = kept / total
    # 25600 Bernoulli draws: 4 sigma of a binomial is < 0.013
    assert rate == pytest.approx(1 / (policy.beta + 1), abs=0.015)


def test_higher_loss_is_kept_more_often():
    policy = SelectiveBackpropPolicy(selectivity=0.33, seed=2)
    counts = torch.zeros(10)
    for i in range(300):
        losses = torch.linspace(0.1, 1.0, 10)[torch.randperm(10, generator=torch.Generator().manual_seed(i))]
        keep = policy.select(losses, torch.arange(10), epoch=1)
        order = losses.argsort()
        counts += keep[order].float()
    assert all(counts[i] <= counts[i + 1] + 15 for i in range(9))  # monotone up to noise
    assert counts[-1] > 3 * counts[1]


def test_keep_probability_formula_and_floor():
    p = keep_probability(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), beta=2.0, floor=0.1)
    assert p.tolist() == pytest.approx([0.1, 0.25, 1.0])
    with pytest.raises(ValueError):
        beta_for_selectivity(0.0)
    with pytest.raises(ValueError):
        SelectiveBackpropPolicy(selectivity=1.5)


def test_sb_is_reproducible_and_checkpointable():
    a, b = SelectiveBackpropPolicy(seed=5), SelectiveBackpropPolicy(seed=5)
    losses = iid_losses(64)
    assert torch.equal(a.select(losses, torch.arange(64), 1), b.select(losses, torch.arange(64), 1))
    state = a.state_dict()
    c = SelectiveBackpropPolicy(seed=99)
    c.load_state_dict(state)
    nxt = iid_losses(64, seed=1)
    assert torch.equal(a.select(nxt, torch.arange(64), 1), c.select(nxt, torch.arange(64), 1))


def test_sb_rejects_nan_losses():
    with pytest.raises(FloatingPointError, match="NaN"):
        SelectiveBackpropPolicy().select(torch.tensor([1.0, float("nan")]), torch.arange(2), 1)


def test_stale_sb_reuses_and_refreshes_per_example():
    policy = StaleSB(dataset_size=6, n=3, seed=0)
    idx = torch.arange(6)
    # epoch 0: nothing cached, all need a forward
    assert policy.requires_forward(idx, 0).all()
    policy.select(torch.arange(6.0), idx, 0)
    # epochs 1 and 2: cached losses reused, no forward
    assert not policy.requires_forward(idx, 1).any()
    assert not policy.requires_forward(idx, 2).any()
    # examples 0 and 1 were trained in epoch 2: their loss is refreshed and its age reset
    policy.observe(torch.tensor([0, 1]), torch.tensor([10.0, 11.0]), epoch=2)
    assert policy.cached_loss[:2].tolist() == [10.0, 11.0]
    need = policy.requires_forward(idx, 3)
    assert need.tolist() == [False, False, True, True, True, True]
    # select with NaN for the reused ones uses the cache
    losses = torch.full((6,), float("nan"))
    losses[2:] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    policy.select(losses, idx, 3)
    assert policy.cached_loss.tolist() == [10.0, 11.0, 1.0, 2.0, 3.0, 4.0]
    assert policy.loss_epoch.tolist() == [2, 2, 3, 3, 3, 3]


def test_stale_sb_n1_is_sb():
    idx = torch.arange(32)
    stale, sb = StaleSB(32, n=1, seed=3), SelectiveBackpropPolicy(seed=3)
    for epoch in range(3):
        assert stale.requires_forward(idx, epoch).all()
        losses = iid_losses(32, seed=epoch)
        assert torch.equal(stale.select(losses, idx, epoch), sb.select(losses, idx, epoch))


def test_kath18_keeps_exactly_batch_and_switches_on():
    policy = Kath18(batch_size=8, multiplier=3, seed=0)
    assert policy.tau_threshold == pytest.approx((24 + 24) / 24)
    uniform = torch.ones(24)
    keep = policy.select(uniform, torch.arange(24), 1)
    assert int(keep.sum()) == 8 and not policy.importance_sampling
    skewed = torch.zeros(24)
    skewed[:2] = 100.0  # two examples carry all the loss: tau large
    for _ in range(30):
        keep = policy.select(skewed, torch.arange(24), 1)
    assert policy.importance_sampling
    assert keep[:2].all() and int(keep.sum()) == 8


def test_variance_reduction_values():
    assert variance_reduction(torch.ones(10)) == pytest.approx(1.0)
    # one-hot scores: ||p||^2 = 1, ||p-u||^2 = 1 - 1/B -> tau = sqrt(B)
    one_hot = torch.zeros(16)
    one_hot[3] = 1.0
    assert variance_reduction(one_hot) == pytest.approx(4.0)


def test_infobatch_prunes_below_mean_and_rescales():
    policy = InfoBatch(dataset_size=1000, prune_ratio=0.5, anneal=0.125, seed=0)
    idx = torch.arange(1000)
    policy.on_epoch_start(0, 8)
    assert policy.select(torch.full((1000,), float("nan")), idx, 0).all()  # nothing seen yet
    scores = torch.cat([torch.full((500,), 0.1), torch.full((500,), 2.0)])
    policy.observe(idx, scores, 0)
    policy.on_epoch_start(1, 8)
    keep = policy.select(torch.full((1000,), float("nan")), idx, 1)
    assert keep[500:].all()
    assert 200 < int(keep[:500].sum()) < 300
    w = policy.loss_weights(idx, 1)
    assert w[:500].unique().tolist() == [2.0] and w[500:].unique().tolist() == [1.0]
    policy.on_epoch_start(7, 8)  # the last 12.5% of epochs: full data, no weights
    assert policy.select(torch.zeros(1000), idx, 7).all() and policy.loss_weights(idx, 7) is None


def test_priming_trains_everything_then_defers():
    policy = Primed(SelectiveBackpropPolicy(seed=0), epochs=1)
    idx = torch.arange(16)
    assert policy.requires_forward(idx, 0) is False  # "none": no mask to read back from a GPU
    assert policy.select(torch.full((16,), float("nan")), idx, 0).all()
    assert policy.requires_forward(idx, 1) is True
    assert Primed(Kath18(8), 1).candidates_per_batch(0) == 1
    assert Primed(Kath18(8), 1).candidates_per_batch(1) == 3


def test_traditional_keeps_all_without_forward():
    policy = Traditional()
    idx = torch.arange(5)
    assert policy.requires_forward(idx, 0) is False
    assert policy.select(torch.zeros(5), idx, 0).all()
