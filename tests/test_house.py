"""House rules a reviewer would otherwise check by hand."""

from __future__ import annotations

import ast
import subprocess
import sys

from .conftest import ROOT


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "mantik_spec", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runner_needs_only_the_standard_library_and_mlflow():
    """Jobs on HPC nodes have Python and mlflow, not mantik-spec: the runner must not import the package."""
    tree = ast.parse((ROOT / "mantik_spec" / "runner.py").read_text())
    imports = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imports |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
    allowed = set(sys.stdlib_module_names) | {"mlflow"}
    assert imports <= allowed, imports - allowed
