"""ONNX Runtime engine on a small CNN partly trained on real CIFAR-10: FP32 equivalence, INT8 rank
agreement, cheap INT8 refresh == full re-quantization, refresh semantics, clear errors."""
import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from sb_accel.data import load_dataset
from sb_accel.engines import (EngineContext, EngineError, OnnxRuntimeEngine, TorchEngine, create_engine,
                              export_loss_model, quantize_int8, rank_correlation)
from sb_accel.engines.graph import assign_initializers, state_dict_arrays
from sb_accel.engines.quantize import numpy_batches
from sb_accel.models import create_model

pytestmark = pytest.mark.needs_dataset("cifar10")  # every test here runs on the `cifar` fixture


def _train(model, x, y, steps, seed=0):
    """Plain SGD on random minibatches: a few hundred steps spread the losses out."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def cifar():
    data = load_dataset("cifar10").subset(train=4096, test=512, seed=0)
    return data.normalize(data.x_train), data.y_train, data.normalize(data.x_test), data.y_test


@pytest.fixture(scope="module")
def trained(cifar):
    torch.manual_seed(0)
    x, y, _, _ = cifar
    return _train(create_model("small_cnn", width=4), x, y, steps=300)


def _context(cifar, tmp_path, **options):
    x, y, _, _ = cifar
    return EngineContext(sample_batches=[(x[:128], y[:128]), (x[128:256], y[128:256])], threads=2,
                         cache_dir=str(tmp_path), max_batch=256, options=options)


def test_fp32_matches_torch(trained, cifar, tmp_path):
    engine = create_engine("onnxruntime-fp32", trained, _context(cifar, tmp_path))
    _, _, xt, yt = cifar
    expected = TorchEngine(trained).losses(xt, yt)
    got = engine.losses(xt, yt)
    assert got.dtype == torch.float32 and got.shape == yt.shape and got.device == xt.device
    assert (got - expected).abs().max() < 1e-4
    channels_last = engine.losses(xt.contiguous(memory_format=torch.channels_last), yt)
    assert torch.equal(channels_last, got)
    assert engine.name == "onnxruntime-fp32" and trained.training  # the live model is left as it was


@pytest.mark.parametrize("fmt", ["u8s8", "s8s8-symmetric"])
def test_int8_ranks_like_fp32(trained, cifar, tmp_path, fmt):
    engine = create_engine("onnxruntime-int8", trained, _context(cifar, tmp_path, quant_format=fmt))
    _, _, xt, yt = cifar
    expected = TorchEngine(trained).losses(xt, yt)
    got = engine.losses(xt, yt)
    assert rank_correlation(got, expected) >= 0.95
    assert (got - expected).abs().max() < 0.5
    ops = {n.op_type for n in engine.onnx_model.graph.node}
    assert "QuantizeLinear" in ops and "LogSoftmax" in ops
    if fmt == "s8s8-symmetric":  # TensorRT's form: int8 zero points, FP32 biases
        zero_points = [i for i in engine.onnx_model.graph.initializer if i.name.endswith("_zero_point")]
        assert all(i.data_type == onnx.TensorProto.INT8 for i in zero_points)
        assert not any(i.data_type == onnx.TensorProto.INT32 for i in engine.onnx_model.graph.initializer)


def test_fp16_keeps_loss_head_fp32(trained, cifar, tmp_path):
    with pytest.warns(UserWarning, match="no faster than FP32"):
        engine = create_engine("onnxruntime-fp16", trained, _context(cifar, tmp_path))
    _, _, xt, yt = cifar
    got = engine.losses(xt[:128], yt[:128])
    assert (got - TorchEngine(trained).losses(xt[:128], yt[:128])).abs().max() < 0.05
    types = {i.name: i.data_type for i in engine.onnx_model.graph.initializer}
    assert types["features.0.0.weight"] == onnx.TensorProto.FLOAT16
    assert types["fc.weight"] == onnx.TensorProto.FLOAT  # the classifier stays FP32


@pytest.mark.parametrize("fmt", ["u8s8", "s8s8-symmetric"])
def test_cheap_requantization_equals_full_quantization(trained, cifar, tmp_path, fmt):
    """Numpy re-quantization of new weights == quantize_static of the new model with the same
    activation ranges (read from ORT's calibration cache)."""
    x, y, _, _ = cifar
    sample = (x[:64], y[:64])
    calibration = numpy_batches([(x[:128], y[:128])], 128)
    cache = tmp_path / "ranges.json"
    old = export_loss_model(trained, tmp_path / "old.onnx", sample)
    cheap = quantize_int8(old.model, calibration, fmt, calibration_cache=cache)
    before = {i.name: numpy_helper.to_array(i).copy() for i in cheap.model.graph.initializer}

    updated = _train(copy.deepcopy(trained), x, y, steps=20, seed=1)
    arrays = state_dict_arrays(updated)
    cheap.requantize_weights(arrays)
    new_float = onnx.ModelProto()
    new_float.CopyFrom(old.model)
    assign_initializers(new_float, arrays)
    full = quantize_int8(new_float, calibration, fmt, calibration_cache=cache)

    got = {i.name: numpy_helper.to_array(i) for i in cheap.model.graph.initializer}
    want = {i.name: numpy_helper.to_array(i) for i in full.model.graph.initializer}
    assert got.keys() == want.keys()
    derived = ([w.quantized for w in cheap.weights] + [w.scale for w in cheap.weights]
               + [b.quantized for b in cheap.biases] + [b.scale for b in cheap.biases] + cheap.floats)
    assert len(cheap.weights) == 8 and cheap.unmapped == []
    for name in derived:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert any(not np.array_equal(got[w.quantized], before[w.quantized]) for w in cheap.weights)
    for name in set(got) - set(derived):  # activation scales and zero points: kept as calibrated
        np.testing.assert_array_equal(got[name], before[name], err_msg=name)


@pytest.mark.filterwarnings("ignore:onnxruntime-fp16")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_refresh_takes_new_weights(trained, cifar, tmp_path, precision):
    model = copy.deepcopy(trained)
    engine = create_engine(f"onnxruntime-{precision}", model, _context(cifar, tmp_path))
    x, y, xt, yt = cifar
    before = engine.losses(xt, yt)
    _train(model, x, y, steps=30, seed=2)
    assert torch.equal(engine.losses(xt, yt), before)  # a snapshot: training alone changes nothing
    engine.refresh(model)
    after = engine.losses(xt, yt)
    expected = TorchEngine(model).losses(xt, yt)
    assert (after - before).abs().max() > 1e-2 and engine.refresh_kind == "cheap"
    if precision != "int8":
        tolerance = 1e-4 if precision == "fp32" else 0.05
        assert (after - expected).abs().max() < tolerance
    else:
        assert rank_correlation(after, expected) >= 0.95
    engine.refresh(model, rebuild=True)  # from scratch: the same weights, the same losses
    assert engine.refresh_kind == "rebuild"
    if precision != "int8":  # (INT8 recalibrates: other activation scales)
        torch.testing.assert_close(engine.losses(xt, yt), after)


@pytest.mark.filterwarnings("ignore:onnxruntime-fp16")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_refresh_modes_give_the_losses_of_a_graph_holding_the_new_weights(trained, cifar, tmp_path, precision):
    """"session": a new session per refresh (INT8 over ORT's optimized graph); "inplace": one session
    whose weight buffers are overwritten. Both must equal a session over a graph that holds the new
    weights, and the in-place one must keep its session object."""
    model = copy.deepcopy(trained)
    x, y, xt, yt = cifar
    engines = {mode: create_engine(f"onnxruntime-{precision}", model, _context(cifar, tmp_path, refresh_mode=mode))
               for mode in ("session", "inplace")}
    assert engines["session"].preoptimized == (precision == "int8") and not engines["inplace"].preoptimized
    if precision == "int8":  # served in ORT's own format: the exact comparison below covers that path
        assert engines["session"]._data[4:8] == b"ORTM"
    sessions = {mode: e.session for mode, e in engines.items()}
    _train(model, x, y, steps=30, seed=3)
    for engine in engines.values():
        engine.refresh(model)
        assert engine.refresh_kind == "cheap"
    assert engines["inplace"].session is sessions["inplace"]  # the same session object: no new session
    assert engines["session"].session is not sessions["session"]
    # the reference: the graph with the refreshed weights written in, opened by a fresh session with
    # the engine's optimization level (in place, FP32/FP16 run unoptimized: other kernels, other rounding)
    import onnxruntime as ort

    from sb_accel.engines.ort_session import run_onnx, session_options

    graph = engines["session"].onnx_model.SerializeToString()
    for mode, engine in engines.items():
        options = session_options(2)
        if mode == "inplace" and precision != "int8":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        fresh = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        expected = torch.from_numpy(run_onnx(fresh, xt, yt))
        got = engine.losses(xt, yt)
        if precision == "fp16":
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=mode)
        else:  # FP32 to 1e-5; INT8 (integer kernels) exactly, whether prepacked or not
            assert (got - expected).abs().max() <= (1e-5 if precision == "fp32" else 0.0), mode
        if precision == "fp32":
            torch.testing.assert_close(got, TorchEngine(model).losses(xt, yt), atol=1e-4, rtol=0)
    if precision == "int8":  # both modes re-quantized the same way
        inits = [{i.name: onnx.numpy_helper.to_array(i) for i in e.onnx_model.graph.initializer} for e in engines.values()]
        assert inits[0].keys() == inits[1].keys()
        assert all(np.array_equal(inits[0][k], inits[1][k]) for k in inits[0])
    # and against an engine built from scratch on the new weights (INT8: recalibrated, so within tolerance)
    rebuilt = create_engine(f"onnxruntime-{precision}", model, _context(cifar, tmp_path)).losses(xt, yt)
    for mode, engine in engines.items():
        difference = (engine.losses(xt, yt) - rebuilt).abs().max()
        assert difference <= {"fp32": 1e-5, "fp16": 0.05, "int8": 0.5}[precision], (mode, difference)
        if precision == "int8":
            assert rank_correlation(engine.losses(xt, yt), rebuilt) >= 0.95


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_inplace_session_reads_the_written_buffers_so_a_broken_write_fails_validation(trained, cifar, tmp_path,
                                                                                      precision):
    """The one in-place session must compute from the buffers a refresh writes, not from a copy made
    when it opened (pre-packing, constant folding): weights written with their output channels
    rolled must change the losses and fail the refresher's check, and writing the right ones back
    must pass it again."""
    from sb_accel.engines import Validation, check_engine

    model = copy.deepcopy(trained)
    engine = create_engine(f"onnxruntime-{precision}", model, _context(cifar, tmp_path, refresh_mode="inplace"))
    validation = Validation.from_context(_context(cifar, tmp_path), rows=64)
    _train(model, *cifar[:2], steps=10, seed=4)
    engine.refresh(model)
    assert check_engine(engine, model, validation)["ok"]
    weights = engine._served[1]
    good = {name: a.copy() for name, a in weights.arrays.items()}
    weights.write({name: np.roll(a, 1, axis=0) if a.ndim > 1 else a for name, a in good.items()})
    broken = check_engine(engine, model, validation)
    assert not broken["ok"] and broken["rank_agreement"] < 0.5, broken
    weights.write(good)
    assert check_engine(engine, model, validation)["ok"]


def test_inplace_refresh_is_refused_where_it_cannot_work(trained, cifar, tmp_path):
    with pytest.raises(EngineError, match="refresh_mode must be one of"):
        create_engine("onnxruntime-fp32", trained, _context(cifar, tmp_path, refresh_mode="lazy"))


def test_int8_recalibrates_on_schedule(trained, cifar, tmp_path):
    model = copy.deepcopy(trained)
    engine = create_engine("onnxruntime-int8", model, _context(cifar, tmp_path, recalibrate_every=2))
    kinds = []
    for _ in range(4):
        engine.refresh(model)
        kinds.append(engine.refresh_kind)
    assert kinds == ["cheap", "rebuild", "cheap", "rebuild"]


def test_clear_errors(trained, cifar, tmp_path):
    with pytest.raises(EngineError, match="no precision 'int4'"):
        create_engine("onnxruntime-int4", trained, _context(cifar, tmp_path))
    with pytest.raises(EngineError, match="precision must be one of"):
        OnnxRuntimeEngine(trained, "bf16", _context(cifar, tmp_path))
    with pytest.raises(EngineError, match="unknown INT8 format"):
        create_engine("onnxruntime-int8", trained, _context(cifar, tmp_path, quant_format="u8u8"))
    with pytest.raises(EngineError, match="sample_batches"):
        create_engine("onnxruntime-fp32", trained, EngineContext(cache_dir=str(tmp_path)))
    with pytest.raises(EngineError, match="provider"):
        create_engine("onnxruntime-fp32", trained, _context(cifar, tmp_path, provider="tpu"))
    with pytest.raises(EngineError, match="recalibrate_every"):
        create_engine("onnxruntime-int8", trained, _context(cifar, tmp_path, recalibrate_every=-1))
    engine = create_engine("onnxruntime-fp32", trained, _context(cifar, tmp_path))
    with pytest.raises(EngineError, match="the engine was built"):
        engine.refresh(create_model("small_cnn", width=8))
