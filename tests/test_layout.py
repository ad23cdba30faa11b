"""The tree is the pipeline: each package imports only from the stages below it."""

import ast
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
    "study",
    "reporting",
    "serving",
    "api",
    "cli",
]


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        here = _stage(".".join(relative.parts))
        if here == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistlab"):
                names = [
                    f"{node.module}.{alias.name}" if node.module == "mnistlab" else node.module for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("mnistlab")]
            else:
                continue
            for name in names:
                there = _stage(name)
                if there in STAGES and STAGES.index(there) > STAGES.index(here):
                    wrong.append(f"{relative}: imports {name}")
    assert wrong == []


def test_every_module_is_short_enough_to_read_in_one_sitting():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}
