"""The house's floors: lower layers never import upper ones, and no module imports itself back.

Read from the code (AST, imports inside functions included), like the dvc.yaml closure test:
contracts, config, data, modeling and evaluation are the ground the stages, serving and the CLI
stand on; only the CLI's pipeline commands reach the top-level KFP folders (components/,
pipelines/), where all the KFP code lives.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.test_dvc_yaml import imported_names

SRC = REPO_ROOT / "src"
LOWER = ("contracts", "config", "data", "modeling", "evaluation", "drift", "errors", "io", "logs",
         "memory")  # fmt: skip
UPPER = ("stages", "serving", "cli")
KFP_FOLDERS = ("pipelines", "components")
MAY_IMPORT_KFP = ("carinspect.cli.pipeline",)  # `carinspect pipeline ...` only


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports (the longest known prefix of each imported name)."""
    names = imported_names(path, module)
    found = set()
    for name in names:
        if name.split(".")[0] in KFP_FOLDERS:
            found.add(name.split(".")[0])
            continue
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module and name != "carinspect":
            found.add(name)
    return found


GRAPH = {m: _imports(p, m) for m, p in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_lower_layers_never_import_upper_ones() -> None:
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if _layer(m) in LOWER
        for d in deps
        if _layer(d) in UPPER
    )
    assert not wrong, f"lower layers importing upper ones: {wrong}"


def test_only_the_cli_reaches_the_kfp_folders() -> None:
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if d in KFP_FOLDERS and not m.startswith(MAY_IMPORT_KFP)
    )
    assert not wrong, f"imports of pipelines/ or components/ outside the CLI: {wrong}"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other in a loop: {cycles}"


def test_the_graph_is_read() -> None:
    """The test sees the house: the CLI imports stages, a stage imports contracts."""
    assert any(d.startswith("carinspect.stages") for d in GRAPH["carinspect.cli.stages"])
    assert "carinspect.contracts.folders" in GRAPH["carinspect.stages.evaluate"]
    assert "pipelines" in GRAPH["carinspect.cli.pipeline"]
