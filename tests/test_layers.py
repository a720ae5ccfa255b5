"""The package's layers import one way (docs/design.md): config/errors/redact/retry/features < inputs < outputs < parallel <
models < pipeline < launch; the library never imports Prefect, and a trainer never imports the parallel layer
(the collectives and merges are passed in)."""

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ["core", "inputs", "outputs", "parallel", "models", "pipeline", "launch"]


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "linreg":
        return None
    return "core" if len(parts) == 1 or parts[1] in ("config", "errors", "redact", "retry", "features") else parts[1]


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute imports, also inside functions), with `from a import b` as a.b too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def modules():
    for path in sorted((REPO / "linreg").rglob("*.py")):
        yield ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"), path


def test_every_subpackage_is_a_known_layer():
    assert {layer(name) for name, _ in modules()} == set(LAYERS)


def test_imports_run_one_way_and_never_reach_prefect():
    upward = []
    for name, path in modules():
        for target in imports(path):
            assert not target.startswith("prefect"), f"{name} imports {target}: the library never imports Prefect"
            if layer(target) in LAYERS and LAYERS.index(layer(target)) > LAYERS.index(layer(name)):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from linreg.pipeline import steps\n")
    assert "linreg.pipeline.steps" in imports(bad) and layer("linreg.pipeline.steps") == "pipeline"


def test_trainers_receive_the_parallel_layer_and_never_import_it():
    assert not {t for t in imports(REPO / "linreg" / "models" / "trainers.py") if t.startswith("linreg.parallel")}
