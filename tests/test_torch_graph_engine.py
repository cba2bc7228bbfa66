"""torch-graph: bucketing (exact), the CPU refusal, the engine's own logic on CPU (pad, split,
re-capture, modes, snapshots) with a stand-in for the CUDA graph that reads the model's tensors as a
graph does, by the address they had at capture, and on a GPU the real CUDA graphs against eager
torch (skipped without CUDA): sizes around the buckets, an in-place optimizer step and a BatchNorm
running-stat change seen without re-capture, the train/eval mode restored, a reallocated model
re-captured."""

import warnings

import pytest
import torch
import torch.nn as nn

from sb_accel.engines import EngineContext, EngineError, TorchEngine, create_engine, list_engines
from sb_accel.engines.buckets import plan_buckets, usable_buckets
from sb_accel.engines.cuda_graphs import CapturedBatch, input_memory_format, pointer_table, pointers_unchanged
from sb_accel.engines.torch_graph import CPU_REFUSAL, TorchGraphEngine
from sb_accel.models import create_model

BUCKETS = (128, 256, 512, 1024)


# --- pure bucketing -------------------------------------------------------------------------------
@pytest.mark.parametrize("n,plan", [
    (0, []),
    (1, [(0, 1, 128)]),
    (100, [(0, 100, 128)]),
    (128, [(0, 128, 128)]),
    (129, [(0, 129, 256)]),
    (300, [(0, 300, 512)]),
    (1024, [(0, 1024, 1024)]),
    (1025, [(0, 1024, 1024), (1024, 1025, 128)]),
    (1500, [(0, 1024, 1024), (1024, 1500, 512)]),
    (2048, [(0, 1024, 1024), (1024, 2048, 1024)]),
    (3000, [(0, 1024, 1024), (1024, 2048, 1024), (2048, 3000, 1024)]),
])
def test_plan_buckets_pads_to_the_smallest_bucket_and_splits_above_the_largest(n, plan):
    assert plan_buckets(n, BUCKETS) == plan


def test_plan_buckets_with_one_bucket_and_bad_sizes():
    assert plan_buckets(5, (4,)) == [(0, 4, 4), (4, 5, 4)]
    with pytest.raises(ValueError):
        plan_buckets(-1, BUCKETS)


def test_usable_buckets_stop_at_the_smallest_that_holds_max_batch():
    assert usable_buckets([1024, 128, 512, 256, 128], 128) == (128,)
    assert usable_buckets(BUCKETS, 300) == (128, 256, 512)
    assert usable_buckets(BUCKETS, 1024) == BUCKETS
    assert usable_buckets(BUCKETS, 5000) == BUCKETS  # larger batches are split
    for bad in ([], [0, 128], [128.0], [True]):
        with pytest.raises(EngineError, match="bucket_sizes"):
            usable_buckets(bad, 128)


# --- CPU ------------------------------------------------------------------------------------------
def _batch(n, seed=0, shape=(3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_refuses_cpu_with_a_clear_message():
    assert CPU_REFUSAL == "torch-graph needs CUDA; use torch-fp32 / onnxruntime-int8 on CPU"
    model = create_model("small_cnn", width=2)
    for spec in ("torch-graph-fp16", "torch-graph-bf16", "torch-graph-fp32", "torch-graph"):
        with pytest.raises(EngineError) as info:
            create_engine(spec, model, EngineContext(sample_batches=[_batch(4)]))
        assert str(info.value) == CPU_REFUSAL
    assert "torch-graph-fp16" in list_engines()


class StandInGraphEngine(TorchGraphEngine):
    """The engine on CPU, its CUDA capture replaced by a stand-in with a graph's semantics: a replay
    reads the parameter and buffer tensors the model held at capture (a graph reads them by address),
    so an in-place update is seen and a reallocated tensor is not, until the engine re-captures."""

    def capture(self, forward, x, y, pool=None, stream=None, warmup=0):
        # every parameter and buffer with the dict that holds it (listed here, not by the engine's
        # pointer_table: the stand-in must not share what it tests)
        captured = [(store, name, tensor) for module in self.model.modules()
                    for store in (module._parameters, module._buffers) for name, tensor in store.items()]
        out = forward(x, y)

        def replay():
            now = [(store, name, store.get(name)) for store, name, _ in captured]
            for store, name, tensor in captured:  # the tensors (addresses) of the capture...
                store[name] = tensor
            try:
                out.copy_(forward(x, y))
            finally:  # ...read for this replay only; the model keeps what it holds now
                for store, name, tensor in now:
                    store[name] = tensor

        return CapturedBatch(x, y, out, replay)

    def _check_device(self, model, context):
        return next(model.parameters()).device


def _engine(model, buckets=(8, 16, 32), **options):
    context = EngineContext(sample_batches=[_batch(8)], max_batch=max(buckets),
                            options={"bucket_sizes": list(buckets), **options})
    return StandInGraphEngine(model, "fp32", context)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return create_model("small_cnn", width=2).to(memory_format=torch.channels_last)


def test_engine_pads_splits_and_slices_like_eager_torch(model):
    engine = _engine(model)
    assert engine.buckets == (8, 16, 32) and engine.captures == 1 and engine.is_live
    assert engine.name == "torch-graph-fp32" and input_memory_format(model) == torch.channels_last
    assert engine._graphs[8].x.is_contiguous(memory_format=torch.channels_last)
    for n in (1, 5, 8, 9, 20, 32, 70):
        x, y = _batch(n, seed=n)
        got = engine.losses(x, y)
        assert got.shape == (n,) and got.dtype == torch.float32
        torch.testing.assert_close(got, TorchEngine(model).losses(x, y), atol=1e-5, rtol=1e-5)
    assert engine.losses(*_batch(0)).shape == (0,)
    assert engine.captures == 1


def test_stand_in_replays_read_the_tensors_of_the_capture(model):
    """The stand-in is a graph where it matters here: a replay without re-capture after the model's
    tensors were reallocated still computes with the old ones (an eager replay would not)."""
    engine = _engine(model)
    graph, (x, y) = engine._graphs[8], _batch(8, seed=5)
    graph.x.copy_(x)
    graph.y.copy_(y)
    graph.replay()
    before = graph.out.clone()
    model.load_state_dict({k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()},
                          assign=True)
    graph.replay()
    torch.testing.assert_close(graph.out, before)
    assert (TorchEngine(model).losses(x, y) - before).abs().max() > 1e-3


def test_engine_sees_in_place_updates_through_the_captured_tensors_and_restores_the_mode(model):
    engine = _engine(model)
    x, y = _batch(20, seed=1)
    before = engine.losses(x, y)
    addresses = [t.data_ptr() for _, _, t, _ in pointer_table(model)]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # in place: same tensors, same addresses; BN running stats updated by the forward
    assert addresses == [t.data_ptr() for _, _, t, _ in pointer_table(model)]
    after = engine.losses(x, y)
    assert model.training and all(m.training for m in model.modules())  # the caller's mode is kept
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, TorchEngine(model).losses(x, y), atol=1e-5, rtol=1e-5)
    assert engine.captures == 1 and model.training


def test_reallocated_parameters_are_recaptured_with_a_warning(model):
    engine = _engine(model)
    x, y = _batch(12, seed=2)
    engine.losses(x, y)
    table = pointer_table(model)
    assert pointers_unchanged(table)
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)  # new tensor objects at new addresses
    assert not pointers_unchanged(table)
    with pytest.warns(UserWarning, match="re-captured"):
        got = engine.losses(x, y)
    assert engine.captures == 2
    torch.testing.assert_close(got, TorchEngine(model).losses(x, y), atol=1e-5, rtol=1e-5)
    engine.losses(x, y)
    assert engine.captures == 2


def test_a_reallocated_batchnorm_buffer_alone_is_recaptured(model):
    """Buffers are read by address too: new running statistics assigned to one BatchNorm (not copied
    in place) are seen only through a re-capture."""
    engine = _engine(model)
    x, y = _batch(12, seed=6)
    before = engine.losses(x, y)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_var = bn.running_var * 4 + 1  # a new tensor under the same name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = engine.losses(x, y)
    assert (got - before).abs().max() > 1e-3  # the new statistics are used...
    torch.testing.assert_close(got, TorchEngine(model).losses(x, y), atol=1e-5, rtol=1e-5)
    assert engine.captures == 2 and any("re-captured" in str(w.message) for w in caught)  # ...through a re-capture


def test_fp32_capture_ignores_the_callers_autocast(model):
    """A (re-)capture can happen inside an AMP training loop's autocast region: FP32 stays FP32."""
    x, y = _batch(9, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine = _engine(model)
        got = engine.losses(x, y)
    torch.testing.assert_close(got, TorchEngine(model).losses(x, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [_engine, TorchEngine], ids=["torch-graph", "torch"])
def test_mixed_train_eval_modes_are_restored_module_by_module(model, make):
    model.train()
    model.features[0].eval()  # e.g. a frozen stem inside a training model
    make(model).losses(*_batch(9))
    assert model.training and not model.features[0].training
    assert all(m.training for m in model.features[1].modules())


def test_snapshot_mode_copies_weights_in_place(model):
    engine = _engine(model, snapshot=True)
    assert not engine.is_live and engine.model is not model
    x, y = _batch(10, seed=3)
    before = engine.losses(x, y)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.2)
    torch.testing.assert_close(engine.losses(x, y), before)  # a snapshot until refreshed
    engine.refresh(model)
    torch.testing.assert_close(engine.losses(x, y), TorchEngine(model).losses(x, y), atol=1e-5, rtol=1e-5)
    assert engine.captures == 1  # copied into the captured tensors: no re-capture
    with pytest.raises(EngineError, match="model changed"):
        engine.refresh(create_model("small_cnn", width=4))


def test_bad_options_are_engine_errors(model):
    with pytest.raises(EngineError, match="compile must be one of"):
        _engine(model, compile="reduce-overhead")
    with pytest.raises(EngineError, match="precision must be one of"):
        StandInGraphEngine(model, "int8", EngineContext())


# --- GPU ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch-graph's CUDA graphs need a CUDA GPU")
    return torch.device("cuda")


def _cuda_context(device, max_batch=1024, **options):
    x, y = _batch(64, seed=10)
    return EngineContext(device=device, sample_batches=[(x.to(device).contiguous(memory_format=torch.channels_last),
                                                         y.to(device))], max_batch=max_batch, options=options)


def _cuda_model(name, device, seed=0):
    torch.manual_seed(seed)
    return create_model(name).to(device, memory_format=torch.channels_last).train()


def _small_cnn_engine(device, precision, rows, seed):
    """A training-mode small CNN on the GPU, its torch-graph engine (buckets up to 128) and a batch."""
    model = _cuda_model("small_cnn", device)
    engine = create_engine(f"torch-graph-{precision}", model, _cuda_context(device, max_batch=128))
    x, y = _batch(rows, seed=seed)
    return model, engine, x.to(device), y.to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tolerance", [("fp16", 0.02), ("bf16", 0.1), ("fp32", 2e-3)])
def test_gpu_losses_equal_eager_torch_at_every_size(cuda, precision, tolerance):
    model = _cuda_model("resnet18", cuda)
    engine = create_engine(f"torch-graph-{precision}", model, _cuda_context(cuda))
    assert type(engine) is TorchGraphEngine and engine.buckets == BUCKETS and engine.is_live
    eager = TorchEngine(model, precision)
    for n in (1, 100, 128, 300, 1024, 1500):
        x, y = _batch(n, seed=n)
        x, y = x.to(cuda).contiguous(memory_format=torch.channels_last), y.to(cuda)
        got = engine.losses(x, y)
        assert got.shape == (n,) and got.dtype == torch.float32 and got.device.type == "cuda"
        assert (got - eager.losses(x, y)).abs().max().item() < tolerance, n
    contiguous = engine.losses(x.contiguous(), y)  # an NCHW batch is copied into the NHWC buffer
    assert (contiguous - got).abs().max().item() < tolerance
    assert engine.captures == 1 and model.training


@pytest.mark.gpu
def test_gpu_optimizer_step_in_place_is_seen_by_the_next_replay(cuda):
    model, engine, x, y = _small_cnn_engine(cuda, "fp16", 128, seed=4)
    before = engine.losses(x, y).clone()
    addresses = [p.data_ptr() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert addresses == [p.data_ptr() for p in model.parameters()]  # the optimizer updated in place
    after = engine.losses(x, y)
    assert (after - before).abs().max().item() > 0.05  # it moved...
    assert (after - TorchEngine(model, "fp16").losses(x, y)).abs().max().item() < 0.02  # ...to the new weights
    assert engine.captures == 1  # seen through the captured addresses, not by re-capturing


@pytest.mark.gpu
def test_gpu_batchnorm_running_stats_are_seen(cuda):
    model, engine, x, y = _small_cnn_engine(cuda, "fp32", 100, seed=5)
    before = engine.losses(x, y).clone()
    with torch.no_grad():
        for _ in range(5):
            model(x * 3 + 1)  # train mode: the BatchNorm running statistics move (in place)
    after = engine.losses(x, y)
    assert (after - before).abs().max().item() > 1e-2
    assert (after - TorchEngine(model).losses(x, y)).abs().max().item() < 2e-3
    assert engine.captures == 1


@pytest.mark.gpu
def test_gpu_mode_restored_and_reallocation_recaptured(cuda):
    model, engine, x, y = _small_cnn_engine(cuda, "fp16", 64, seed=6)
    engine.losses(x, y)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    engine.losses(x, y)
    assert not any(m.training for m in model.modules())
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    with pytest.warns(UserWarning, match="re-captured"):
        got = engine.losses(x, y)
    assert engine.captures == 2
    assert (got - TorchEngine(model, "fp16").losses(x, y)).abs().max().item() < 0.02
    engine.close()


@pytest.mark.gpu
def test_gpu_compiled_capture_matches_eager(cuda):
    pytest.importorskip("triton")
    model = _cuda_model("small_cnn", cuda)
    engine = create_engine("torch-graph-fp16", model, _cuda_context(cuda, max_batch=64, compile="default",
                                                                     bucket_sizes=[64]))
    x, y = (t.to(cuda) for t in _batch(50, seed=7))
    assert engine.compile_mode == "default" and engine.buckets == (64,)
    assert (engine.losses(x, y) - TorchEngine(model, "fp16").losses(x, y)).abs().max().item() < 0.02
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)  # compiled kernels read parameters as inputs: in-place updates are seen too
    assert (engine.losses(x, y) - TorchEngine(model, "fp16").losses(x, y)).abs().max().item() < 0.02


@pytest.mark.gpu
def test_gpu_refresher_treats_it_as_live(cuda):
    from sb_accel.engines import EngineRefresher, RefreshSchedule

    model = _cuda_model("small_cnn", cuda)
    refresher = EngineRefresher.create("torch-graph-fp16", model, _cuda_context(cuda, max_batch=128),
                                       RefreshSchedule(every_steps=1))
    events = refresher.after_step(model, 1)
    assert [e["event"] for e in events] == ["engine_build"] and events[0]["engine"] == "torch-graph-fp16"
    assert refresher.after_step(model, 2) == [] and refresher.staleness(2) == 0
    refresher.close()
