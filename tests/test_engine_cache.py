"""Engine cache keys: what changes the key and what does not; engines write into the keyed folder."""
import json

import pytest
import torch

from sb_accel.engines import EngineContext, artifact_dir, cache_key, create_engine
from sb_accel.engines.cache import device_name, library_versions
from sb_accel.engines.recipes import DEFAULTS, merge_recipe
from sb_accel.models import create_model

VERSIONS = {"torch": "2.0", "onnx": "1.16"}


def _model(width=2, seed=0):
    torch.manual_seed(seed)
    return create_model("small_cnn", width=width)


def test_key_ignores_weight_values_but_not_shapes():
    key = cache_key(_model(), DEFAULTS, "cpu-x86_64", VERSIONS)
    assert len(key) == 16 and key == cache_key(_model(seed=1), DEFAULTS, "cpu-x86_64", VERSIONS)
    assert key != cache_key(_model(width=4), DEFAULTS, "cpu-x86_64", VERSIONS)
    assert key != cache_key(_model().half(), DEFAULTS, "cpu-x86_64", VERSIONS)  # dtypes count


def test_key_follows_recipe_device_and_versions():
    model = _model()
    key = cache_key(model, DEFAULTS, "cpu-x86_64", VERSIONS)
    assert key != cache_key(model, merge_recipe(DEFAULTS, {"int8": {"calibration_rows": 128}}), "cpu-x86_64",
                            VERSIONS)
    assert key != cache_key(model, DEFAULTS, "NVIDIA H100 80GB HBM3", VERSIONS)
    assert key != cache_key(model, DEFAULTS, "cpu-x86_64", {**VERSIONS, "onnxruntime": "1.30"})


def test_installed_versions_and_device_names():
    versions = library_versions()
    assert versions["torch"] == torch.__version__ and "onnx" in versions
    assert device_name("cpu").startswith("cpu-")


def test_artifact_dir_is_keyed_and_describes_itself(tmp_path):
    model = _model()
    folder = artifact_dir(tmp_path, model, DEFAULTS, "cpu-x86_64")
    assert folder == tmp_path / cache_key(model, DEFAULTS, "cpu-x86_64") and folder.is_dir()
    described = json.loads((folder / "key.json").read_text())
    assert described["device"] == "cpu-x86_64" and described["recipe"] == DEFAULTS
    assert described["architecture"]["class"].endswith("SmallResNet")


@pytest.mark.filterwarnings("ignore:onnxruntime-fp16")
def test_onnxruntime_engine_writes_into_the_keyed_folder(tmp_path):
    model = _model()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    context = EngineContext(sample_batches=[batch], threads=2, cache_dir=str(tmp_path))
    engine = create_engine("onnxruntime-fp16", model, context)
    key = cache_key(model, context.resolved_recipe(), device_name("cpu"))
    assert engine.artifacts == tmp_path / key
    assert sorted(p.name for p in tmp_path.iterdir()) == [key]
    assert sorted(p.name for p in engine.artifacts.iterdir()) == ["key.json", "smallresnet.fp16.onnx",
                                                                  "smallresnet.onnx"]
    context.options["exporter"] = "dynamo"  # an option that shapes the export: another folder
    assert cache_key(model, context.resolved_recipe(), device_name("cpu")) != key
