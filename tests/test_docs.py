"""docs/design.md stays the project's reference: its nine numbered sections are there, in order
(code cites them as "docs/design.md §N"), §3 defines every metric of the catalog and nothing
else, and §8 names every key of the run file, every group field and every params column."""

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
