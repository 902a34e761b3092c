"""The package as a whole: no import circle, the floors of docs/design.md#floors (read from its
tables), lazy public attributes, one version, and code that only points to documents inside
the repository."""

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
        ("stepsize_lens.set_figures", set()),
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


DESIGN = ROOT / "docs" / "design.md"
# the package and the subpackages with floors of their own (docs/design.md#floors)
FLOOR_SCOPES = ("stepsize_lens", "stepsize_lens.recording", "stepsize_lens.analysis")


def floor_tables(text: str | None = None) -> dict[str, list[tuple[int, list[str]]]]:
    """scope -> its rows (floor, entries), read from the markdown table that follows each
    ``<!-- floors: scope -->`` line of docs/design.md: the floor number is the first cell, the
    entries are the backticked names of the second."""
    text = DESIGN.read_text(encoding="utf-8") if text is None else text
    tables: dict[str, list[tuple[int, list[str]]]] = {}
    for match in re.finditer(r"^<!-- floors: ([\w.]+) -->\n((?:\|.*\n)+)", text, re.MULTILINE):
        rows = []
        for line in match.group(2).splitlines()[2:]:  # past the header and |---| lines
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append((int(cells[0]), re.findall(r"`([^`]+)`", cells[1])))
        tables[match.group(1)] = rows
    return tables


def _entry_modules(scope: str, entry: str, modules: set[str]) -> set[str]:
    """The modules a table entry names: ``__init__`` the scope itself, ``name/`` a subpackage
    and everything in it, else one module (dotted inside the scope)."""
    if entry == "__init__":
        return {scope} & modules
    if entry.endswith("/"):
        package = f"{scope}.{entry[:-1]}"
        return {m for m in modules if m == package or m.startswith(package + ".")}
    return {f"{scope}.{entry}"} & modules


def floor_problems(
    graph: dict[str, set[str]], tables: dict[str, list[tuple[int, list[str]]]]
) -> list[str]:
    """Every way the import graph breaks the floor tables: a module of a scope that no row
    places (or two rows do), an entry that names no module, an import that runs up a floor."""
    modules = set(graph)
    problems = []
    for scope, rows in tables.items():
        inside = {m for m in modules if m == scope or m.startswith(scope + ".")}
        floor: dict[str, int] = {}
        for number, entries in rows:
            for entry in entries:
                named = _entry_modules(scope, entry, modules)
                if not named:
                    problems.append(f"{scope}: the entry {entry!r} names no module")
                for module in named:
                    if module in floor:
                        problems.append(f"{scope}: {module} is placed twice")
                    floor[module] = number
        problems += [f"{scope}: {m} has no floor" for m in sorted(inside - set(floor))]
        problems += [
            f"{scope}: {module} (floor {floor[module]}) imports {target} (floor {floor[target]})"
            for module in sorted(inside & set(floor))
            for target in sorted(graph[module])
            if target in floor and floor[target] > floor[module]
        ]
    return problems


def test_the_design_document_has_the_floor_tables():
    tables = floor_tables()
    assert set(tables) == set(FLOOR_SCOPES)
    for rows in tables.values():
        numbers = [number for number, _ in rows]
        assert numbers == list(range(len(rows))) and all(entries for _, entries in rows)


def test_every_import_keeps_to_the_floors():
    """docs/design.md#floors: a module imports only from its floor and below, in the package
    and inside recording/ and analysis/; every module has a floor; every entry is a module."""
    assert floor_problems(import_graph(), floor_tables()) == []


def test_the_floor_check_notices_each_kind_of_break():
    graph = import_graph()
    tables = floor_tables()
    assert floor_problems(graph, tables) == []
    loose = {**graph, "stepsize_lens.loose": set(), "stepsize_lens.analysis.loose": set()}
    assert floor_problems(loose, tables) == [
        "stepsize_lens: stepsize_lens.loose has no floor",
        "stepsize_lens.analysis: stepsize_lens.analysis.loose has no floor",
    ]
    gone = {name: targets for name, targets in graph.items() if name != "stepsize_lens.table_fit"}
    gone = {name: targets - {"stepsize_lens.table_fit"} for name, targets in gone.items()}
    assert floor_problems(gone, tables) == ["stepsize_lens: the entry 'table_fit' names no module"]
    upward = {name: set(targets) for name, targets in graph.items()}
    upward["stepsize_lens.analysis.sets"].add("stepsize_lens.analysis.summary")
    upward["stepsize_lens.run.format"].add("stepsize_lens.plots")
    assert floor_problems(upward, tables) == [
        "stepsize_lens: stepsize_lens.run.format (floor 2) imports stepsize_lens.plots (floor 6)",
        "stepsize_lens.analysis: stepsize_lens.analysis.sets (floor 0) imports "
        "stepsize_lens.analysis.summary (floor 3)",
    ]


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
