"""The terminal view (rich) and the markdown view of a report `Document`, and the two table
renderers every table of the package goes through (`markdown_table`, `rich_table`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stepsize_lens._sanitize import map_strings, markdown_text, rich_text, terminal_text
from stepsize_lens.report.document import (
    SEVERITY_COLORS,
    Document,
    Figures,
    Findings,
    Header,
    Table,
    Verdict,
    advice_lines,
    evidence_text,
)
from stepsize_lens.table_fit import print_table, print_whole

MAX_TENSORS_SHOWN = 6


def _tensors(names: list[str], total: int | None) -> str:
    shown = ", ".join(names[:MAX_TENSORS_SHOWN])
    more = (total or len(names)) - min(len(names), MAX_TENSORS_SHOWN)
    return shown + (f" (+{more} more)" if more > 0 else "")


def print_document(doc: Document, console: Any) -> None:
    """Render ``doc`` on a rich console: a header panel, coloured findings, tables. Every
    string is shown without control characters, and as text, not rich markup
    (`stepsize_lens._sanitize`)."""
    from rich import box
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table as RichTable
    from rich.text import Text

    doc = map_strings(doc, terminal_text)
    console.print()
    for block in doc.blocks:
        if isinstance(block, Verdict):
            style = "bold green" if block.healthy else "bold yellow"
            console.print(Text(block.text, style=style))
        elif isinstance(block, Header):
            grid = RichTable.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            for key, value in block.items:
                grid.add_row(Text(key), Text(value, overflow="fold"))
            header = Panel(grid, title=Text(doc.title, style="bold"), title_align="left")
            print_whole(console, header)
        elif isinstance(block, Findings):
            console.print(f"\n[bold]{escape(block.title)}[/bold] ({len(block.items)})")
            if not block.items:
                console.print("  [green]Nothing looks off.[/green]")
            for f in block.items:
                color = SEVERITY_COLORS.get(f["severity"], "white")
                line = Text("  ● ", style=color)
                line.append(f"{f['severity'].upper():<8} ", style=f"bold {color}")
                line.append(f["title"])
                console.print(line)
                evidence = evidence_text(f["evidence"])
                if evidence:
                    console.print(Text(f"      evidence: {evidence}", style="dim"))
                if f["tensors"]:
                    total = f["evidence"].get("tensor_count")
                    console.print(
                        Text(f"      tensors: {_tensors(f['tensors'], total)}", style="dim")
                    )
                console.print(Text(f"      → {f['suggestion']}", style="italic"))
                for line in advice_lines(f):
                    console.print(Text(f"      advice: {line}"))
        elif isinstance(block, Table):
            table = RichTable(
                title=Text(block.title),
                title_justify="left",
                title_style="bold",
                box=box.SIMPLE_HEAD,
                pad_edge=False,
            )
            keep = _terminal_columns(block)
            for i in keep:
                label = i < block.text_columns
                header = block.columns[i] if label else block.columns[i].replace(" ", "\n")
                widest = max((len(row[i]) for row in block.rows), default=1)
                table.add_column(
                    Text(header),
                    justify="left" if label else "right",
                    no_wrap=True,
                    min_width=widest if (i == 0 or not label) else None,
                )
            for row in block.rows:
                table.add_row(*(Text(row[i]) for i in keep))
            console.print()
            print_table(console, table, key_columns=block.text_columns)
            if block.note:
                console.print(Text(block.note, style="dim"))
        elif isinstance(block, Figures):
            where = f" in {escape(str(block.folder))}" if block.folder is not None else ""
            names = ", ".join(escape(f.path.name) for f in block.items)
            console.print(f"\n[bold]Figures[/bold]{where}: {names}")


def _terminal_columns(block: Table) -> list[int]:
    """Column indices to show: every column except one that is "–" in every row (a narrow
    terminal splits the table instead of dropping columns: `table_fit.print_table`)."""
    return [
        i
        for i in range(len(block.columns))
        if i < block.text_columns or not block.rows or any(row[i] != "–" for row in block.rows)
    ]


def _md_cell(text: str) -> str:
    """A cell's text: on one line, ``|`` escaped, control characters shown as escapes."""
    return terminal_text(text.replace("\n", " ")).replace("|", "\\|")


def markdown_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
) -> str:
    """A GitHub-flavoured markdown table, newline-terminated: the first ``text_columns``
    columns left-aligned (labels), the others right-aligned (numbers); ``|`` in cells escaped,
    control characters shown as escapes. Cells may hold markdown on purpose (code spans):
    escape names from a file with `stepsize_lens._sanitize.markdown_text` first."""
    aligns = [":--" if i < text_columns else "--:" for i in range(len(columns))]
    lines = [
        "| " + " | ".join(_md_cell(c) for c in columns) + " |",
        "| " + " | ".join(aligns) + " |",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str | None = None,
    caption: str | None = None,
    text_columns: int = 1,
) -> Any:
    """The same table as a `rich.table.Table` (labels left, numbers right; a number never
    wraps: print it with `table_fit.print_table`, which splits or stacks a table too wide);
    every string shown as text: no control character, no rich markup
    (`stepsize_lens._sanitize.rich_text`)."""
    from rich.table import Table as RichTable

    def clean(text: str | None) -> str | None:
        return None if text is None else rich_text(text)

    table = RichTable(title=clean(title), caption=clean(caption))
    for i, name in enumerate(columns):
        label = i < text_columns
        table.add_column(clean(name), justify="left" if label else "right", no_wrap=not label)
    for row in rows:
        table.add_row(*(clean(cell) for cell in row))
    return table


def markdown_document(doc: Document, relative_to: Path | None = None) -> str:
    """GitHub-flavoured markdown; figures linked relative to ``relative_to`` (the folder the
    markdown file is written to). Every string from the document is escaped
    (`stepsize_lens._sanitize.markdown_text`): no raw HTML, link or control character."""
    doc = map_strings(doc, markdown_text)
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Verdict):
            lines += [f"**{_md_cell(block.text)}**", ""]
        elif isinstance(block, Header):
            lines += [f"- **{key}**: {_md_cell(value)}" for key, value in block.items] + [""]
        elif isinstance(block, Findings):
            lines += [f"## {block.title} ({len(block.items)})", ""]
            if not block.items:
                lines += ["Nothing looks off.", ""]
            for f in block.items:
                lines.append(f"- **{f['severity'].upper()}** ({f['kind']}): {f['title']}")
                evidence = evidence_text(f["evidence"])
                if evidence:
                    lines.append(f"  - evidence: {evidence}")
                if f["tensors"]:
                    total = f["evidence"].get("tensor_count")
                    # escaped text, not a code span (where a backslash escape would show)
                    lines.append(f"  - tensors: {_tensors(f['tensors'], total)}")
                lines.append(f"  - suggestion: {f['suggestion']}")
                lines += [f"  - advice: {line}" for line in advice_lines(f)]
            lines.append("")
        elif isinstance(block, Table):
            lines += [f"## {block.title}", ""]
            lines += markdown_table(block.columns, block.rows, block.text_columns).splitlines()
            lines += ["", f"*{block.note}*" if block.note else "", ""]
        elif isinstance(block, Figures):
            lines += ["## Figures", ""]
            for ref in block.items:
                target = ref.path
                if relative_to is not None:
                    target = Path(os.path.relpath(ref.path, relative_to))
                link = quote(target.as_posix())
                lines += [f"![{ref.name}]({link})", "", f"*{ref.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
