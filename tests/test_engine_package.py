"""The engines package: lazy public names, a one-way registry, backends loaded on demand."""
import subprocess
import sys

import pytest
import torch.nn as nn

import sb_accel.engines as engines
from sb_accel.engines import EngineError, create_engine, list_engines, parse_engine_spec, register_engine
from sb_accel.engines.registry import BUILTIN_BACKENDS, engine_class
from sb_accel.models import create_model

PUBLIC = ["EngineContext", "EngineError", "EngineSpecError", "SelectionEngine", "create_engine", "list_engines",
          "parse_engine_spec", "register_engine", "TorchEngine", "per_example_loss", "TorchGraphEngine",
          "OnnxRuntimeEngine", "TensorRTEngine",
          "export_loss_model", "ExportResult", "quantize_int8", "QuantizedModel", "QUANT_FORMATS", "convert_to_fp16",
          "EngineRefresher", "RefreshSchedule", "default_schedule", "CADENCES", "RefreshError", "Validation", "check_engine", "rank_correlation",
          "DEFAULT_TOLERANCES", "Tolerance", "load_recipe", "cache_key", "artifact_dir"]


def _loaded_after(code: str) -> set:
    """Heavy modules present in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport sys\n"
             "print(' '.join(m for m in ('onnx', 'onnxruntime', 'tensorrt', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_import_loads_no_onnx():
    assert not _loaded_after("import sb_accel.engines") & {"onnx", "onnxruntime", "tensorrt"}
    assert not _loaded_after("from sb_accel.engines import EngineRefresher, create_engine, TorchEngine") & {
        "onnx", "onnxruntime", "tensorrt"}


def test_specs_and_torch_engines_load_no_onnx():
    code = ("import torch.nn as nn\n"
            "from sb_accel.engines import create_engine, list_engines, parse_engine_spec\n"
            "assert 'onnxruntime-int8' in list_engines() and parse_engine_spec('tensorrt-fp8')\n"
            "create_engine('torch-bf16', nn.Linear(2, 2))")
    assert not _loaded_after(code) & {"onnx", "onnxruntime", "tensorrt"}
    assert "onnx" in _loaded_after("from sb_accel.engines import OnnxRuntimeEngine")  # a name loads its module


def test_every_public_name_resolves_and_all_is_complete():
    assert sorted(engines.__all__) == sorted(PUBLIC) == sorted(engines._EXPORTS)
    for name in PUBLIC:
        assert getattr(engines, name) is not None
    assert set(PUBLIC) <= set(dir(engines))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engines.Nope  # noqa: B018


def test_builtin_table_agrees_with_the_backend_classes():
    for backend, (_, _, precisions) in BUILTIN_BACKENDS.items():
        cls = engine_class(backend)
        assert cls.backend == backend and tuple(cls.precisions) == precisions, backend


def test_parse_and_list():
    assert parse_engine_spec("onnxruntime-int8") == ("onnxruntime", "int8")
    assert parse_engine_spec("tensorrt") == ("tensorrt", "fp16")  # the first precision is the default
    assert parse_engine_spec("torch", "bf16") == ("torch", "bf16")
    assert parse_engine_spec("torch-graph-bf16") == ("torch-graph", "bf16")  # a backend name with a '-'
    assert parse_engine_spec("torch-graph") == ("torch-graph", "fp16")
    assert parse_engine_spec("torch-graph", "fp32") == ("torch-graph", "fp32")
    assert {"torch-graph-fp16", "torch-graph-bf16", "torch-graph-fp32"} <= set(list_engines())
    assert "torch-fp32" in list_engines() and "tensorrt-fp8" in list_engines()
    with pytest.raises(EngineError, match="unknown engine backend 'tvm'"):
        parse_engine_spec("tvm-int8")
    with pytest.raises(EngineError, match="no precision 'int4'"):
        parse_engine_spec("onnxruntime-int4")


def test_registered_backend_is_built(monkeypatch):
    monkeypatch.setattr("sb_accel.engines.registry._REGISTERED", {})  # other tests list every engine

    @register_engine("fakebackend", precisions=("x8",))
    class Fake(engines.SelectionEngine):
        backend = "fakebackend"

        def __init__(self, model, precision, context):
            self.precision, self.model = precision, model

        def losses(self, x, y):
            raise NotImplementedError

        def refresh(self, model, rebuild=False):
            pass

    model = create_model("small_cnn", width=2)
    engine = create_engine("fakebackend", model)
    assert type(engine) is Fake and engine.name == "fakebackend-x8" and engine.model is model
    assert "fakebackend-x8" in list_engines()


def test_torch_engine_from_the_registry():
    engine = create_engine("torch-fp16", nn.Linear(2, 2))
    assert type(engine).__name__ == "TorchEngine" and engine.precision == "fp16" and engine.is_live
