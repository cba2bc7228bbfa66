"""ARCHITECTURE.md names only what exists: every module path and every class it mentions."""
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text()


def _expand(path: str):
    """``selection/{a,b}.py`` -> ``selection/a.py``, ``selection/b.py``."""
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _exists(path: str) -> bool:
    """A path of the package (``train/driver.py``) or of the repository (``tests/...``,
    ``engines/recipes/*.toml``); a bare file name (``tensorrt_backend.py``) anywhere in the package."""
    if "/" not in path:
        return any((ROOT / "sb_accel").rglob(path))
    return any(any(p.parent.glob(p.name)) for p in (ROOT / "sb_accel" / path, ROOT / path))


def test_every_module_path_in_the_doc_exists():
    paths = {p for token in re.findall(r"`([^`\s]+\.(?:py|toml))`", DOC) if not token.startswith("..") and "<" not in token
             for p in _expand(token)}
    assert len(paths) > 30
    missing = sorted(p for p in paths if not _exists(p))
    assert not missing, f"ARCHITECTURE.md names modules that do not exist: {missing}"


def test_every_class_in_the_doc_exists():
    source = "\n".join(p.read_text() for p in (ROOT / "sb_accel").rglob("*.py"))
    names = set(re.findall(r"`([A-Z][a-z]+(?:[A-Z][a-z0-9]*)+)`", DOC))  # CamelCase in backticks
    assert len(names) > 15
    missing = sorted(n for n in names if not re.search(rf"^\s*class {n}\b", source, re.M))
    assert not missing, f"ARCHITECTURE.md names classes that do not exist: {missing}"
