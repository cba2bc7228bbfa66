"""The selecting loader: the user's batch structure out, len() honoured, every strategy, resume,
Hugging Face models, misconfigurations named (issue 18 items 1, 3, 5, 6; issue 21's API rows)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import (DataLoader, Dataset, IterableDataset, RandomSampler, TensorDataset,
                              WeightedRandomSampler)

import sb_accel
from sb_accel.adapters import causal_lm_loss, per_example_loss
from sb_accel.candidate_rows import CandidateRows
from sb_accel.data.batch_structure import concat, move, num_rows, take_rows
from sb_accel.engines import EngineError
from sb_accel.selection import list_strategies
from sb_accel.selection.expected_share import sb_keep_share

N, B, C = 192, 16, 5


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, C, (n,), generator=g))


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, C))


class Stream(IterableDataset):
    def __iter__(self):
        return iter(_data())


class DictData(Dataset):
    """Dict examples, as a Hugging Face dataset with a collator gives them."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"pixels": x, "labels": y}


class DictModel(nn.Module):
    """Keyword inputs, a ModelOutput-like dict out."""

    def __init__(self):
        super().__init__()
        self.net = _model()

    def forward(self, pixels):
        return {"logits": self.net(pixels)}


def _train(loader, model, epochs, opt=None, forward=lambda m, b: m(b[0]), labels=lambda b: b[1]):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    per_epoch, seen = [], []
    for _ in range(epochs):
        steps = 0
        for batch in loader:
            out = forward(model, batch)
            logits = out["logits"] if isinstance(out, dict) else out
            loss = loader.loss(F.cross_entropy(logits, labels(batch), reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            seen.append(batch)
        per_epoch.append(steps)
    return per_epoch, seen


# --- the loop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_yields_exactly_len_batches_each_epoch(strategy):
    model = _model()
    loader = sb_accel.SelectiveLoader(DataLoader(_data(), batch_size=B, shuffle=True), model, strategy=strategy,
                                      epochs=4, selectivity=0.5)
    planned = len(loader)
    per_epoch, seen = _train(loader, model, 4)
    assert per_epoch == [planned] * 4  # len() * epochs is the run's step count (OneCycleLR, Lightning, HF)
    assert all(len(x) == B for x, _ in seen) and all(isinstance(b, list) for b in seen)
    stats = loader.stats()
    assert stats["steps"] == 4 * planned and stats["epoch"] == 4
    assert stats["untrained_remainder"] < B * (3 if strategy == "kath18" else 1)
    if strategy != "traditional":
        # InfoBatch never scores; Kath18 scores only once its variance estimate switches sampling on
        assert stats["forwards"] > 0 or strategy in ("infobatch", "kath18")
        assert planned < N // B  # fewer steps than full-data training
    if strategy == "kath18":  # as published: uniform batches of b, unscored, until sampling pays
        sampled = loader.policy.sampling
        assert stats["kept"] / stats["candidates"] == (pytest.approx(1 / 3, abs=0.05) if sampled else 1.0)


def test_sb_keeps_about_the_requested_share_after_priming():
    model = _model()
    loader = sb_accel.SelectiveLoader(_data(n=512), model, batch_size=B, selectivity=0.25, epochs=3)
    _train(loader, model, 3)
    stats = loader.stats()
    selecting = (stats["kept"] - 512) / (stats["candidates"] - 512)  # the first pass primes (keeps all)
    assert 0.15 < selecting < 0.35
    assert loader.stats()["engine"] == "torch-fp32" and stats["selection_share"] > 0


def test_len_without_epochs_realigns_each_epoch_to_a_pass():
    model = _model()
    loader = sb_accel.SelectiveLoader(_data(), model, batch_size=B, selectivity=0.5, prime_epochs=0)
    assert len(loader) == round(N * 0.5 / B)
    per_epoch, _ = _train(loader, model, 3)
    assert per_epoch[0] == round(N * 0.5 / B)
    assert abs(loader.stats()["passes"] - 3) <= 1


def test_dict_batches_and_a_model_returning_a_dict():
    model = DictModel()
    loader = sb_accel.SelectiveLoader(DictData(_data()), model, batch_size=B, epochs=2, prime_epochs=0)
    planned = len(loader)
    per_epoch, seen = _train(loader, model, 2, forward=lambda m, b: m(pixels=b["pixels"]), labels=lambda b: b["labels"])
    assert per_epoch == [planned] * 2
    assert all(set(b) == {"pixels", "labels"} and len(b["labels"]) == B for b in seen)


def test_yielded_rows_are_the_datasets_own_examples():
    data = _data()
    model = _model()
    loader = sb_accel.SelectiveLoader(data, model, batch_size=B, selectivity=0.5, prime_epochs=0, epochs=1)
    _, seen = _train(loader, model, 1)
    rows = {tuple(x.flatten().tolist()): int(y) for x, y in zip(data.tensors[0], data.tensors[1])}
    for x, y in seen:
        for xi, yi in zip(x, y):
            assert rows[tuple(xi.flatten().tolist())] == int(yi)


def test_state_dict_resumes_exactly():
    data = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loader_for(net):
        return sb_accel.SelectiveLoader(data, net, batch_size=B, strategy="stale-sb", epochs=6, selectivity=0.5,
                                        stale_n=2)

    loader = loader_for(model)
    # a state after a stale epoch (published Stale-SB: its selection forwards come every n-th pass),
    # mid-pass: len() is fixed, so epochs and passes drift apart
    for _ in range(3):
        _train(loader, model, 1, opt=opt)
    state = copy.deepcopy(loader.state_dict())
    assert state["driver"]["epoch"] >= 2
    weights, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _, rest = _train(loader, model, 2, opt=opt)

    model2 = _model(seed=1)
    model2.load_state_dict(weights)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    opt2.load_state_dict(opt_state)
    resumed = loader_for(model2)
    resumed.load_state_dict(state)
    _, again = _train(resumed, model2, 2, opt=opt2)
    assert len(again) == len(rest)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, again))


def test_a_snapshot_engine_is_refreshed_on_a_cadence_that_pays():
    pytest.importorskip("onnxruntime")
    model = _model()
    loader = sb_accel.SelectiveLoader(_data(), model, batch_size=B, engine="torch-fp32", prime_epochs=0, epochs=2)
    assert loader.stats()["refresh_every"] is None  # torch reads the live model: never refreshed
    fixed = sb_accel.SelectiveLoader(_data(), model, batch_size=B, engine="onnxruntime-fp32", prime_epochs=0,
                                     epochs=2, refresh_every=3)
    _train(fixed, model, 2)  # an exported engine scores the stored (inputs, labels) rows
    assert fixed.stats()["engine"] == "onnxruntime-fp32" and fixed.refresher.count == fixed.steps // 3
    primed = sb_accel.SelectiveLoader(_data(), model, batch_size=B, engine="onnxruntime-fp32", epochs=2,
                                      refresh_every=1)
    _train(primed, model, 2)
    refreshes = [e for e in primed.events if e["event"] == "refresh"]
    # none while the first pass primes (no selection runs), one made up as selection starts, then every step
    assert refreshes[0]["reason"] == "resume" and refreshes[0]["step"] >= len(_data()) // B
    auto = sb_accel.SelectiveLoader(_data(), model, batch_size=B, engine="onnxruntime-fp32", prime_epochs=0)
    assert auto._cadence() == 1  # nothing measured yet: every step
    auto.steps, auto._seconds["training"], auto._refresh_seconds = 10, 1.0, 0.02  # a step 0.1 s, a refresh 0.02 s
    assert auto._cadence() == 4  # the smallest K with 0.02 s <= 5% of K steps


def test_workers_load_the_candidates():
    # "spawn": a forked worker can inherit a lock held by a thread of an earlier test (ONNX Runtime's
    # pools, gloo) and wait on it forever; spawn also checks the user's context reaches the workers.
    model = _model()
    data = DataLoader(_data(), batch_size=B, num_workers=1, multiprocessing_context="spawn")
    loader = sb_accel.SelectiveLoader(data, model, epochs=1, prime_epochs=0)
    planned = len(loader)
    assert _train(loader, model, 1)[0] == [planned]


# --- adapters and batch structures -----------------------------------------------------------------
def test_per_example_loss_reads_outputs_and_batches_of_every_shape():
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    expected = F.cross_entropy(logits, y, reduction="none")
    for output in (logits, (logits, None), {"logits": logits}):
        for batch in ((None, y), {"labels": y}):
            assert torch.allclose(per_example_loss(output, batch), expected)
    tokens = torch.randn(2, 3, 4)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 3]])
    got = per_example_loss(tokens, {"labels": labels})
    first = F.cross_entropy(tokens[0, [0, 2]], labels[0, [0, 2]])
    assert torch.allclose(got, torch.stack([first, F.cross_entropy(tokens[1, 2:], labels[1, 2:])]))
    shifted = causal_lm_loss(tokens, {"labels": torch.tensor([[0, 1, 2], [3, 0, 1]])})
    assert torch.allclose(shifted[1], F.cross_entropy(tokens[1, :2], torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="integer tensor of class indices"):
        per_example_loss(logits, (None, torch.rand(4, 3)))
    with pytest.raises(KeyError, match="no 'labels' entry"):
        per_example_loss(logits, {"y": y})


def test_batch_structure_helpers_keep_the_structure():
    batch = {"a": torch.arange(6).reshape(3, 2), "nested": (torch.arange(3), [torch.ones(3, 1)])}
    assert num_rows(batch) == 3
    taken = take_rows(batch, torch.tensor([2, 0]))
    assert taken["a"].tolist() == [[4, 5], [0, 1]] and isinstance(taken["nested"], tuple)
    assert num_rows(concat([batch, taken])) == 5 and move(batch, "cpu")["a"] is batch["a"]
    with pytest.raises(TypeError, match=r"batch\['names'\]\[0\] is a str, not a tensor"):
        num_rows({"x": torch.ones(2), "names": ["a", "b"]})
    with pytest.raises(ValueError, match="disagree"):
        num_rows((torch.ones(2), torch.ones(3)))


def test_candidate_rows_gather_across_batches_in_any_order_and_release():
    rows = CandidateRows()
    a = rows.add((torch.arange(4) * 10,))
    b = rows.add((torch.arange(3) * 100,))
    picked = rows.gather(torch.tensor([b[1], a[3], a[0]]))
    assert picked[0].tolist() == [100, 30, 0]
    rows.release([b[:1]])
    assert len(rows) == 1
    with pytest.raises(KeyError, match="released"):
        rows.gather(a[:1])


def test_sb_keep_share_with_a_floor():
    assert sb_keep_share(2.0) == pytest.approx(1 / 3)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0)).double()
    assert sb_keep_share(2.0, 0.2) == pytest.approx(float(u.pow(2).clamp_min(0.2).mean()), abs=3e-3)


# --- Hugging Face models (built from a config: no download) ----------------------------------------
def test_a_hugging_face_sequence_classifier_trains_under_sb_with_dict_batches():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(1, 50, (96, 8), generator=g), torch.randint(0, 3, (96,), generator=g)
    examples = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels[i]}
                for i in range(96)]
    loader = sb_accel.SelectiveLoader(examples, model, batch_size=8, epochs=2, prime_epochs=0, engine="torch-fp32")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    planned, steps = len(loader), 0
    for _ in range(2):
        for batch in loader:
            out = model(**batch)  # a ModelOutput; the user's own forward, labels included
            loss = loader.loss(F.cross_entropy(out.logits, batch["labels"], reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    assert steps == 2 * planned < 2 * 96 // 8 and 0.15 < loader.stats()["kept_share"] < 0.6


def test_a_causal_lm_is_selected_per_sequence():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 40, (64, 10), generator=torch.Generator().manual_seed(0))
    examples = [{"input_ids": ids[i], "labels": ids[i]} for i in range(64)]
    loader = sb_accel.SelectiveLoader(examples, model, batch_size=8, loss_fn=causal_lm_loss, epochs=1, prime_epochs=0)
    planned = len(loader)
    for batch in loader:
        out = model(input_ids=batch["input_ids"])
        loader.loss(causal_lm_loss(out, batch)).backward()
    assert loader.stats()["steps"] == planned and loader.stats()["forwards"] >= 64


# --- misconfigurations: an error naming the problem and the fix -------------------------------------
def test_misconfigurations_are_refused_with_their_fix():
    data, model = _data(), _model()
    cases = [
        (dict(data=DataLoader(data, batch_size=B, sampler=RandomSampler(data, replacement=True))), "with replacement"),
        (dict(data=DataLoader(data, batch_size=B, sampler=WeightedRandomSampler(torch.ones(N), N))), "with replacement"),
        (dict(data=DataLoader(data, batch_size=B, sampler=list(range(N)))), "custom sampler"),
        (dict(data=DataLoader(Stream(), batch_size=B)), "needs a map-style Dataset"),
        (dict(strategy="infobatch"), "pass epochs="),
        (dict(batch_size=0), "positive integer"),
        (dict(batch_size=N + 1), "fewer than one batch"),
        (dict(engine="onnxruntime-int8", loss_fn=per_example_loss), "torch engines: torch, torch-graph"),
        (dict(engine="onnxruntme-int8"), "unknown engine backend"),
        (dict(history=0, colour=1), r"unknown option\(s\) \['colour'\]"),
    ]
    for changes, message in cases:
        kwargs = {"data": data, "batch_size": B, **changes}
        with pytest.raises((ValueError, TypeError, EngineError), match=message):
            sb_accel.SelectiveLoader(kwargs.pop("data"), model, **kwargs)


def test_a_wrong_state_dict_is_refused():
    data, model = _data(), _model()
    sb = sb_accel.SelectiveLoader(data, model, batch_size=B)
    with pytest.raises(ValueError, match="not a SelectiveLoader state dict"):
        sb.load_state_dict({})
    traditional = sb_accel.SelectiveLoader(data, model, batch_size=B, strategy="traditional").state_dict()
    with pytest.raises(ValueError, match="strategy='traditional', this one has 'sb'"):
        sb.load_state_dict(traditional)
    smaller = sb_accel.SelectiveLoader(_data(n=N // 2), model, batch_size=B).state_dict()
    with pytest.raises(ValueError, match="dataset_size=96, this one has 192"):
        sb.load_state_dict(smaller)


def test_bad_data_is_named_at_the_batch_that_holds_it():
    x, y = torch.randn(N, 3, 4, 4), torch.randint(0, C, (N,))
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, C))
    with pytest.raises(ValueError, match=r"shape \(16, 8, 8, 3\): that looks channels-last"):
        sb_accel.SelectiveLoader(TensorDataset(torch.randn(N, 8, 8, 3), y), conv, batch_size=B)
    late_label = y.clone()
    late_label[-1] = C  # only in a later candidate batch
    loader = sb_accel.SelectiveLoader(TensorDataset(x, late_label), _model(), batch_size=B, shuffle=False,
                                      prime_epochs=0)
    with pytest.raises(ValueError, match=f"label {C} is outside the model's {C} classes"):
        _train(loader, _model(), 1)
    negative = y.clone()
    negative[-1] = -3
    loader = sb_accel.SelectiveLoader(TensorDataset(x, negative), _model(), batch_size=B, shuffle=False)
    with pytest.raises(ValueError, match="label -3 is outside"):
        _train(loader, _model(), 1)
    nan = x.clone()
    nan[-1, 0, 0, 0] = float("nan")
    loader = sb_accel.SelectiveLoader(TensorDataset(nan, y), _model(), batch_size=B, shuffle=False)
    with pytest.raises(ValueError, match=r"NaN/inf inputs \(dataset indices \[176,"):
        _train(loader, _model(), 1)


def test_non_finite_training_losses_are_refused_not_stored():
    model = _model()
    loader = sb_accel.SelectiveLoader(_data(), model, batch_size=B, strategy="infobatch", epochs=2)
    batch = next(iter(loader))
    with pytest.raises(FloatingPointError, match=r"training losses passed to loss\(\) are NaN"):
        loader.loss(torch.full((len(batch[1]),), float("nan")))
    assert loader.driver.observed == 0  # the NaN losses never reached InfoBatch's table


def test_the_loss_must_go_through_the_loader_for_strategies_that_learn_from_it():
    model = _model()
    loader = sb_accel.SelectiveLoader(_data(), model, batch_size=B, strategy="stale-sb", epochs=2)
    with pytest.raises(RuntimeError, match="loss\\(\\) comes after"):
        loader.loss(torch.zeros(B))
    with pytest.raises(RuntimeError, match=r"loader.loss\(F.cross_entropy"):
        for x, y in loader:
            F.cross_entropy(model(x), y).backward()


# --- the per-example loss hook on the engines -------------------------------------------------------
def test_torch_graph_replays_any_batch_structure_like_eager_torch():
    from sb_accel.engines import EngineContext, TorchEngine
    from test_torch_graph_engine import StandInGraphEngine

    model = DictModel()
    context = EngineContext(max_batch=32, options={"bucket_sizes": [8, 16, 32]})
    engine = StandInGraphEngine(model, "fp32", context)
    forward = lambda m, b: m(pixels=b["pixels"])  # noqa: E731
    eager = TorchEngine(model)
    for n in (3, 8, 20, 40):
        x, y = _data(n=n, seed=n).tensors
        batch = {"pixels": x, "labels": y}
        torch.testing.assert_close(engine.batch_losses(batch, forward, per_example_loss),
                                   eager.batch_losses(batch, forward, per_example_loss), atol=1e-5, rtol=1e-5)
    assert engine.captures == 1  # one structure, one capture
    engine.batch_losses({"pixels": torch.randn(4, 3, 4, 4), "labels": torch.zeros(4, dtype=torch.long)},
                        lambda m, b: m(pixels=b["pixels"]), per_example_loss)
    assert engine.captures == 2  # another forward function: captured again
    with pytest.raises(EngineError, match="every part is a tensor"):
        engine.batch_losses({"pixels": x, "names": ["a"] * len(x)}, forward, per_example_loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_selects_dict_batches_with_cuda_graphs_on_a_gpu():
    model = DictModel().cuda()
    loader = sb_accel.SelectiveLoader(DictData(_data(n=512)), model, batch_size=32, engine="torch-graph-fp16",
                                      epochs=2, prime_epochs=0)
    planned = len(loader)
    per_epoch, _ = _train(loader, model, 2, forward=lambda m, b: m(pixels=b["pixels"]), labels=lambda b: b["labels"])
    assert per_epoch == [planned] * 2 and loader.stats()["engine"] == "torch-graph-fp16"
    assert loader.refresher.engine.captures == 1
