"""The package as a whole: no import circle, lazy public attributes, one version, and code that
only points to documents inside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stepsize_lens"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its source (functions and
    TYPE_CHECKING blocks included). ``from pkg import name`` points at ``pkg.name`` when that is
    a module, else at ``pkg`` itself."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, name, is_package)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in modules else base)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 40 and graph["stepsize_lens.recording.lens"]  # the graph is real
    cycle = _find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_circle():
    graph = import_graph()
    graph["stepsize_lens._schema"].add("stepsize_lens.run.format")
    assert _find_cycle(graph) is not None


@pytest.mark.parametrize(
    ("leaf", "allowed"),
    [
        ("stepsize_lens._schema", set()),
        ("stepsize_lens.paper_test", {"stepsize_lens._schema"}),
        (
            "stepsize_lens.run.format",
            {"stepsize_lens._schema", "stepsize_lens.errors", "stepsize_lens.run.sections"},
        ),
        ("stepsize_lens.run.sections", {"stepsize_lens._schema"}),
    ],
)
def test_the_lower_floors_only_look_down(leaf, allowed):
    assert import_graph()[leaf] <= allowed


# The floors of the house (docs/design.md §2): a module may import only from floors strictly
# below its own (or from its own subpackage). Every top-level module must be placed here.
FLOORS = {
    "_schema": 0,
    "set_figures": 0,
    "_version": 0,
    "_files": 0,
    "_sanitize": 0,
    "_jsonable": 0,
    "_native": 0,
    "_device_paths": 0,
    "errors": 0,
    "model_names": 0,
    "table_fit": 0,
    "_launches": 0,
    "_rows": 1,
    "paper_test": 1,
    "run": 2,
    "optim": 2,
    "invariance": 3,
    "recording": 4,
    "<root>": 5,
    "analysis": 5,
    "plots": 6,
    "report": 7,
    "integrations": 8,  # above report: the W&B artifact holds the HTML report
    "experiments": 8,
    "cli": 10,
}


def _floor_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_every_module_has_a_floor():
    assert {_floor_name(m) for m in import_graph()} <= set(FLOORS)


def test_the_upper_floors_only_look_down():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _floor_name(module) != _floor_name(target)
        and FLOORS[_floor_name(target)] >= FLOORS[_floor_name(module)]
    ]
    assert upward == []


def test_only_the_run_package_touches_the_raw_run_dict():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("stepsize_lens.run"):
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in (r"\brun\.data\b", r"\._data\[", r"\bRun\(\s*validate"):
            if re.search(pattern, text):
                offenders.append(f"{name}: {pattern}")
    assert offenders == []


def test_every_subpackage_is_an_attribute_of_a_bare_import():
    code = (
        "import sys, stepsize_lens as s\n"
        "assert 'torch' not in sys.modules, 'import stepsize_lens must stay light'\n"
        "assert str(s.schedules.every(5)) == 'every(5)'\n"
        "moved = {'models': 'experiments.models', 'datasets': 'experiments.datasets',\n"
        "         'schedules': 'recording.schedules', 'demo': 'experiments.demo'}\n"
        "for name in ('analysis', 'plots', 'invariance', 'report', 'optim', 'integrations',\n"
        "             'experiments', 'recording', 'run', 'models', 'datasets', 'schedules'):\n"
        "    assert getattr(s, name).__name__ == 'stepsize_lens.' + moved.get(name, name), name\n"
        "    assert name in dir(s), name\n"
        "assert callable(s.attach) and s.Run.__name__ == 'Run'\n"
        "try:\n"
        "    s.nonexistent\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('unknown attributes must raise')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_old_names_of_moved_modules_import_the_moved_module():
    code = (
        "import sys, stepsize_lens\n"
        "from stepsize_lens.schedules import every\n"
        "assert 'torch' not in sys.modules, 'the schedules stay light'\n"
        "import stepsize_lens.recording.schedules as new\n"
        "assert every is new.every and stepsize_lens.schedules is new\n"
        "assert new.__spec__.name == new.__name__ == 'stepsize_lens.recording.schedules'\n"
        "import stepsize_lens.models as old\n"
        "from stepsize_lens.experiments import models\n"
        "assert old is models and sys.modules['stepsize_lens.models'] is models\n"
        "for name, target in stepsize_lens.MOVED.items():\n"
        "    module = __import__('stepsize_lens.' + name, fromlist=['_'])\n"
        "    assert module.__name__ == target, name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert not [
        name
        for name in (PACKAGE.glob("*.py"))
        if name.stem in ("models", "datasets", "demo", "schedules")
    ]


def test_dir_lists_only_what_resolves():
    import stepsize_lens

    for name in dir(stepsize_lens):
        getattr(stepsize_lens, name)


def test_one_version_source():
    import tomllib

    import stepsize_lens
    from stepsize_lens._version import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert stepsize_lens.__version__ == __version__
    hits = [
        p for p in PACKAGE.rglob("*.py") if re.search(r"__version__\s*=", p.read_text()) is not None
    ]
    assert hits == [PACKAGE / "_version.py"]


def test_code_points_only_to_documents_in_the_repository():
    missing = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        # documents: docs/*.md and capitalised names (README.md, DESIGN.md); lower-case names such
        # as report.md or toy2d.md are files the code writes, not documents it points to
        for ref in re.findall(r"((?:docs/[\w./-]+|\b[A-Z][A-Za-z_-]*)\.md)\b", text):
            if not (ROOT / ref).exists() and not (path.parent / ref).exists():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert missing == []
