"""Build recipes: defaults, per-model merge, search order, options override, clear errors."""
from pathlib import Path

import pytest

from sb_accel.engines import EngineContext, EngineError, load_recipe
from sb_accel.engines.recipes import DEFAULTS, ENV_VAR, recipe_dirs
from sb_accel.models import list_models

REPO_RECIPES = Path(__file__).resolve().parents[1] / "engines" / "recipes"


@pytest.fixture()
def recipes(tmp_path, monkeypatch):
    """An empty ``$SB_ACCEL_ENGINES/recipes`` searched before the repository's."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    return folder


def test_checked_in_default_restates_the_builtin_defaults(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert recipe_dirs() == [REPO_RECIPES]
    import tomllib

    assert tomllib.loads((REPO_RECIPES / "default.toml").read_text()) == DEFAULTS


def test_every_checked_in_recipe_loads_and_names_a_model(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    names = [p.stem for p in REPO_RECIPES.glob("*.toml") if p.stem != "default"]
    assert names and set(names) <= set(list_models())
    for name in names:
        assert set(load_recipe(name)) == set(DEFAULTS)


def test_model_file_overrides_default_file_key_by_key(recipes):
    (recipes / "default.toml").write_text('[int8]\ncalibration_rows = 512\nrecalibrate_every = 7\n')
    (recipes / "mynet.toml").write_text('[int8]\nrecalibrate_every = 3\n[tensorrt]\nworkspace_mib = 1024\n')
    recipe = load_recipe("mynet")
    assert recipe["int8"] == {**DEFAULTS["int8"], "calibration_rows": 512, "recalibrate_every": 3}
    assert recipe["tensorrt"]["workspace_mib"] == 1024 and recipe["export"] == DEFAULTS["export"]
    other = load_recipe("othernet")  # no file of its own: the default file only
    assert other["int8"]["recalibrate_every"] == 7


def test_env_folder_wins_per_file_and_repo_fills_in(recipes):
    (recipes / "resnet18.toml").write_text('[export]\nopset = 18\n')
    assert load_recipe("resnet18")["export"]["opset"] == 18
    assert recipe_dirs() == [recipes, REPO_RECIPES]


def test_installed_package_without_recipe_folder_gives_builtin_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr("sb_accel.engines.recipes.REPO_RECIPES", tmp_path / "site-packages" / "engines" / "recipes")
    assert recipe_dirs() == []
    recipe = load_recipe("resnet18")
    assert recipe == DEFAULTS
    recipe["int8"]["calibration_rows"] = 1  # a copy: the defaults stay as they are
    assert DEFAULTS["int8"]["calibration_rows"] == 256


@pytest.mark.parametrize("text,match", [
    ("[int9]\nx = 1\n", "unknown recipe section"),
    ("[int8]\ncalibraton_rows = 1\n", "unknown key 'calibraton_rows'"),
    ("[int8]\ncalibration_rows = \"256\"\n", "must be a int"),
    ("[export]\nopset = true\n", "must be a int"),
    ("[selection]\nbucket_sizes = [128, \"x\"]\n", "list of int"),
    ("[int8\n", "not valid TOML"),
])
def test_bad_recipe_files_name_the_file(recipes, text, match):
    (recipes / "bad.toml").write_text(text)
    with pytest.raises(EngineError, match=match) as info:
        load_recipe("bad")
    assert "bad.toml" in str(info.value)


def test_model_name_cannot_leave_the_folder():
    with pytest.raises(EngineError, match="not a model name"):
        load_recipe("../secrets")


def test_context_options_override_the_recipe(recipes):
    (recipes / "mynet.toml").write_text('[int8]\nrecalibrate_every = 3\ncalibration_rows = 64\n')
    context = EngineContext(recipe=load_recipe("mynet"), options={"recalibrate_every": 1, "provider": "cpu"})
    assert context.setting("recalibrate_every") == 1 and context.setting("calibration_rows") == 64
    assert context.setting("rebuild_every") == DEFAULTS["tensorrt"]["rebuild_every"]
    assert context.resolved_recipe()["int8"]["recalibrate_every"] == 1
    assert EngineContext().setting("exporter") == "legacy"  # no recipe: the built-in defaults
    with pytest.raises(KeyError):
        context.setting("provider")  # a runtime option, not a recipe key
