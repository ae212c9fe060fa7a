"""The package layout: lazy exports without torch, type-checking names that match them, core apart from apps."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "ugodit_pl.operators": ROOT / "ugodit_pl" / "operators" / "__init__.py",
    "ugodit_pl.nets": ROOT / "ugodit_pl" / "nets" / "__init__.py",
    "ugodit_pl.methods": ROOT / "ugodit_pl" / "methods" / "__init__.py",
    "ugodit_pl.datamodules": ROOT / "datamodules" / "__init__.py",
    "ugodit_pl.callbacks": ROOT / "callbacks" / "__init__.py",
}
CORE = ["ugodit_pl/operators", "ugodit_pl/nets", "ugodit_pl/methods", "datamodules", "callbacks",
        "ugodit_pl/metrics.py", "ugodit_pl/classical.py", "ugodit_pl/complex.py", "ugodit_pl/atomic.py",
        "ugodit_pl/state_dicts.py", "ugodit_pl/lamda_rules.py", "ugodit_pl/arguments.py"]


def test_importing_the_packages_does_not_import_torch():
    code = f"import sys; import {', '.join(PACKAGES)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_type_checking_imports_are_the_lazy_names(package):
    tree = ast.parse(PACKAGES[package].read_text())
    lazy, typed = {}, {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_NAMES":
            lazy = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                typed.update({alias.name: "." + imp.module for alias in imp.names})
    assert lazy and typed == lazy


def test_the_core_never_imports_the_applications():
    offenders = []
    for place in CORE:
        path = ROOT / place
        for source in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            for node in ast.walk(ast.parse(source.read_text())):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                offenders += [f"{source.relative_to(ROOT)}: {m}" for m in modules if m.startswith("ugodit_pl.apps")]
    assert not offenders
