"""ARCHITECTURE.md's "How to add an engine / a model", followed step by step with toy ones, then run
through the Trainer (the strategy how-to is exercised by tests/test_policies.py and test_api.py)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_accel.data import synthetic_dataset
from sb_accel.engines import EngineContext, SelectionEngine, create_engine, list_engines, load_recipe, register_engine
from sb_accel.engines import registry as engine_registry
from sb_accel.models import create_model, list_models, register_model
from sb_accel.models import registry as model_registry
from sb_accel.reporting import load_run
from sb_accel.train import Trainer
from test_trainer import config


@pytest.fixture()
def registries(monkeypatch):
    """What this test registers is gone afterwards (other tests list every registered engine and model)."""
    monkeypatch.setattr(engine_registry, "_REGISTERED", dict(engine_registry._REGISTERED))
    monkeypatch.setattr(model_registry, "_REGISTRY", dict(model_registry._REGISTRY))


class ToyEngine(SelectionEngine):
    """A snapshot engine: a private copy of the model, refreshed by copying the weights as they are."""

    backend = "toy"
    precisions = ("fp32",)
    refresh_kind = "exact"
    built: list = []

    def __init__(self, model: nn.Module, precision: str = "fp32", context=None) -> None:
        self.precision = precision
        self.model = copy.deepcopy(model).eval()
        self.rows = 0
        ToyEngine.built.append(self)

    @torch.no_grad()
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.rows += len(y)
        return F.cross_entropy(self.model(x), y, reduction="none").float()

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:  # exact: nothing to rebuild
        self.model.load_state_dict(model.state_dict())


@pytest.fixture(scope="module")
def small():
    return synthetic_dataset(train=256, test=64)


def test_an_engine_added_as_documented_selects_in_the_trainer(registries, tmp_path, small):
    register_engine("toy", precisions=ToyEngine.precisions)(ToyEngine)
    assert "toy-fp32" in list_engines()
    ToyEngine.built.clear()
    summary = Trainer(config(tmp_path, strategy="sb", engine="toy-fp32", epochs=2, refresh_every_steps=4),
                      data=small).fit()
    assert summary["engine"] == "toy-fp32" and summary["forwards"] > 0
    (engine,) = ToyEngine.built
    assert engine.rows >= summary["forwards"]  # every selection forward (and the build's check) ran here
    refreshes = load_run(tmp_path / "run").of("refresh")
    assert refreshes and all(e["engine"] == "toy-fp32" and e["kind"] == "exact" for e in refreshes)
    assert not engine.model.training


def _toy_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def test_a_model_added_as_documented_trains_and_has_its_recipe(registries, tmp_path, small, monkeypatch):
    register_model("toy_net")(_toy_net)
    assert "toy_net" in list_models()
    model = create_model("toy_net", num_classes=3, in_channels=1)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    summary = Trainer(config(tmp_path, model="toy_net", width=0, strategy="sb", epochs=2), data=small).fit()
    assert summary["epochs"] == 2 and 0.0 <= summary["test_acc"] <= 1.0

    # Its own engine settings: engines/recipes/toy_net.toml (here in $SB_ACCEL_ENGINES/recipes),
    # read by load_recipe: an INT8 recalibration at every refresh instead of the default cheap one.
    recipes = tmp_path / "engines" / "recipes"
    recipes.mkdir(parents=True)
    (recipes / "toy_net.toml").write_text("[int8]\nrecalibrate_every = 1\n")
    monkeypatch.setenv("SB_ACCEL_ENGINES", str(tmp_path / "engines"))
    assert load_recipe("toy_net")["int8"]["recalibrate_every"] == 1
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g))
    kinds = {}
    for recipe in ("toy_net", "default"):
        context = EngineContext(sample_batches=[batch], max_batch=32, cache_dir=str(tmp_path / recipe),
                                recipe=load_recipe(recipe))
        engine = create_engine("onnxruntime-int8", _toy_net(), context)
        engine.refresh(_toy_net())
        kinds[recipe] = engine.refresh_kind
    assert kinds["default"] == "cheap" and kinds["toy_net"] != "cheap"  # recalibrated, as its recipe says
    # ... and the Trainer builds its engine by that recipe: every refresh after priming a rebuild.
    run = Trainer(config(tmp_path / "int8", model="toy_net", width=0, strategy="sb", epochs=2,
                         engine="onnxruntime-int8"), data=small)
    run.fit()
    kinds = [e["kind"] for e in load_run(tmp_path / "int8" / "run").of("refresh")]
    assert kinds and set(kinds) == {"rebuild"}, kinds
