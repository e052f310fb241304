"""dvc.yaml's code deps are each stage's import closure, so `dvc repro` re-runs what a change touches."""

import ast
import itertools
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
# the model's stages; `demo` writes the demo dataset, before any of them
STAGES_OF_DVC = {k: v for k, v in STAGES.items() if k != "demo"}


def module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``path`` imports anywhere (stages import lazily inside functions),
    relative imports resolved against ``module``; ``from a import b`` gives ``a`` and ``a.b``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return names


def imported(path: Path, module: str) -> set[str]:
    """carinspect modules ``path`` imports anywhere."""
    return {n for n in imported_names(path, module) if n.split(".")[0] == "carinspect"}


def closure(module: str) -> set[str]:
    """Files of every carinspect module (and parent package) ``module`` can import."""
    files: set[Path] = set()
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            found = module_file(".".join(parts[:i]))
            if found is not None and found not in files:
                files.add(found)
                todo.extend(imported(found, ".".join(parts[:i])))
    return {str(f.relative_to(REPO_ROOT)) for f in files}


def stage_module(cmd: str) -> str:
    """The module a stage's command runs: `carinspect data demo` or `carinspect <stage>`."""
    from carinspect.stages.spec import STAGES as DECLARED

    words = cmd.split()
    assert words[0] == "carinspect", cmd
    if words[1] == "data":
        return "carinspect.data.intake.demo"
    stage = next(s for s in DECLARED if tuple(words[1 : 1 + len(s.words)]) == s.words)
    return f"carinspect.stages.{stage.name}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_code_deps_are_the_import_closure(stage: str) -> None:
    spec = STAGES[stage]
    deps = {d for d in spec["deps"] if d.startswith("src/")}
    needed = closure(stage_module(spec["cmd"]))
    covered = {f for f in needed if any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
    missing = sorted(needed - covered)
    stale = sorted(d for d in deps if not any(f == d or f.startswith(d + "/") for f in needed))
    listing = "\n".join(f"      - {f}" for f in sorted(needed))
    assert not missing and not stale, (
        f"dvc.yaml stage {stage!r}: missing {missing}, not imported {stale}; its code deps are:\n"
        f"{listing}"
    )


def test_the_closure_follows_lazy_imports() -> None:
    """threshold imports the figures module inside a function; the decision rule through it."""
    files = closure("carinspect.stages.threshold")
    assert "src/carinspect/evaluation/decision.py" in files
    assert "src/carinspect/evaluation/plots.py" in files
    assert "src/carinspect/data/decoding/images.py" not in files


def test_dvc_yaml_runs_the_stages_the_spec_declares() -> None:
    """Each stage's command, output place and params are the spec's (stages/spec.py)."""
    from carinspect.stages.spec import STAGES

    declared = {s.name: s for s in STAGES}
    assert set(STAGES_OF_DVC) == set(declared), "dvc.yaml and stages/spec.py list other stages"
    assert list(STAGES_OF_DVC) == [s.name for s in STAGES]  # in pipeline order
    for name, spec in STAGES_OF_DVC.items():
        stage = declared[name]
        words = spec["cmd"].split()
        assert words[0] == "carinspect", spec["cmd"]
        assert tuple(words[1 : 1 + len(stage.words)]) == stage.words, spec["cmd"]
        assert f"--out {stage.out}" in " ".join(words), f"{name}: --out is not {stage.out}"
        assert tuple(spec.get("params", ())) == stage.params, f"{name}: params differ"
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in spec["outs"]]
        outs += [next(iter(m)) for m in spec.get("metrics", [])]
        for out in outs:
            assert out == str(stage.out) or out.startswith(f"{stage.out}/"), (
                f"{name} writes {out}, outside its place {stage.out}"
            )


def test_each_component_takes_the_sections_its_spec_names() -> None:
    import inspect

    from carinspect.stages.spec import STAGES
    from components import FUNCTIONS

    for stage in STAGES:
        if stage.name not in FUNCTIONS:
            continue  # summary: no component (a pipeline run's figures are KFP's own UI)
        taken = {
            p for p in inspect.signature(FUNCTIONS[stage.name]).parameters if p.endswith("_cfg")
        }
        assert taken == set(stage.inputs), f"{stage.name}: takes {taken}, spec says {stage.inputs}"


def _place_of(path: str) -> str | None:
    """The stage whose output place holds ``path`` (None: not a stage's output)."""
    from carinspect.stages.spec import STAGES

    for stage in STAGES:
        if path == str(stage.out) or path.startswith(f"{stage.out}/"):
            return stage.name
    return None


@pytest.mark.parametrize("stage", [s for s in STAGES if s not in ("demo", "ingest")])
def test_data_deps_are_the_outputs_of_the_stages_the_spec_puts_before(stage: str) -> None:
    """dvc.yaml's data deps and the command's input paths come from the spec's ``after`` stages."""
    from carinspect.stages.spec import SPEC

    spec = STAGES[stage]
    data = [d for d in spec["deps"] if not d.startswith("src/")]
    assert {_place_of(d) for d in data} == set(SPEC[stage].after), (
        f"{stage}: dvc.yaml reads the outputs of {sorted({str(_place_of(d)) for d in data})}, "
        f"the spec says {sorted(SPEC[stage].after)}"
    )
    words = spec["cmd"].split()
    paths = [v for k, v in itertools.pairwise(words) if k.startswith("--")]
    for path in paths:
        if path in ("params.yaml", str(SPEC[stage].out)):
            continue
        assert _place_of(path) in SPEC[stage].after, f"{stage}: {path} is not an upstream output"
        assert any(d == path or d.startswith(f"{path}/") or path.startswith(f"{d}/")
                   for d in data), f"{stage}: reads {path}, which is not one of its deps"  # fmt: skip
