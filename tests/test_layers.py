"""The layering of ``vggexport.layers`` holds: no import cycle, no import the table does not allow, no torch under
the torch-free parts; one home for the ideas that had several. Each rule is also shown failing on a planted
violation, so a checker that sees nothing cannot pass."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from tests.import_graph import ImportGraph, build_graph, relative
from vggexport.layers import HEAVY, TORCH_FREE, allowed, part_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vggexport"


def disallowed(graph: ImportGraph) -> list[str]:
    return [f"{relative(m)} -> {relative(t)}" for m, targets in sorted(graph.internal.items()) for t in sorted(targets)
            if not allowed(relative(m), relative(t))]


def heavy_imports(graph: ImportGraph) -> dict[str, set[str]]:
    """For each torch-free module, the heavy packages it loads, however indirectly."""
    found = {}
    for module in graph.internal:
        if part_of(relative(module)) in TORCH_FREE:
            heavy = {name for loaded in graph.closure(module) for name in graph.external.get(loaded, ()) & HEAVY}
            if heavy:
                found[relative(module)] = heavy
    return found


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(ROOT)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A copy of the package's sources, to plant violations in."""
    shutil.copytree(PACKAGE, tmp_path / "vggexport", ignore=shutil.ignore_patterns("__pycache__", "static"))
    return tmp_path


def plant(root: Path, module: str, line: str) -> None:
    path = root / "vggexport" / module
    path.write_text(path.read_text() + f"\n\ndef planted() -> None:\n    {line}\n")


def test_the_graph_sees_the_imports(graph: ImportGraph) -> None:
    """The walker reads real edges (else every rule below would pass on an empty graph)."""
    assert "vggexport.serve.batcher" in graph.internal["vggexport.serve.service"]
    assert "torch" in graph.external["vggexport.model"]
    assert len(graph.internal) > 80 and sum(map(len, graph.internal.values())) > 300


def test_no_import_cycles(graph: ImportGraph) -> None:
    assert graph.cycles() == []


def test_every_import_is_allowed_by_the_table(graph: ImportGraph) -> None:
    assert disallowed(graph) == []


def test_the_torch_free_parts_load_no_torch_torchvision_or_matplotlib(graph: ImportGraph) -> None:
    assert heavy_imports(graph) == {}
    assert "vggexport.serve.app" in graph.internal and part_of("serve.app") in TORCH_FREE


def test_every_module_is_in_the_table(graph: ImportGraph) -> None:
    from vggexport.layers import MAY_IMPORT

    assert sorted({relative(m) for m in graph.internal if part_of(relative(m)) not in MAY_IMPORT}) == []


def test_a_planted_cycle_fails(planted: Path) -> None:
    plant(planted, "store/paths.py", "from vggexport.store.parity_record import read_parity  # noqa")
    assert any("vggexport.store.paths" in cycle for cycle in build_graph(planted).cycles())


def test_a_planted_upward_import_fails(planted: Path) -> None:
    plant(planted, "serve/batcher.py", "from vggexport.training import train  # noqa")
    assert disallowed(build_graph(planted)) == ["serve.batcher -> training"]


def test_a_planted_type_checking_import_counts(planted: Path) -> None:
    path = planted / "vggexport" / "data" / "imagefolder.py"
    path.write_text(path.read_text() + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from vggexport.model import ModelConfig  # noqa\n")
    assert disallowed(build_graph(planted)) == ["data.imagefolder -> model"]


def test_a_planted_indirect_torch_import_fails(planted: Path) -> None:
    """matplotlib, function-local, two modules below the server: still found."""
    plant(planted, "store/paths.py", "import matplotlib  # noqa")
    found = heavy_imports(build_graph(planted))
    assert found["store.paths"] == {"matplotlib"} and found["serve.app"] == {"matplotlib"}


def package_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def test_one_first_line_helper() -> None:
    """An exception's first line is cut by ``errors.first_line`` only: no inline ``str(exc)...splitlines()``."""
    inline = re.compile(r"str\(\s*(exc|e|error|err)\s*\)[^\n]*splitlines\(\)")
    found = [f"{path.relative_to(ROOT)}:{n}" for path, text in package_sources().items()
             for n, line in enumerate(text.splitlines(), 1) if inline.search(line)]
    assert found == ["vggexport/errors.py:" + str(next(
        n for n, line in enumerate((PACKAGE / "errors.py").read_text().splitlines(), 1) if inline.search(line)))]


def test_one_tensor_type_table() -> None:
    """Datatype names (FP32, UINT8, ...) are spelled as a table in names.py only; elsewhere they are looked up."""
    table = re.compile(r"""["'](FP16|FP64|INT8|INT64)["']""")
    found = sorted({str(path.relative_to(ROOT)) for path, text in package_sources().items() if table.search(text)})
    assert found == ["vggexport/names.py"]


def test_one_softmax_one_model_name_check() -> None:
    defined = {name: sorted(str(path.relative_to(ROOT)) for path, text in package_sources().items()
                            if re.search(rf"^def {name}\(", text, re.M))
               for name in ("softmax", "check_model_name", "first_line", "model_folder_name", "make_runner")}
    assert defined == {"softmax": ["vggexport/backend/base.py"], "check_model_name": ["vggexport/names.py"],
                       "first_line": ["vggexport/errors.py"], "model_folder_name": ["vggexport/names.py"],
                       "make_runner": ["vggexport/backend/registry.py"]}


def test_no_shim_modules() -> None:
    """Every module other than a package's __init__ defines something: none only re-exports another's names."""
    shims = []
    for path, text in package_sources().items():
        body = [node for node in ast.parse(text).body if not isinstance(node, (ast.Import, ast.ImportFrom))
                and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        if path.name not in ("__init__.py", "__main__.py") and not body:
            shims.append(str(path.relative_to(ROOT)))
    assert shims == []


def test_the_budget_sets_no_attribute_of_another_object() -> None:
    """budget.py measures through the callables the Trainer passes in: it assigns no attribute at all."""
    tree = ast.parse((PACKAGE / "training" / "budget.py").read_text())
    stores = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
              and isinstance(node.ctx, ast.Store)]
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert stores == [] and "Trainer" not in names and "trainer" not in names


def test_the_top_level_keeps_a_few_shared_modules() -> None:
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert len(modules) <= 11, modules
    assert folders == ["backend", "cli", "data", "deploy", "export", "report", "serve", "store", "training", "verify"]


def test_no_line_is_longer_than_the_configured_line_length() -> None:
    """pyproject.toml's line-length (ruff's) in the package, the tools and the tests: held here, where CI runs it."""
    found = re.search(r"^line-length = (\d+)$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml has no line-length"
    limit = int(found.group(1))
    long = [f"{path.relative_to(ROOT)}:{n} ({len(line)})" for folder in ("vggexport", "tools", "tests")
            for path in sorted((ROOT / folder).rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if len(line) > limit]
    assert long == [], long
