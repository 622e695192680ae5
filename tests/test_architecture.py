"""The package's shape (docs/ARCHITECTURE.md): import contracts, no cycles, no private names across modules."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medbundle"
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of every ``medbundle`` import in one module (relative ones resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            if module and module.split(".")[0] == "medbundle":
                out.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "medbundle"]
    return out


def _run_lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    res = _run_lint_imports(ROOT, ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("medbundle/metrics/roc.py", "import medbundle.demo\n", "face above domains above core"),
        ("medbundle/io/datalist.py", "import medbundle.ct.adapters\n", "face above domains above core"),
        ("medbundle/detection/luna16.py", "import medbundle.ct.transforms\n", "domains are independent"),
        ("medbundle/metrics/froc.py", "import torch\n", "imports neither torch nor MONAI"),
    ],
)
def test_import_contracts_catch_a_violation(tmp_path, module, line, contract):
    """The same contracts on a copy of the package with one forbidden import added: lint-imports fails, naming it."""
    shutil.copytree(PACKAGE, tmp_path / "medbundle", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + line)
    res = _run_lint_imports(tmp_path, tmp_path)
    assert res.returncode != 0
    assert contract in " ".join(res.stdout.split())
    assert "BROKEN" in res.stdout


def test_every_top_level_module_is_in_a_layer():
    """The layers contract lists modules; a new top-level module must be placed in one, or it escapes the rules."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["id"] == "layers")["layers"]
    placed = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    top = {".".join(m.split(".")[:2]) for m in _modules() if m != "medbundle"}
    assert top - placed == set(), f"modules in no layer of pyproject.toml's contract: {sorted(top - placed)}"


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {m: {i for i, _, _ in _imports(m, p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle of logic; leave those edges out
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    found = []
    for name, path in _modules().items():
        for module, names, line in _imports(name, path):
            found += [f"{path.relative_to(ROOT)}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
    assert found == []


def test_metrics_import_without_torch_monai_or_scikit_learn():
    code = ("import sys, medbundle.metrics, medbundle.metrics.froc, medbundle.io.luna16_csv; "
            "print(sorted(m for m in ('torch', 'monai', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout.strip()
    assert out == "[]"


def test_metrics_package_exposes_its_functions_lazily():
    import medbundle.metrics as metrics
    from medbundle.metrics.roc import roc_auc

    assert metrics.roc_auc is roc_auc
    assert set(metrics.__all__) <= set(dir(metrics))
    with pytest.raises(AttributeError):
        metrics.not_a_metric  # noqa: B018
