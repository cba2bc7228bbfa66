"""TrainConfig: every key type-checked against its field, unknown keys named with the closest one."""
import json
from typing import Optional

import pytest

from sb_accel.config import ConfigError, TrainConfig, check_value, load_values


@pytest.mark.parametrize("values, message", [
    ({"epochs": 1.7}, r"epochs: must be an integer, got 1.7 \(a float\); use a whole number, e.g. epochs = 2"),
    ({"epochs": "ten"}, r"epochs: must be an integer, got 'ten' \(a string\)"),
    ({"epochs": "10"}, r"write epochs = 10 \(no quotes\)"),
    ({"epochs": True}, r"epochs: must be an integer, got True \(a boolean\)"),   # bool is not an int
    ({"checkpoint": "no"}, r"checkpoint: must be true or false, got 'no' .*write checkpoint = false"),
    ({"checkpoint": 1}, r"checkpoint: must be true or false, got 1"),
    ({"lr": "0.1"}, r"lr: must be a number.*write lr = 0.1"),
    ({"dataset": None}, r"dataset: must be a string, got None"),
    ({"milestones": 0.5}, r"milestones: must be a list"),
    ({"milestones": [0.3, "x"]}, r"milestones\[1\]: must be a number, got 'x'"),
    ({"milestones": [0.3, True]}, r"milestones\[1\]: must be a number, got True"),
    ({"prime_epochs": 0.5}, r"prime_epochs: must be an integer"),
])
def test_every_key_is_type_checked_and_named(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_floats_take_integers_and_optionals_take_none():
    cfg = TrainConfig.from_dict({"lr": 1, "milestones": [60, 120], "beta": None, "prime_epochs": None,
                                 "data_dir": None, "warmup_epochs": 0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.milestones == [60.0, 120.0] and all(isinstance(m, float) for m in cfg.milestones)
    assert cfg.beta is None and cfg.prime_epochs is None and cfg.data_dir is None
    assert TrainConfig.from_dict({"milestones": (0.5,)}).milestones == [0.5]
    assert check_value("x", 2, Optional[float]) == 2.0 and check_value("x", None, Optional[int]) is None
    with pytest.raises(ConfigError, match="x: must be a number, got None"):
        check_value("x", None, float)


def test_a_saved_config_round_trips():
    cfg = TrainConfig(strategy="stale-sb", lr=0.05, beta=2.0, milestones=[0.5])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_ranges_are_checked_after_types():
    for values, field in [({"gamma": 0.0}, "gamma"), ({"gamma": float("nan")}, "gamma"),
                          ({"milestones": [float("inf")]}, "milestones"), ({"run_dir": " "}, "run_dir"),
                          ({"momentum": float("nan")}, "momentum")]:
        with pytest.raises(ConfigError, match=field):
            TrainConfig.from_dict(values)


def test_unknown_keys_are_named_with_the_closest_known_one():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"epoch": 3, "batch-size": 64, "zzz": 1})
    text = str(err.value)
    assert "'epoch' (did you mean 'epochs'?)" in text and "'batch-size' (did you mean 'batch_size'?)" in text
    assert "'zzz'" in text and "zzz' (did you mean" not in text


def test_toml_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 1.7\n')
    with pytest.raises(ConfigError, match=r"run.toml: epochs: must be an integer"):
        TrainConfig.from_toml(path)
    path.write_text('checkpoint = "no"\n')
    with pytest.raises(ConfigError, match=r"run.toml: checkpoint: must be true or false"):
        TrainConfig.from_toml(path)
    path.write_text('[train]\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"\[train\] \(the config file is flat"):
        TrainConfig.from_toml(path)
    path.write_text('epochs = \n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_toml(path)
    with pytest.raises(ConfigError, match="not found"):
        load_values(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_values(tmp_path)


def test_flags_override_the_file_and_are_checked_apart_from_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('strategy = "stale-sb"\nstale_n = 2\nepochs = 4\nmilestones = [1, 2]\n')
    cfg = TrainConfig.from_toml(path, {"epochs": 5})
    assert (cfg.strategy, cfg.stale_n, cfg.epochs, cfg.milestones) == ("stale-sb", 2, 5, [1.0, 2.0])
    # A range error caused by the flags is not blamed on the file.
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_toml(path, {"epochs": 0})
    assert str(err.value).startswith("epochs: must be >= 1")


def test_saved_json_configs_load(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TrainConfig(epochs=3).to_dict()))
    assert load_values(path)["epochs"] == 3
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="key/value pairs"):
        load_values(path)


@pytest.mark.parametrize("key", ["beta", "lr", "weight_decay", "gamma", "warmup_epochs", "floor"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused_in_every_float_field(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got {value!r}$"):
        TrainConfig(**{key: value})
    with pytest.raises(ConfigError, match=r"^milestones\[1\]: must be a finite number, got inf$"):
        TrainConfig(milestones=[0.5, float("inf")])


def test_toml_inf_and_nan_are_refused_naming_the_file(tmp_path):
    (tmp_path / "run.toml").write_text("beta = inf\n")
    with pytest.raises(ConfigError, match=r"run.toml: beta: must be a finite number, got inf$"):
        load_values(tmp_path / "run.toml")


def test_a_strategy_registered_in_one_place_reaches_the_config_the_cli_and_the_api(monkeypatch, capsys):
    """ARCHITECTURE's "How to add a strategy", followed by a test: a policy class and its factory
    decorated with ``@register_strategy``; the config validates against the registry, the command line
    lists and completes it, and the drop-in API trains with it (priming epoch included) for two epochs."""
    import torch

    import sb_accel
    from sb_accel.cli import main
    from sb_accel.config import choices
    from sb_accel.models import create_model
    from sb_accel.selection import SelectionPolicy, StrategyOptions, list_strategies, register_strategy, registry

    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))  # forgotten after this test

    class EveryOther(SelectionPolicy):
        """Keeps the candidates of even dataset index (a toy rule: no selection forward)."""

        name = "every-other"

        def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
            return indices.to(self.device) % 2 == 0

    @register_strategy("every-other", prime_epochs=1)
    def _build(options: StrategyOptions, dataset_size, batch_size):
        return EveryOther()

    with pytest.raises(ConfigError, match="strategy: must be one of .*every-other"):
        TrainConfig(strategy="every-others")
    assert TrainConfig(strategy="every-other").strategy == "every-other"
    assert list_strategies()[-1] == "every-other" and choices("strategy")[-1] == "every-other"
    assert main(["list-strategies"]) == 0
    assert "every-other\tprime_epochs=1" in capsys.readouterr().out

    model = create_model("small_cnn", width=4)
    sb = sb_accel.SelectiveBackprop(model, strategy="every-other", batch_size=8, dataset_size=32, epochs=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    trained = []
    for epoch in range(2):
        for idx in torch.randperm(32).split(16):
            for xb, yb in sb.select(x[idx], y[idx], idx):
                loss = sb.loss(torch.nn.functional.cross_entropy(model(xb), yb, reduction="none"))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sb.step()
        trained.append(sb.driver.kept)
    assert trained == [32, 32 + 16]  # the priming epoch trains on everything, then every other example
