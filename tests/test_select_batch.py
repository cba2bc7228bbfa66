"""Per-batch ("Composer-style") Selective-Backprop: sb_accel.BatchSelector and sb_accel.select_batch."""
from collections import namedtuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sb_accel
from sb_accel.per_batch import BatchSelector, select_batch


def _given_losses(output, batch):
    """A loss_fn that reads each row's loss off the batch, so a test sets the losses exactly."""
    return batch["loss"]


def _no_forward(model, batch):
    return None


def test_public_names():
    assert sb_accel.BatchSelector is BatchSelector and sb_accel.select_batch is select_batch


def test_kept_share_follows_selectivity_and_rows_stay_aligned():
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    selector = BatchSelector(model, selectivity=0.33, seed=1)
    kept_rows = 0
    for _ in range(40):
        x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
        ids = torch.arange(64)
        xb, yb, idb = selector((x, y, ids))
        # every leaf was cut by the same rows, in order
        assert torch.equal(xb, x[idb]) and torch.equal(yb, y[idb]) and bool((idb.diff() > 0).all())
        kept_rows += len(idb)
    assert kept_rows == selector.kept and selector.seen == 40 * 64
    assert 0.28 < selector.kept_share < 0.38


def test_keeps_the_high_losses():
    selector = BatchSelector(nn.Identity(), selectivity=0.25, loss_fn=_given_losses, forward=_no_forward)
    kept, all_losses = [], []
    for _ in range(30):
        losses = torch.rand(100)
        all_losses.append(losses)
        kept.append(selector({"loss": losses})["loss"])
    assert torch.cat(kept).mean() > torch.cat(all_losses).mean() + 0.2   # E[kept] = 0.8 for beta = 3, 0.5 overall


def test_history_spans_calls_unlike_a_fresh_select_batch():
    """After high losses, a batch of low ones is mostly dropped; a one-off call scores only against itself."""
    selector = BatchSelector(nn.Identity(), selectivity=0.5, history=1024, loss_fn=_given_losses, forward=_no_forward)
    for _ in range(8):
        selector({"loss": 10 + torch.rand(128)})
    low = {"loss": torch.rand(128)}
    assert len(select_batch(nn.Identity(), low, loss_fn=_given_losses, forward=_no_forward,
                            selectivity=0.5)["loss"]) > 40   # about 64
    history_kept = len(selector(low)["loss"])
    assert history_kept < 20     # percentiles below 128 / 1024 (beta = 1): about 8 kept


def test_never_returns_an_empty_batch():
    selector = BatchSelector(nn.Identity(), selectivity=0.01, loss_fn=_given_losses, forward=_no_forward, min_keep=2)
    for _ in range(20):
        losses = torch.rand(6)
        kept = selector({"loss": losses})["loss"]
        assert len(kept) >= 2
    # beta = 99 keeps nothing here (p <= (2/3) ** 99): the highest loss is the one returned
    selector = BatchSelector(nn.Identity(), selectivity=0.01, loss_fn=_given_losses, forward=_no_forward)
    losses = torch.tensor([0.1, 0.9, 0.3])
    assert torch.equal(selector({"loss": losses})["loss"], losses[1:2])


def test_dict_batches_with_a_model_output_and_namedtuples():
    """An HF-style model (dict in, output object with .logits out) through the default adapters."""
    class Output(dict):
        @property
        def logits(self):
            return self["logits"]

    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 4)

        def forward(self, input_ids, attention_mask):
            return Output(logits=(self.emb(input_ids) * attention_mask[..., None]).mean(1))

    batch = {"input_ids": torch.randint(0, 50, (32, 7)), "attention_mask": torch.ones(32, 7),
             "labels": torch.randint(0, 4, (32,))}
    kept = select_batch(DictModel(), batch, selectivity=0.5)
    assert set(kept) == set(batch) and 0 < len(kept["labels"]) < 32
    assert kept["input_ids"].shape[1:] == (7,)

    Pair = namedtuple("Pair", "x y")
    out = select_batch(nn.Linear(3, 2), Pair(torch.randn(16, 3), torch.randint(0, 2, (16,))), selectivity=0.5)
    assert isinstance(out, Pair) and len(out.x) == len(out.y)


def test_reduced_precision_selection_forward():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    selector = BatchSelector(model, 0.5, precision="bf16")
    assert selector.losses((torch.randn(10, 4), torch.randint(0, 3, (10,)))).dtype == torch.float32
    assert seen == [torch.bfloat16]


def test_selection_forward_leaves_the_model_training_and_builds_no_graph():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append((m.training, o.requires_grad)))
    BatchSelector(model, 0.5)((torch.randn(10, 4), torch.randint(0, 3, (10,))))
    assert seen == [(False, False)] and model.training and model[1].training


def test_bad_loss_shape_and_bad_arguments_are_clear_errors():
    model = nn.Linear(3, 2)
    batch = (torch.randn(4, 3), torch.randint(0, 2, (4,)))
    with pytest.raises(ValueError, match="one loss per example"):
        select_batch(model, batch, loss_fn=lambda out, b: F.cross_entropy(out, b[1]))
    with pytest.raises(ValueError, match="min_keep"):
        BatchSelector(model, min_keep=0)
    with pytest.raises(ValueError, match="selectivity"):
        BatchSelector(model, selectivity=1.5)
    with pytest.raises(Exception, match="precision"):
        BatchSelector(model, precision="int4")
    with pytest.raises(ValueError, match="another model"):
        select_batch(nn.Linear(3, 2), batch, selector=BatchSelector(model))


def test_state_dict_resumes_the_same_decisions():
    batches = [{"loss": torch.rand(50)} for _ in range(6)]
    a = BatchSelector(nn.Identity(), 0.3, loss_fn=_given_losses, forward=_no_forward, seed=3)
    for batch in batches[:3]:
        a(batch)
    b = BatchSelector(nn.Identity(), 0.3, loss_fn=_given_losses, forward=_no_forward, seed=99)
    b.load_state_dict(a.state_dict())
    for batch in batches[3:]:
        assert torch.equal(a(batch)["loss"], b(batch)["loss"])
    assert a.kept == b.kept and a.seen == b.seen
