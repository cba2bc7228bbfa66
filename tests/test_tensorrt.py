"""TensorRT engine: clear error without TensorRT/CUDA, the input preparation, the refit's accept/refuse
decision against a stand-in TensorRT (CPU); on a GPU, accuracy on channels_last batches and refit, in
place or rebuilt as the engine reports (skipped elsewhere; never executed yet: no TensorRT on the lent GPUs)."""
import copy
import importlib.util
from types import SimpleNamespace

import onnx
import pytest
import torch

from sb_accel.engines import EngineContext, EngineError, TorchEngine, create_engine, rank_correlation
from sb_accel.engines.recipes import DEFAULTS
from sb_accel.engines.tensorrt_backend import TensorRTEngine, prepare_inputs
from sb_accel.models import create_model


def _tensorrt_usable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _context(tmp_path, device="cpu", **options):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)
    return EngineContext(device=torch.device(device), sample_batches=[(x[:64].to(device), y[:64].to(device)),
                                                                     (x[64:].to(device), y[64:].to(device))],
                         cache_dir=str(tmp_path), max_batch=128, options=options)


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT and CUDA are available")
def test_unavailable_tensorrt_names_the_extra_and_alternatives(tmp_path):
    with pytest.raises(EngineError) as info:
        create_engine("tensorrt-int8", create_model("small_cnn", width=2), _context(tmp_path))
    message = str(info.value)
    assert "sb-accel[tensorrt]" in message
    assert "onnxruntime" in message and "bf16" in message


def test_inputs_are_made_contiguous_nchw_in_the_engine_dtypes():
    """set_tensor_address hands TensorRT a bare pointer: a channels_last batch must be copied to NCHW."""
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([1, 0, 3, 2], dtype=torch.int32)
    assert not x.is_contiguous()
    tensors = prepare_inputs(x, y, torch.device("cpu"), {"images": torch.float16, "labels": torch.int64})
    images, labels = tensors["images"], tensors["labels"]
    assert list(tensors) == ["images", "labels"]
    assert images.is_contiguous() and images.stride() == (192, 64, 8, 1) and images.dtype == torch.float16
    assert torch.equal(images.float(), x.half().float()) and labels.dtype == torch.int64 and torch.equal(labels, y.long())


class _StandInTensorRT:
    """The parts of TensorRT's refit API that ``TensorRTEngine._reload`` calls, recording the calls."""

    def __init__(self, parsed=True, missing=(), errors=(), refits=True):
        self.calls = []
        self.parsed, self.missing, self.errors, self.refits = parsed, list(missing), list(errors), refits

    def Refitter(self, engine, logger):  # noqa: N802 (TensorRT's names)
        return SimpleNamespace(get_missing_weights=lambda: self.missing, refit_cuda_engine=self._refit)

    def OnnxParserRefitter(self, refitter, logger):  # noqa: N802
        return SimpleNamespace(refit_from_bytes=self._parse, num_errors=len(self.errors),
                               get_error=lambda i: self.errors[i])

    def _parse(self, data):
        self.calls.append("parse")
        return self.parsed

    def _refit(self):
        self.calls.append("refit")
        return self.refits


def _reload_with(trt):
    """``TensorRTEngine._reload`` run against ``trt``: (its answer, refresh_detail, the calls made)."""
    engine = TensorRTEngine.__new__(TensorRTEngine)  # no build: only the refit decision is under test
    engine._trt, engine._engine, engine._logger, engine.refresh_detail = trt, object(), None, ""
    engine._stream = SimpleNamespace(synchronize=lambda: trt.calls.append("synchronize"))
    return engine._reload(onnx.ModelProto()), engine.refresh_detail, trt.calls


def test_refit_is_accepted_only_when_every_weight_is_given_and_waits_for_queued_work():
    assert _reload_with(_StandInTensorRT()) == (True, "", ["parse", "synchronize", "refit"])
    ok, detail, calls = _reload_with(_StandInTensorRT(missing=["conv1.weight_quantized"]))
    assert not ok and calls == ["parse"]  # refused before touching the engine
    assert detail.startswith("TensorRT refused the refit") and "conv1.weight_quantized" in detail
    ok, detail, calls = _reload_with(_StandInTensorRT(parsed=False, errors=["Q/DQ weights are not refittable"]))
    assert not ok and calls == ["parse"] and "Q/DQ weights are not refittable" in detail
    ok, detail, calls = _reload_with(_StandInTensorRT(refits=False))
    assert not ok and calls == ["parse", "synchronize", "refit"] and "refit_cuda_engine() failed" in detail


def test_no_periodic_rebuild_by_default():
    assert DEFAULTS["tensorrt"]["rebuild_every"] == 0  # refits only; a rebuild when a refit is refused


# --- GPU ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT tests need a CUDA GPU")
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,max_error", [("fp16", 0.05), ("int8", 0.5)])
def test_tensorrt_losses_match_torch(gpu, tmp_path, precision, max_error):
    torch.manual_seed(0)
    model = create_model("resnet18").to(gpu).eval()
    context = _context(tmp_path, "cuda")
    engine = create_engine(f"tensorrt-{precision}", model, context)
    x, y = context.sample_batches[1]
    expected = TorchEngine(model).losses(x, y)
    got = engine.losses(x.contiguous(memory_format=torch.channels_last), y)  # the Trainer's layout
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert torch.equal(engine.losses(x.contiguous(), y), got)
    assert (got - expected).abs().max() < max_error
    assert rank_correlation(got, expected) > 0.9
    assert engine.timing_cache_path.is_file() and engine.timing_cache_path.parent.parent == tmp_path


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_refit_takes_new_weights(gpu, tmp_path, precision):
    torch.manual_seed(0)
    model = create_model("small_cnn").to(gpu)
    context = _context(tmp_path, "cuda")
    engine = create_engine(f"tensorrt-{precision}", model, context)
    x, y = context.sample_batches[1]
    before = engine.losses(x, y)
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    tolerance = 0.05 if precision == "fp16" else 0.5
    built = engine._engine
    engine.refresh(updated)
    after = engine.losses(x, y)
    expected = TorchEngine(updated).losses(x, y)
    assert not torch.equal(after, before)
    assert (after - expected).abs().max() < tolerance
    refitted = engine.refresh_kind == "cheap"
    print(f"tensorrt-{precision} refresh: {engine.refresh_kind} {engine.refresh_detail}")  # what the GPU answered
    if precision == "fp16":  # FP16 weights are refittable: no rebuild (rebuild_every defaults to 0)
        assert refitted
    # Whether Q/DQ (INT8) weights refit is what this test finds out; either answer must be what
    # happened: a refit keeps the built engine and says nothing, a refused one rebuilt it and says why.
    if refitted:
        assert engine.refresh_detail == "" and engine._engine is built
    else:
        assert engine.refresh_detail.startswith("TensorRT refused the refit") and engine._engine is not built
    engine.refresh(model, full=True)  # back to the old weights through a rebuild
    assert engine.refresh_kind == "full"
    assert (engine.losses(x, y) - TorchEngine(model).losses(x, y)).abs().max() < tolerance
