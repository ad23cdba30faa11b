"""The tree is the pipeline: each package imports only from the stages below it, no module imports
another that imports it back (not even for type checking), every module reads in one sitting, and the
readers of run folders need no training engine."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnistlab"
# Bottom to top. A module may import from its own stage and the stages below it, never above.
STAGES = [
    "version",
    "errors",
    "extras",
    "files",
    "spec",
    "data",
    "records",
    "nn",
    "train",
    "evaluation",
    "studies",
    "reporting",
    "serving",
    "results",
    "api",
    "cli",
]


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    """The mnistlab modules `path` imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistlab"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.append(candidate if _file(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("mnistlab")]
    return found


def _file(module: str) -> Path | None:
    base = PACKAGE.parent / module.replace(".", "/")
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def test_imports_point_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        here = _stage(_module(path))
        if here == "__init__":
            continue
        for name in _imports(path):
            there = _stage(name)
            if there in STAGES and STAGES.index(there) > STAGES.index(here):
                wrong.append(f"{_module(path)}: imports {name}")
    assert wrong == []


def test_no_module_imports_one_that_imports_it_back():
    """No cycle in the graph of which module imports which, lazy and TYPE_CHECKING imports included."""
    graph = {_module(p): {m for m in _imports(p) if _file(m) and m != _module(p)} for p in PACKAGE.rglob("*.py")}
    graph = {module: {m for m in targets if not m.endswith("__init__")} for module, targets in graph.items()}
    state, cycles = {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in graph.get(module, ()):
            if target == "mnistlab":  # the package root re-exports the API lazily
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_module_is_short_enough_to_read_in_one_sitting_without_formatting_tricks():
    sources = {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, text in sources.items() if (n := len(text.splitlines())) > 450} == {}
    assert [name for name, text in sources.items() if "fmt: skip" in text or "fmt: off" in text] == []


def test_reading_a_run_folder_and_building_its_report_import_no_torch(tiny_run, tmp_path):
    code = f"""
import sys
from mnistlab.records import Metrics
from mnistlab.reporting import build
from mnistlab.studies.folder import SeedRun
run = SeedRun.load({str(tiny_run)!r})
run.analysis(), run.folder.read_error_images(), run.folder.read_experiment(), run.folder.read_architecture()
build.build([run.folder.path], __import__("pathlib").Path({str(tmp_path / "r.html")!r}))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded[:5]
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "r.html").is_file()
