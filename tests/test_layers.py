"""The layers' import promises: a driver plans without a model library; the run path carries no study code;\npipeline's groups (its subpackages) are entered only through what their __init__ exports."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def imported_after(statement: str) -> set[str]:
    """Top-level modules loaded by a fresh interpreter running `statement`."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", [
    "import pipeline.config",
    "import jobs.cli, pipeline.driver, pipeline.run, pipeline.cluster",
])
def test_driver_plans_without_model_or_study_libraries(statement):
    loaded = imported_after(statement)
    assert not loaded & {"torch", "transformers", "pandas", "matplotlib", "ray"}


def test_engine_needs_no_pipeline():
    loaded = imported_after("import dart.engine, dart.loading, dart.cli")
    assert "torch" in loaded and not loaded & {"pipeline", "jobs", "ray", "pyarrow"}


# ---- pipeline's groups: each subpackage is entered through its __init__ ----------------------------
PIPELINE = ROOT / "pipeline"
GROUPS = sorted(p.parent.name for p in PIPELINE.glob("*/__init__.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(absolute module, names imported from it) for every import statement of file `path`, module `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def group_exports(group: str) -> set[str]:
    tree = ast.parse((PIPELINE / group / "__init__.py").read_text())
    names = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
    return set(ast.literal_eval(names[0])) if names else set()


def crossings(path: Path, module: str) -> list[str]:
    """Imports in one file of a group's module from outside the group, or of a name the group's
    __init__ does not export."""
    own = module.split(".")
    inside = own[0] == "pipeline" and (len(own) > 2 or (len(own) == 2 and path.name == "__init__.py"))
    own_group = own[1] if inside else None
    problems = []
    for target, names in imported(path, module):
        parts = target.split(".")
        if parts[0] != "pipeline" or len(parts) < 2 or parts[1] not in GROUPS or parts[1] == own_group:
            continue
        if len(parts) > 2:
            problems.append(f"{module} imports {target}: a module inside the group")
        elif unexported := sorted(set(names) - group_exports(parts[1])):
            problems.append(f"{module} imports {target}: {', '.join(unexported)} not in its __init__'s __all__")
    return problems


def test_pipeline_is_grouped():
    assert set(GROUPS) >= {"inputs", "run", "cluster", "checks", "tasks", "study"}
    top = {p.stem for p in PIPELINE.glob("*.py")}
    assert top == {"__init__", "config", "config_doc", "driver", "failures", "settings"}


def test_groups_are_entered_only_through_their_exports():
    files = sorted([*PIPELINE.rglob("*.py"), *(ROOT / "jobs").rglob("*.py")])
    assert [problem for path in files for problem in crossings(path, module_name(path))] == []


def test_the_boundary_check_finds_a_crossing(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from ..inputs.preflight import check_inputs\nfrom ..run import RunDir, RunLock\n"
                     "from .pool import WorkerPool\nimport pipeline.tasks.metrics\n")
    assert crossings(probe, "pipeline.cluster.probe") == [
        "pipeline.cluster.probe imports pipeline.inputs.preflight: a module inside the group",
        "pipeline.cluster.probe imports pipeline.run: RunLock not in its __init__'s __all__",
        "pipeline.cluster.probe imports pipeline.tasks.metrics: a module inside the group"]
    assert crossings(probe, "pipeline.inputs.probe") == [
        "pipeline.inputs.probe imports pipeline.run: RunLock not in its __init__'s __all__",
        "pipeline.inputs.probe imports pipeline.tasks.metrics: a module inside the group"]
