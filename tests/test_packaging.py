"""Packaging: the package imports on every Python it declares (3.10 has no tomllib), and the declared
torch floor is at least what the APIs the code uses need."""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# APIs the package uses -> the torch version that has them (on the device the code uses them on).
TORCH_API_FLOORS = {
    "nonzero_static": (2, 6),        # on CUDA (the selection driver's partial forward sets)
    "torch.amp.GradScaler": (2, 3),  # GradScaler(device_type)
    "dynamo=": (2, 5),               # torch.onnx.export(..., dynamo=...)
}


def _guarded_by_try(tree: ast.AST, node: ast.AST) -> bool:
    """Whether ``node`` sits in the body of a ``try`` that catches ModuleNotFoundError/ImportError."""
    for parent in ast.walk(tree):
        if isinstance(parent, ast.Try) and any(node is n for stmt in parent.body for n in ast.walk(stmt)):
            caught = {getattr(h.type, "id", None) for h in parent.handlers}
            if caught & {"ModuleNotFoundError", "ImportError"}:
                return True
    return False


def test_no_module_imports_tomllib_unguarded():
    """tomllib is Python 3.11+; ``requires-python >= 3.10`` means every import of it needs a fallback."""
    unguarded = []
    for path in sorted((ROOT / "sb_accel").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "tomllib" in names and not _guarded_by_try(tree, node):
                unguarded.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unguarded, f"tomllib imported without a tomli fallback (Python 3.10): {unguarded}"


def _declared(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(name)}([^"]*)"', text)
    assert match, f"{name} is not declared in pyproject.toml"
    return match.group(1)


def test_tomli_is_declared_for_python_3_10():
    assert "python_version < '3.11'" in _declared("tomli")


def test_declared_torch_floor_covers_the_apis_used():
    source = "\n".join(p.read_text() for p in (ROOT / "sb_accel").rglob("*.py"))
    used = {api: floor for api, floor in TORCH_API_FLOORS.items() if api in source}
    assert used, "none of the tracked APIs is used any more: update TORCH_API_FLOORS"
    declared = tuple(int(v) for v in re.match(r">=(\d+)\.(\d+)", _declared("torch")).groups())
    needed = max(used.values())
    assert declared >= needed, (f"pyproject declares torch{_declared('torch')} but the code uses "
                                f"{[a for a, f in used.items() if f > declared]} (torch >= {needed[0]}.{needed[1]})")


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="checks the fallback where tomllib is missing")
def test_config_imports_on_python_3_10():  # pragma: no cover - runs on 3.10 only
    import sb_accel.config  # noqa: F401
