"""TensorRT engine: clear error without TensorRT/CUDA; on a GPU, accuracy and refit (skipped elsewhere)."""
import copy

import pytest
import torch

from sb_accel.engines import EngineContext, EngineError, TorchEngine, create_engine, rank_correlation
from sb_accel.models import create_model


def _tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


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
    got = engine.losses(x, y)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert (got - expected).abs().max() < max_error
    assert rank_correlation(got, expected) > 0.9
    assert engine.timing_cache_path.is_file() and engine.timing_cache_path.parent.parent == tmp_path


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_refit_takes_new_weights(gpu, tmp_path, precision):
    torch.manual_seed(0)
    model = create_model("small_cnn").to(gpu)
    context = _context(tmp_path, "cuda", rebuild_every=0)
    engine = create_engine(f"tensorrt-{precision}", model, context)
    x, y = context.sample_batches[1]
    before = engine.losses(x, y)
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    tolerance = 0.05 if precision == "fp16" else 0.5
    engine.refresh(updated)
    after = engine.losses(x, y)
    expected = TorchEngine(updated).losses(x, y)
    assert not torch.equal(after, before)
    assert (after - expected).abs().max() < tolerance
    if precision == "fp16":  # FP16 weights are refittable: no rebuild with rebuild_every=0
        assert engine.refresh_kind == "cheap"
    engine.refresh(model, full=True)  # back to the old weights through a rebuild
    assert engine.refresh_kind == "full"
    assert (engine.losses(x, y) - TorchEngine(model).losses(x, y)).abs().max() < tolerance
