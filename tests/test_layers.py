"""Layering that the sources show: the library (``segzoo/``) never imports the training package (``training/``,
installed as ``segzoo.training``), which sits on top of it."""

import ast
from pathlib import Path

from tests.conftest import REPO


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Every module the file ``path`` under ``root`` imports, function-level and relative imports included;
    ``from a import b`` counts as ``a`` and ``a.b``."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package[: len(package) - node.level + 1] if node.level else ()
            base = ".".join([*parent, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_training(path: Path, root: Path = REPO) -> list[str]:
    return sorted(m for m in imported_modules(path, root) if m == "segzoo.training" or m.startswith("segzoo.training."))


def test_the_library_never_imports_training():
    offenders = {str(p.relative_to(REPO)): imports_training(p) for p in sorted((REPO / "segzoo").rglob("*.py"))}
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert not offenders, f"the library must not depend on training/: {offenders}"


def test_the_check_sees_function_level_relative_and_from_imports(tmp_path):
    module = tmp_path / "segzoo" / "cli" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "def f():\n    from .. import training\n    from ..training.guide import x\n"
        "    import segzoo.training.cli\n    from segzoo import registry\n"
    )
    assert imports_training(module, tmp_path) == [
        "segzoo.training",
        "segzoo.training.cli",
        "segzoo.training.guide",
        "segzoo.training.guide.x",
    ]
