"""Where built engine artifacts live: ``cache_dir/<key>/``, keyed by everything that shapes them.

The key is a content hash of

* the model's architecture signature: class name and the ``state_dict`` names, shapes and dtypes
  (not the values: refreshed weights reuse the folder);
* the resolved build recipe (:func:`~sb_accel.engines.recipes.resolve_recipe`);
* the versions of torch, onnx, onnxruntime and tensorrt that are installed;
* the name of the device the engine runs on (TensorRT plans and timing caches are per GPU).

Each folder holds a ``key.json`` with these inputs, so a person can tell folders apart.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..files import atomic_write_json

__all__ = ["cache_key", "key_inputs", "artifact_dir", "device_name", "library_versions"]

# import name -> distributions that provide it (the GPU builds publish under other names)
_LIBRARIES: Dict[str, tuple] = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
}


def library_versions() -> Dict[str, str]:
    """Versions of the libraries that shape an artifact, for those installed.

    Read from a module already imported, else from package metadata: nothing is imported here
    (importing TensorRT to learn its version would cost seconds).
    """
    versions = {}
    for module, distributions in _LIBRARIES.items():
        loaded = sys.modules.get(module)
        version = getattr(loaded, "__version__", None) if loaded is not None else None
        for dist in distributions if version is None else ():
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if version is not None:
            versions[module] = str(version)
    return versions


def device_name(device: Union[str, torch.device]) -> str:
    """``"NVIDIA H100 80GB HBM3"`` for a CUDA device, ``"cpu-x86_64"`` for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}-{platform.machine()}"


def key_inputs(model: nn.Module, recipe: Mapping[str, Any], device: str,
               versions: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Everything the key is a hash of, as JSON-ready values (``versions`` default: installed ones)."""
    state = [[name, list(t.shape), str(t.dtype).replace("torch.", "")] for name, t in model.state_dict().items()]
    return {"architecture": {"class": f"{type(model).__module__}.{type(model).__qualname__}", "state_dict": state},
            "recipe": recipe, "versions": dict(library_versions() if versions is None else versions),
            "device": device}


def cache_key(model: nn.Module, recipe: Mapping[str, Any], device: str,
              versions: Optional[Mapping[str, str]] = None) -> str:
    """A 16-hex-digit SHA-256 prefix of :func:`key_inputs`."""
    return _digest(key_inputs(model, recipe, device, versions))


def artifact_dir(cache_dir: Union[str, os.PathLike], model: nn.Module, recipe: Mapping[str, Any],
                 device: str) -> Path:
    """``cache_dir/<cache_key>``, created, with its ``key.json``."""
    inputs = key_inputs(model, recipe, device)
    folder = Path(cache_dir) / _digest(inputs)
    if not (folder / "key.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "key.json", inputs, sort_keys=True)
    return folder


def _digest(inputs: Mapping[str, Any]) -> str:
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
