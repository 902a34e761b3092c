"""One self-contained HTML page: inline CSS, figures embedded as base64 PNG, no script, no
external resource, so it opens the same in any browser, offline, as a mail attachment."""

from __future__ import annotations

import base64
from html import escape

from stepsize_lens.report.document import (
    Document,
    Figures,
    Findings,
    Header,
    Table,
    Verdict,
    advice_lines,
    evidence_text,
)

CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --bg: #ffffff; --soft: #f6f7f9;
  --critical: #b3261e; --warning: #a15c00; --info: #0b57d0; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px 32px 48px; color: var(--fg);
  background: var(--bg); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 16px; }
h2 { font-size: 17px; margin: 32px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px;
  background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
  margin: 0; }
dl.header dt { font-weight: 600; color: var(--muted); }
dl.header dd { margin: 0; overflow-wrap: anywhere; }
.finding { border-left: 4px solid var(--muted); background: var(--soft); border-radius: 4px;
  padding: 8px 12px; margin: 8px 0; }
.finding.critical { border-color: var(--critical); }
.finding.warning { border-color: var(--warning); }
.finding.info { border-color: var(--info); }
.badge { display: inline-block; font-size: 11px; font-weight: 700; letter-spacing: .04em;
  color: #fff; border-radius: 3px; padding: 1px 6px; margin-right: 8px; vertical-align: 1px; }
.critical .badge { background: var(--critical); }
.warning .badge { background: var(--warning); }
.info .badge { background: var(--info); }
.finding .title { font-weight: 600; }
.finding .detail { color: var(--muted); font-size: 13px; margin-top: 2px;
  overflow-wrap: anywhere; }
.finding .suggestion { margin-top: 4px; }
.ok { color: #146c2e; }
.verdict { border: 1px solid var(--line); border-left: 6px solid var(--warning);
  border-radius: 6px; padding: 10px 14px; margin: 0 0 16px; font-size: 15px; }
.verdict.healthy { border-left-color: #146c2e; }
.finding .advice { margin-top: 2px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--soft); text-align: right; font-weight: 600; }
td { text-align: right; font-variant-numeric: tabular-nums; }
th.label, td.label { text-align: left; }
td.label { white-space: normal; min-width: 8em; }
tbody tr:hover { background: #eef3fd; }
p.note { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _findings(block: Findings) -> list[str]:
    out = [f"<h2>{escape(block.title)} ({len(block.items)})</h2>"]
    if not block.items:
        out.append('<p class="ok">Nothing looks off.</p>')
    for f in block.items:
        severity = escape(f["severity"])
        out.append(f'<div class="finding {severity}">')
        out.append(f'<span class="badge">{severity.upper()}</span>')
        out.append(f'<span class="title">{escape(f["title"])}</span>')
        evidence = evidence_text(f["evidence"])
        if evidence:
            out.append(f'<div class="detail">evidence: {escape(evidence)}</div>')
        if f["tensors"]:
            total = f["evidence"].get("tensor_count") or len(f["tensors"])
            names = ", ".join(f["tensors"])
            more = f" (+{total - len(f['tensors'])} more)" if total > len(f["tensors"]) else ""
            out.append(f'<div class="detail">tensors: <code>{escape(names)}</code>{more}</div>')
        out.append(f'<div class="suggestion">→ {escape(f["suggestion"])}</div>')
        out += [f'<div class="advice">advice: {escape(a)}</div>' for a in advice_lines(f)]
        out.append("</div>")
    return out


def _table(block: Table) -> list[str]:
    def cls(i: int) -> str:
        return ' class="label"' if i < block.text_columns else ""

    out = [f"<h2>{escape(block.title)}</h2>", '<div class="scroll"><table>', "<thead><tr>"]
    out += [f"<th{cls(i)}>{escape(c)}</th>" for i, c in enumerate(block.columns)]
    out.append("</tr></thead><tbody>")
    for row in block.rows:
        out.append(
            "<tr>" + "".join(f"<td{cls(i)}>{escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        )
    out.append("</tbody></table></div>")
    if block.note:
        out.append(f'<p class="note">{escape(block.note)}</p>')
    return out


def _figures(block: Figures) -> list[str]:
    out = ["<h2>Figures</h2>"]
    for ref in block.items:
        data = base64.b64encode(ref.path.read_bytes()).decode("ascii")
        out.append(
            f'<figure id="fig-{escape(ref.name)}"><img alt="{escape(ref.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(ref.caption)}</figcaption></figure>'
        )
    return out


def html_document(doc: Document, footer: str = "") -> str:
    """The page as a string (UTF-8, no external references)."""
    body = [f"<h1>{escape(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Verdict):
            state = "verdict healthy" if block.healthy else "verdict"
            body.append(f'<p class="{state}" id="verdict">{escape(block.text)}</p>')
        elif isinstance(block, Header):
            body.append('<dl class="header">')
            body += [f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in block.items]
            body.append("</dl>")
        elif isinstance(block, Findings):
            body += _findings(block)
        elif isinstance(block, Table):
            body += _table(block)
        elif isinstance(block, Figures):
            body += _figures(block)
    if footer:
        body.append(f"<footer>{escape(footer)}</footer>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(doc.title)}</title>",
            f"<style>{CSS}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )
