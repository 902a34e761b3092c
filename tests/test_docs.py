"""docs/design.md stays the project's reference: its nine numbered sections are there, in order
(code cites them as "docs/design.md §N"), §3 defines every metric of the catalog and nothing
else, and §8 names every key of the run file, every group field and every params column.

The README and every document under docs/ name only what exists: module paths
(``stepsize_lens/...py``), dotted names (``stepsize_lens.x.y``), tests, benchmarks, documents,
notebooks, and relative links with their section anchors (docs/contributing.md included)."""

from __future__ import annotations

import re
from pathlib import Path

from stepsize_lens._schema import GROUP_FIELDS, METRICS, PARAM_COLUMNS, VIEWS
from stepsize_lens.run.format import REQUIRED_KEYS

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
NUM_SECTIONS = 9

# A definition row of a metric table: | `name` | definition | ... |
_DEFINITION_ROW = re.compile(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*([^|]*?)\s*\|", re.MULTILINE)


def _text() -> str:
    return DESIGN.read_text(encoding="utf-8")


def section_numbers(text: str) -> list[int]:
    """The N of every top-level heading ``## §N ...``, in document order."""
    return [int(n) for n in re.findall(r"^## §(\d+) \S", text, flags=re.MULTILINE)]


def section(text: str, number: int) -> str:
    """The text of ``## §number`` up to the next top-level heading ("" if there is none)."""
    match = re.search(rf"^## §{number} .*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return match.group(0) if match else ""


def defined_metrics(text: str) -> set[str]:
    """Names given a non-empty definition in a table row of §3."""
    return {name for name, meaning in _DEFINITION_ROW.findall(section(text, 3)) if meaning}


def test_the_design_document_has_its_nine_sections_in_order():
    assert section_numbers(_text()) == list(range(1, NUM_SECTIONS + 1))


def test_section_3_defines_every_metric_of_the_catalog():
    missing = [name for name in METRICS if name not in defined_metrics(_text())]
    assert missing == [], f"docs/design.md §3 does not define: {', '.join(missing)}"


def test_section_3_defines_no_metric_the_catalog_lacks():
    stale = sorted(defined_metrics(_text()) - set(METRICS))
    assert stale == [], f"docs/design.md §3 defines metrics the code does not record: {stale}"


def test_section_3_explains_both_views():
    text = section(_text(), 3)
    assert all(f"`{view}`" in text for view in VIEWS)


def test_section_8_names_every_key_of_the_run_file():
    text = section(_text(), 8)
    names = (*REQUIRED_KEYS, "scalars", "events", *GROUP_FIELDS, *PARAM_COLUMNS)
    missing = [name for name in names if f"`{name}`" not in text]
    assert missing == [], f"docs/design.md §8 does not name: {', '.join(missing)}"


def test_the_checks_notice_a_missing_section_or_definition():
    text = _text()
    without_heading = text.replace("\n## §4 ", "\n## Four ", 1)
    assert section_numbers(without_heading) != list(range(1, NUM_SECTIONS + 1))
    row = re.search(r"^\| `angular_update` \|.*\n", section(text, 3), flags=re.MULTILINE)
    assert row is not None
    without_row = text.replace(row.group(0), "", 1)
    assert "angular_update" not in defined_metrics(without_row)
    assert "angular_update" in defined_metrics(text)


FINDINGS_DOC = DESIGN.parent / "findings.md"


def test_findings_md_is_the_contract_of_every_kind():
    """docs/findings.md has an entry per finding kind (a ``### `kind` `` heading), states every
    plausible weight-decay range the advice uses, and every test it cites exists."""
    from stepsize_lens.analysis import KINDS, PLAUSIBLE_WEIGHT_DECAY

    text = FINDINGS_DOC.read_text(encoding="utf-8")
    headed = set()
    for heading in re.findall(r"^### (.+)$", text, flags=re.MULTILINE):
        headed |= set(re.findall(r"`([a-z_]+)`", heading))
    assert set(KINDS) <= headed, f"no entry for {sorted(set(KINDS) - headed)}"
    for family, (low, high) in PLAUSIBLE_WEIGHT_DECAY.items():
        assert f"{low:g} to {high:g}" in text, family
    sources = "".join(p.read_text(encoding="utf-8") for p in DESIGN.parents[1].glob("tests/*.py"))
    cited = set(re.findall(r"`(?:[\w/.]+::)?(test_\w+)`", text))
    assert cited and all(f"def {name}(" in sources for name in cited)


# --------------------------------------------------------------------------------------------
# Every path and section a document names exists
# --------------------------------------------------------------------------------------------

ROOT = DESIGN.parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FILE = re.compile(
    r"(?<![\w/.-])((?:stepsize_lens|tests|benchmarks)/[\w/]+\.py|docs/[\w-]+\.md"
    r"|notebooks/[\w-]+\.ipynb)\b"
)
_DOTTED = re.compile(r"(?<![\w/.])stepsize_lens(?:\.[A-Za-z_]\w*)+")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def named_files(text: str) -> set[str]:
    """Repository paths a document names: modules, tests, benchmarks, documents, notebooks."""
    return set(_FILE.findall(text))


def _defines(path: Path, name: str) -> bool:
    """Whether a module defines ``name`` (a def, a class or a top-level assignment) or, for a
    package's ``__init__.py``, names it at all (lazy attributes, re-exports)."""
    text = path.read_text(encoding="utf-8")
    if path.name == "__init__.py":
        return re.search(rf"\b{re.escape(name)}\b", text) is not None
    pattern = rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\b\s*[:=]"
    return re.search(pattern, text, flags=re.MULTILINE) is not None


def dotted_missing(name: str) -> str | None:
    """The first piece of a dotted name ``stepsize_lens.x.y.attr`` that does not exist, as a
    path (a module) or ``path:attr`` (an attribute its module does not define); None if it
    resolves: packages and modules as files, then one attribute of the last module."""
    parts = name.split(".")
    here = ROOT / parts[0]
    for part in parts[1:]:
        if (here / part / "__init__.py").is_file():
            here = here / part
            continue
        module = here / f"{part}.py"
        if module.is_file():
            here = module
            continue
        owner = here if here.suffix == ".py" else here / "__init__.py"
        if _defines(owner, part):
            return None
        if here.suffix != ".py":  # neither a module nor an attribute of the package
            return str(module.relative_to(ROOT))
        return f"{owner.relative_to(ROOT)}:{part}"
    return None


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def broken_references(document: Path, text: str | None = None) -> list[str]:
    """Every path, dotted module name and relative link of ``document`` that does not exist
    as ``document: reference``."""
    text = document.read_text(encoding="utf-8") if text is None else text
    where = document.relative_to(ROOT)
    broken = [
        f"{where}: {path}" for path in sorted(named_files(text)) if not (ROOT / path).exists()
    ]
    for name in sorted(set(_DOTTED.findall(text))):
        missing = dotted_missing(name)
        if missing is not None:
            broken.append(f"{where}: {name} ({missing} missing)")
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (document.parent / file) if file else document
        if not path.exists():
            broken.append(f"{where}: link {target}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{where}: link {target} (no such heading)")
    return broken


def test_every_path_a_document_names_exists():
    broken = [ref for document in DOCUMENTS for ref in broken_references(document)]
    assert broken == []


def test_the_contributors_page_names_the_four_files_of_a_metric():
    text = (ROOT / "docs" / "contributing.md").read_text(encoding="utf-8")
    metric = section_of(text, "## A new metric")
    for path in (
        "stepsize_lens/_schema.py",  # defined
        "stepsize_lens/recording/metrics.py",  # computed
        "stepsize_lens/run/format.py",  # stored
        "stepsize_lens/plots/facets.py",  # drawn
    ):
        assert f"`{path}`" in metric
    for heading in ("## A new finding", "## A new optimizer family", "## A new integration"):
        assert named_files(section_of(text, heading)), heading
    assert broken_references(ROOT / "docs" / "contributing.md") == []


def section_of(text: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of its level."""
    level = heading.split(" ")[0]
    match = re.search(
        rf"^{re.escape(heading)}.*?(?=^{level} |\Z)", text, flags=re.MULTILINE | re.DOTALL
    )
    assert match, heading
    return match.group(0)


def test_the_reference_check_notices_what_is_missing():
    readme = ROOT / "README.md"
    text = (
        "`stepsize_lens/recording/nowhere.py`, `tests/test_nowhere.py`, `benchmarks/gone.py`,"
        " `docs/gone.md`, `stepsize_lens.recording.nowhere`, `stepsize_lens.run.no_such_name`,"
        " [a](docs/design.md#no-such-heading), [b](docs/gone.md),"
        " `stepsize_lens/recording/schedules.py`, `stepsize_lens.recording.lens.attach`,"
        " [c](docs/design.md#34-how-it-is-computed)"
    )
    broken = broken_references(readme, text)
    assert len(broken) == 8, broken
    assert not any("schedules" in ref or "lens.attach" in ref or "#34-" in ref for ref in broken)
