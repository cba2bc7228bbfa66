"""Engine build recipes: the export, INT8, selection-batch and TensorRT settings of a model.

A recipe is a TOML file of sections (``[export]``, ``[int8]``, ``[selection]``, ``[tensorrt]``)
whose keys are those of :data:`DEFAULTS`. :func:`load_recipe` merges, key by key, in this order:

1. :data:`DEFAULTS`, the built-in values (what an installed package without recipe files uses);
2. ``default.toml``;
3. ``<model_name>.toml``, for models that need something different.

Each file is looked up first in ``$SB_ACCEL_ENGINES/recipes`` and then in the repository's
``engines/recipes``; the first folder that has it wins. An engine then reads
:meth:`~sb_accel.engines.base.EngineContext.setting`, where an explicit ``options`` entry with a
recipe key overrides the recipe (:func:`resolve_recipe`). Unknown sections or keys and values of the
wrong type are errors, so a typo in a recipe cannot be silently ignored.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .errors import EngineError

__all__ = ["DEFAULTS", "ENV_VAR", "REPO_RECIPES", "RECIPE_KEYS", "load_recipe", "recipe_dirs", "resolve_recipe", "merge_recipe"]

Recipe = Dict[str, Dict[str, Any]]

ENV_VAR = "SB_ACCEL_ENGINES"
# The repository's recipes; absent from an installed package (site-packages has no engines/ folder).
REPO_RECIPES = Path(__file__).resolve().parents[2] / "engines" / "recipes"

DEFAULTS: Recipe = {
    # torch.onnx.export: "legacy" (TorchScript, ~0.1-0.6 s) or "dynamo" (2-5 s); the opset is the
    # legacy exporter's (dynamo picks its own).
    "export": {"exporter": "legacy", "opset": 17},
    # INT8 static QDQ. quant_format is ONNX Runtime's ("u8s8": fastest on x86 CPUs; TensorRT always
    # uses "s8s8-symmetric"); recalibrate_every: ONNX Runtime's rebuild (recalibration) every N refreshes
    # (0: only when the refresher's check of a cheap refresh fails).
    "int8": {"quant_format": "u8s8", "calibration_method": "minmax", "calibration_rows": 256,
             "recalibrate_every": 100},
    # Selection batch sizes a driver may pad or split candidate batches to (few shapes: fewer
    # TensorRT profiles, CUDA-graph friendly); torch-graph captures one CUDA graph per size. compile:
    # torch-graph's torch.compile mode before capture ("off", "default", "max-autotune-no-cudagraphs").
    "selection": {"bucket_sizes": [128, 256, 512, 1024], "compile": "off"},
    # ONNX Runtime: how a refresh reaches the session. "session": a new session over the same graph
    # reading the new weights (INT8: over ORT's optimized graph); "inplace": one session whose weight
    # buffers are overwritten (prepacking, and for FP32/FP16 all graph optimizations, off: slower
    # per batch, see sb_accel/engines/ort_weights.py).
    "onnxruntime": {"refresh_mode": "session"},
    # TensorRT builder: optimization level, workspace pool (MiB), rebuild every N refreshes
    # (refits in between; 0: only when a refit is refused).
    "tensorrt": {"builder_optimization_level": 3, "workspace_mib": 4096, "rebuild_every": 0},
}

# recipe key -> its section (keys are unique across sections, so options can stay flat)
RECIPE_KEYS: Dict[str, str] = {key: section for section, values in DEFAULTS.items() for key in values}


def recipe_dirs() -> List[Path]:
    """Folders searched for recipe files, first match wins: ``$SB_ACCEL_ENGINES/recipes``, then the
    repository's ``engines/recipes`` (absent from an installed package)."""
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]) / "recipes")
    if REPO_RECIPES.is_dir():
        dirs.append(REPO_RECIPES)
    return dirs


def load_recipe(model_name: str) -> Recipe:
    """The recipe of ``model_name`` (a model registry name, e.g. ``"resnet18"``).

    Raises:
        EngineError: a recipe file is not valid TOML, or names an unknown section or key, or
            gives a value of the wrong type.
    """
    if not model_name or any(sep in model_name for sep in ("/", "\\")) or model_name.startswith("."):
        raise EngineError(f"not a model name: {model_name!r}")
    recipe = copy.deepcopy(DEFAULTS)
    for stem in ("default", model_name):
        path = _find(f"{stem}.toml")
        if path is not None:
            recipe = merge_recipe(recipe, _read(path), str(path))
    return recipe


def merge_recipe(base: Mapping[str, Mapping[str, Any]], update: Mapping[str, Any], origin: str = "recipe") -> Recipe:
    """``base`` with the values of ``update`` (``{section: {key: value}}``), checked against :data:`DEFAULTS`."""
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in update.items():
        if section not in DEFAULTS or not isinstance(values, Mapping):
            raise EngineError(f"{origin}: unknown recipe section [{section}]; sections: {', '.join(DEFAULTS)}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise EngineError(f"{origin}: unknown key {key!r} in [{section}]; keys: {', '.join(DEFAULTS[section])}")
            _check_type(value, DEFAULTS[section][key], f"{origin}: [{section}] {key}")
            merged.setdefault(section, {})[key] = copy.deepcopy(value)
    return merged


def resolve_recipe(recipe: Mapping[str, Mapping[str, Any]], options: Optional[Mapping[str, Any]] = None) -> Recipe:
    """Defaults, then ``recipe``, then every entry of ``options`` whose key is a recipe key."""
    resolved = merge_recipe(DEFAULTS, recipe)
    for key, value in (options or {}).items():
        if key in RECIPE_KEYS:
            resolved[RECIPE_KEYS[key]][key] = value
    return resolved


def _check_type(value: Any, default: Any, where: str) -> None:
    # bool is an int in Python: a recipe saying `opset = true` is still a mistake.
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, type(default)):
        raise EngineError(f"{where} must be a {type(default).__name__}, got {value!r}")
    if isinstance(default, list) and not all(isinstance(v, type(default[0])) for v in value):
        raise EngineError(f"{where} must be a list of {type(default[0]).__name__}, got {value!r}")


def _find(filename: str) -> Optional[Path]:
    for folder in recipe_dirs():
        if (folder / filename).is_file():
            return folder / filename
    return None


def _read(path: Path) -> Dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise EngineError(f"reading {path} on Python 3.10 needs tomli: pip install tomli") from exc
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise EngineError(f"{path}: not valid TOML: {exc}") from exc
