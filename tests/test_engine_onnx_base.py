"""OnnxEngine's refresh schedule and graphs, through a stand-in runtime (ONNX Runtime sessions
with a refit that can be refused): the logic TensorRT relies on, checked without a GPU."""
import copy

import onnx
import pytest
import torch

from sb_accel.engines import EngineContext, EngineError, TorchEngine
from sb_accel.engines.onnx_engine import OnnxEngine
from sb_accel.engines.ort_session import run_onnx
from sb_accel.models import create_model


class _RefitRuntime(OnnxEngine):
    """Serves with ONNX Runtime; ``_reload`` is a refit that succeeds unless ``refuse`` is set."""

    backend = "refit"
    precisions = ("fp16", "int8")
    rebuild_every_key = "rebuild_every"
    int8_format = "s8s8-symmetric"

    def _start_runtime(self, context):
        self.loads = self.reloads = 0
        self.refuse = False

    def _load(self, graph):
        import onnxruntime as ort

        self.loads += 1
        self._session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    def _reload(self, graph):
        if self.refuse:
            return False
        self.reloads += 1
        self._load(graph)
        self.loads -= 1
        return True

    def losses(self, x, y):
        return torch.from_numpy(run_onnx(self._session, x, y))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)


def _model():
    torch.manual_seed(0)
    return create_model("small_cnn", width=2)


def _nudged(model):
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))
        updated.fc.weight.mul_(50)  # spread the losses of a fresh model, so old weights are told apart
    return updated


def _engine(batch, tmp_path, precision, **options):
    context = EngineContext(sample_batches=[batch], cache_dir=str(tmp_path), options=options)
    return _RefitRuntime(_model(), precision, context)


def test_rebuild_every_n_refits_in_between(batch, tmp_path):
    engine = _engine(batch, tmp_path, "fp16", rebuild_every=3)
    kinds = []
    for _ in range(6):
        engine.refresh(_model())
        kinds.append(engine.refresh_kind)
    assert kinds == ["cheap", "cheap", "rebuild"] * 2
    assert (engine.loads, engine.reloads) == (1 + 2, 4)  # the build plus two rebuilds; four refits


def test_refused_refit_rebuilds_and_rebuild_forces_it(batch, tmp_path):
    engine = _engine(batch, tmp_path, "fp16", rebuild_every=0)
    engine.refuse = True
    engine.refresh(_model())
    assert engine.refresh_kind == "rebuild" and engine.loads == 2
    engine.refuse = False
    engine.refresh(_model(), rebuild=True)
    assert engine.refresh_kind == "rebuild" and (engine.loads, engine.reloads) == (3, 0)


@pytest.mark.parametrize("precision,tolerance", [("fp16", 0.01), ("int8", 0.2)])
@pytest.mark.parametrize("path", ["cheap", "rebuild"])
def test_both_paths_serve_the_new_weights(batch, tmp_path, precision, tolerance, path):
    engine = _engine(batch, tmp_path, precision, rebuild_every=0)
    x, y = batch
    updated = _nudged(_model())
    before = engine.losses(x, y)
    engine.refresh(updated, rebuild=path == "rebuild")
    assert engine.refresh_kind == path
    after, expected = engine.losses(x, y), TorchEngine(updated).losses(x, y)
    assert (after - expected).abs().max() < tolerance < (before - expected).abs().max()


def test_fixed_int8_format_wins_over_the_recipe(batch, tmp_path):
    engine = _engine(batch, tmp_path, "int8", quant_format="u8s8")  # the runtime takes only symmetric int8
    zero_points = [i for i in engine.onnx_model.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(i.data_type == onnx.TensorProto.INT8 for i in zero_points)
    assert engine.graph_path.is_file() and engine.graph_path.parent == engine.artifacts


def test_negative_interval_is_refused(batch, tmp_path):
    with pytest.raises(EngineError, match="rebuild_every must be >= 0"):
        _engine(batch, tmp_path, "fp16", rebuild_every=-1)
    with pytest.raises(EngineError, match="refit engine precision must be one of"):
        _RefitRuntime(_model(), "fp32", EngineContext(sample_batches=[batch], cache_dir=str(tmp_path)))
