import pytest
import torch

from sb_accel.selection import (InfoBatch, Kath18, Primed, SelectionPolicy, SelectiveBackpropPolicy, StaleSB, Traditional,
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


class _NanEngine:
    """Selection losses with one NaN (row 3) among finite ones."""

    name = "nan"

    def losses(self, x, y):
        losses = x.flatten(1).mean(1).abs() + 0.1
        losses[3] = float("nan")
        return losses


class _NanRefresher:
    engine = _NanEngine()

    def after_step(self, model, step):
        return []


@pytest.mark.parametrize("deferred", [False, True], ids=["host", "device"])
@pytest.mark.parametrize("strategy", ["traditional", "sb", "stale-sb", "kath18", "infobatch"])
def test_nan_selection_losses_raise_one_error_for_every_strategy(strategy, deferred):
    """Checked by the driver before any policy sees them (policies know nothing about devices): at once
    on the host; on a device folded into a flag, no host read, and raised at the epoch's end."""
    from sb_accel.selection import StrategyOptions, create_strategy
    from sb_accel.train import SelectionDriver
    from sb_accel.train.scoring import ScoredBatch, ScoredCandidates

    policy = create_strategy(strategy, StrategyOptions(prime_epochs=0), batch_size=8, dataset_size=32)
    if strategy == "kath18":
        policy.tau = torch.tensor(5.0, dtype=torch.float64)  # importance sampling on: it scores
    driver = SelectionDriver(policy, 8, _NanRefresher())
    driver.selection_losses.deferred = deferred
    driver.start_epoch(0)
    x, y, idx = torch.rand(16, 3), torch.randint(0, 10, (16,)), torch.arange(16)
    if policy.needs_selection_forward:
        run = lambda: list(driver.train_batches(x, y, idx))  # noqa: E731
    else:  # no forwards of its own: losses scored elsewhere (the caller, a pipeline) are checked all the same
        scored = ScoredBatch(16, [ScoredCandidates(x, y, idx, _NanEngine().losses(x, y), 16)])
        run = lambda: list(driver.submit(scored))  # noqa: E731
    if not deferred:
        with pytest.raises(FloatingPointError, match=r"^1 of 16 selection losses are NaN/inf: the model has diverged"):
            run()
        return
    run()
    with pytest.raises(FloatingPointError, match=r"^selection losses are NaN/inf: the model has diverged"):
        driver.finish_epoch()


def test_nan_check_counts_only_the_scored_candidates():
    """Candidates without a selection forward carry NaN ("no fresh loss", Stale-SB's cached ones)."""
    from sb_accel.train.divergence import SelectionLossCheck

    check = SelectionLossCheck()
    nan = float("nan")
    check.update(torch.tensor([nan, nan, 1.0, 2.0]), forwards=2)
    check.update(torch.full((4,), nan), forwards=0)
    with pytest.raises(FloatingPointError, match="^1 of 2 selection losses"):
        check.update(torch.tensor([nan, nan, nan, 2.0]), forwards=2)
    with pytest.raises(FloatingPointError, match="^1 of 2 selection losses"):
        check.update(torch.tensor([nan, nan, float("inf"), 2.0]), forwards=2)


def test_stale_sb_n1_is_sb():
    idx = torch.arange(32)
    stale, sb = StaleSB(32, n=1, seed=3), SelectiveBackpropPolicy(seed=3)
    for epoch in range(3):
        stale.on_epoch_start(epoch, 3)
        assert stale.requires_forward(idx, epoch) is True
        losses = iid_losses(32, seed=epoch)
        assert torch.equal(stale.select(losses, idx, epoch), sb.select(losses, idx, epoch))


def test_kath18_keeps_exactly_batch_once_sampling():
    policy = Kath18(batch_size=8, multiplier=3, seed=0)
    policy.on_epoch_start(0, 2)
    assert not policy.sampling and policy.requires_forward(torch.arange(8), 0) is False
    assert policy.select(torch.full((8,), float("nan")), torch.arange(8), 0).all()  # uniform batch of b: all
    keep = policy.select(torch.full((24,), float("nan")), torch.arange(24), 0)  # more given: b of them, uniformly
    assert keep.dtype == torch.bool and int(keep.sum()) == 8
    for _ in range(30):  # one example in each trained batch carries all the loss: tau rises to sqrt(8) > 2
        policy.observe(torch.arange(8), torch.tensor([100.0] + [0.0] * 7), 0)
    assert policy.importance_sampling and policy.candidates_per_batch(1) == 3
    policy.on_epoch_start(1, 2)
    skewed = torch.zeros(24)
    skewed[:2] = 100.0
    counts = policy.select(skewed, torch.arange(24), 1)
    assert int(counts.sum()) == 8 and int(counts[:2].sum()) == 8


def test_variance_reduction_values():
    assert float(variance_reduction(torch.ones(10))) == pytest.approx(1.0)
    assert float(variance_reduction(torch.zeros(10))) == pytest.approx(1.0)
    # one-hot scores: ||p||^2 = 1, ||p-u||^2 = 1 - 1/B -> tau = sqrt(B)
    one_hot = torch.zeros(16)
    one_hot[3] = 1.0
    assert float(variance_reduction(one_hot)) == pytest.approx(4.0)


def test_priming_trains_everything_then_defers():
    policy = Primed(SelectiveBackpropPolicy(seed=0), epochs=1)
    idx = torch.arange(16)
    assert policy.requires_forward(idx, 0) is False  # "none": no mask to read back from a GPU
    assert policy.select(torch.full((16,), float("nan")), idx, 0).all()
    assert policy.requires_forward(idx, 1) is True
    assert Primed(Kath18(8), 1).candidates_per_batch(0) == 1
    assert Primed(Kath18(8), 1).candidates_per_batch(1) == 1  # Kath18 pre-samples only once sampling pays


PRIMING_CHANGES = {"priming", "to", "candidates_per_batch", "requires_forward", "keeps_all", "select", "loss_weights"}


@pytest.mark.parametrize("make", [Traditional, lambda: SelectiveBackpropPolicy(seed=1), lambda: StaleSB(16, seed=1),
                                  lambda: Kath18(4, seed=1), lambda: InfoBatch(16, seed=1)],
                         ids=["traditional", "sb", "stale-sb", "kath18", "infobatch"])
def test_primed_is_its_policy_except_for_what_priming_changes(make):
    """The wrapper forwards generically: every public attribute of the policy (methods, class attributes,
    tables) is the policy's own through it, and a write through it reaches the policy."""
    policy = make()
    primed = Primed(policy, 2)
    assert isinstance(primed, SelectionPolicy) and primed.to("cpu") is primed
    names = [n for n in dir(policy) if not n.startswith("_") and n not in PRIMING_CHANGES]
    assert {"name", "needs_selection_forward", "uses_training_losses", "candidate_multiplier", "device", "observe",
            "on_epoch_start", "on_epoch_end", "state_dict", "load_state_dict", "example_tables"} <= set(names)
    for name in names:
        mine, through = getattr(policy, name), getattr(primed, name)
        assert through is mine or (not torch.is_tensor(mine) and through == mine), name
    primed.seed = 7
    assert policy.seed == 7 and not hasattr(Primed, "seed")
    idx = torch.arange(4)
    for epoch in (0, 1):  # priming: every candidate, unweighted, no forward, one training batch per candidate batch
        policy.on_epoch_start(epoch, 4)
        assert primed.keeps_all(epoch) and primed.requires_forward(idx, epoch) is False
        assert primed.select(torch.rand(4), idx, epoch).all() and primed.loss_weights(idx, epoch) is None
        assert primed.candidates_per_batch(epoch) == 1
    policy.on_epoch_start(2, 4)
    assert primed.keeps_all(2) == policy.keeps_all(2)
    ask, asked = primed.requires_forward(idx, 2), policy.requires_forward(idx, 2)
    assert ask is asked or torch.equal(ask, asked)


def test_traditional_keeps_all_without_forward():
    policy = Traditional()
    idx = torch.arange(5)
    assert policy.requires_forward(idx, 0) is False
    assert policy.select(torch.zeros(5), idx, 0).all()


def test_example_tables_are_the_ones_each_policy_declares():
    """DDP keeps exactly the declared tables identical on every rank (not any tensor of length N)."""
    from sb_accel.train.tables import ExampleTables

    assert list(StaleSB(8).example_tables()) == ["cached_loss", "loss_epoch"]
    infobatch = InfoBatch(8)
    assert list(infobatch.example_tables()) == ["scores"]  # its per-rank draw (pruned, upweighted) is not shared
    assert SelectiveBackpropPolicy().example_tables() == {} and Kath18(8).example_tables() == {}
    tables = ExampleTables(Primed(infobatch, 1), 8, group=None)
    assert tables.names == ("scores",) and tables.tables()["scores"] is infobatch.scores
    infobatch.load_state_dict(InfoBatch(8).state_dict())  # a resume replaces the tensors: asked anew
    assert tables.tables()["scores"] is infobatch.scores
    assert not ExampleTables(SelectiveBackpropPolicy(), 8, group=None)
    with pytest.raises(ValueError, match=r"cached_loss.*not one value per training example \(9\)"):
        ExampleTables(StaleSB(8), 9, group=None)
