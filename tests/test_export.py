"""ONNX export of model + per-example loss head: names, stability, validation, dynamic batch."""
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from sb_accel.engines import EngineError, export_loss_model
from sb_accel.engines import export as export_module
from sb_accel.models import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("small_cnn", width=4)  # fresh init: all BatchNorm weights equal (1.0)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g)


def _initializers(result):
    return [init.name for init in result.model.graph.initializer]


def test_initializers_are_exactly_the_state_dict_weights(model, batch, tmp_path):
    result = export_loss_model(model, tmp_path / "m.onnx", batch)
    names = _initializers(result)
    weights = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    # Nothing merged (equal BN weights would be de-duplicated) and nothing folded or renamed.
    assert sorted(names) == sorted(weights)
    ops = {n.op_type for n in result.model.graph.node}
    assert {"BatchNormalization", "LogSoftmax", "GatherElements", "Neg"} <= ops
    assert [i.name for i in result.model.graph.input] == ["images", "labels"]


def test_names_stable_across_exports_with_different_weights(model, batch, tmp_path):
    first = export_loss_model(model, tmp_path / "a.onnx", batch)
    other = create_model("small_cnn", width=4)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))  # BatchNorm weights no longer all equal
    second = export_loss_model(other, tmp_path / "b.onnx", batch)
    assert _initializers(first) == _initializers(second)
    assert [n.op_type for n in first.model.graph.node] == [n.op_type for n in second.model.graph.node]


def test_export_matches_torch_and_batch_is_dynamic(model, batch, tmp_path):
    result = export_loss_model(model, tmp_path / "m.onnx", batch)
    assert result.max_abs_error < 1e-4 and result.seconds > 0
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x, y = batch
    model.eval()
    for n in (1, 37):
        expected = F.cross_entropy(model(x[:n]), y[:n], reduction="none").detach().numpy()
        (got,) = session.run(None, {"images": x[:n].numpy(), "labels": y[:n].numpy()})
        assert got.shape == (n,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_leaves_model_mode_and_writes_atomically(batch, tmp_path):
    model = create_model("small_cnn", width=4).to(memory_format=torch.channels_last).train()
    x, y = batch
    export_loss_model(model, tmp_path / "sub" / "m.onnx", (x.contiguous(memory_format=torch.channels_last), y))
    assert model.training
    assert os.listdir(tmp_path / "sub") == ["m.onnx"]  # no temporary file left behind


def test_value_dependent_graph_is_rejected(model, batch, tmp_path, monkeypatch):
    real = export_module._export_proto
    calls = []

    def drifting(*args, **kwargs):  # the second (perturbed) export loses an initializer
        proto = real(*args, **kwargs)
        calls.append(proto)
        if len(calls) == 2:
            proto.graph.initializer.pop()
        return proto

    monkeypatch.setattr(export_module, "_export_proto", drifting)
    with pytest.raises(EngineError, match="changes with the weight values"):
        export_loss_model(model, tmp_path / "m.onnx", batch)


def test_disagreement_and_bad_exporter_raise(model, batch, tmp_path):
    with pytest.raises(EngineError, match="unknown ONNX exporter"):
        export_loss_model(model, tmp_path / "m.onnx", batch, exporter="torchscript")
    with pytest.raises(EngineError, match="disagrees with PyTorch"):
        export_loss_model(model, tmp_path / "m.onnx", batch, tolerance=-1.0)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_names(model, batch, tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    legacy = export_loss_model(model, tmp_path / "a.onnx", batch)
    dynamo = export_loss_model(model, tmp_path / "b.onnx", batch, exporter="dynamo")
    assert sorted(_initializers(legacy)) == sorted(_initializers(dynamo))
    assert dynamo.max_abs_error < 1e-4
