"""The selecting loader under DDP (2 gloo processes, CPU): every rank yields the same number of
batches per epoch whatever each keeps, so no rank waits for a step another will not take. Each job
runs under test_distributed's deadline: a hang fails."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

import sb_accel
from sb_accel.selection import list_strategies
from test_distributed import WORLD, run_ranks

N, B, EPOCHS = 256, 8, 3


def _uneven_data():
    """Rank 0 (even indices, unshuffled) gets noise labels that stay hard, rank 1 labels given by the
    inputs' first feature, learnt fast: SB keeps far more on rank 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 12, generator=g)
    y = torch.where(torch.arange(N) % 2 == 0, torch.randint(0, 4, (N,), generator=g), (x[:, 0] > 0).long())
    x[1::2, 0] *= 4
    return TensorDataset(x, y)


def _train_on_rank(rank, strategy):
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(12, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    loader = sb_accel.SelectiveLoader(_uneven_data(), model, batch_size=B, strategy=strategy, epochs=EPOCHS,
                                      selectivity=0.3, shuffle=False, prime_epochs=0)
    planned, steps = len(loader), []
    for _ in range(EPOCHS):
        n = 0
        for x, y in loader:
            loss = loader.loss(F.cross_entropy(model(x), y, reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
        steps.append(n)
    n = 0
    for x, y in loader:  # past the planned epochs: len() re-planned and agreed between the ranks
        loader.loss(F.cross_entropy(model(x), y, reduction="none")).backward()
        n += 1
    return {"planned": planned, "steps": steps, "extra": n, "kept": loader.driver.kept,
            "weight": model.module.weight.detach().clone(), "stats": loader.stats()}


@pytest.mark.parametrize("strategy", list_strategies())
def test_ranks_yield_the_same_batches_per_epoch_with_uneven_kept_counts(tmp_path, strategy):
    ranks = run_ranks(tmp_path, _train_on_rank, strategy)
    assert len(ranks) == WORLD
    first = ranks[0]
    for other in ranks[1:]:
        assert other["steps"] == first["steps"] == [first["planned"]] * EPOCHS
        assert other["planned"] == first["planned"] and other["extra"] == first["extra"] >= 1
        assert torch.equal(other["weight"], first["weight"])  # DDP kept the replicas equal
    if strategy in ("sb", "stale-sb"):
        assert ranks[0]["kept"] > 1.5 * ranks[1]["kept"]  # deliberately uneven
