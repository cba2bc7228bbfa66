"""Every name a benchmark script imports from the package (or from a sibling script) exists.

Benchmarks run for minutes and are not run by the suite, so a renamed module breaks them silently
(``validation_drift.py`` imported two modules that a refactor had removed). This reads each script's
imports without running it.
"""
import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _top_level_names(path: Path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_imports_resolve(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            sibling = BENCHMARKS / f"{node.module}.py"
            if node.module.split(".")[0] == "sb_accel":
                module = importlib.import_module(node.module)
                missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                            and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            elif sibling.exists():
                defined = _top_level_names(sibling)
                missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in defined]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sb_accel":
                    importlib.import_module(alias.name)  # raises if it is gone
    assert not missing, f"{script.name} imports names that do not exist: {missing}"


def test_the_check_sees_a_missing_name(tmp_path):
    """The test above can fail: a script importing a removed module or name is reported."""
    script = tmp_path / "broken.py"
    script.write_text("from sb_accel.engines import no_such_name\n")
    with pytest.raises(AssertionError, match="no_such_name"):
        test_imports_resolve(script)
    script.write_text("from sb_accel.train.engine_setup import sample_batches\n")
    with pytest.raises(ModuleNotFoundError):
        test_imports_resolve(script)
