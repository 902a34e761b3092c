"""Names from a run file shown safely: in the terminal, in rich markup, in markdown. A leaf module.

Labels, tensor names, scalar names, paths and error messages come from files that anyone may
have written. Shown raw, an ESC sequence in a label can retitle the terminal window or clear
the screen, and a ``<script>`` in a tensor name runs when a markdown viewer renders
``report.md``. Every view passes such text through one of these:

- `terminal_text`: every control character (Unicode category Cc: C0, DEL, C1), every lone
  surrogate (category Cs: a str from a file may hold one; printing it raises), the line and
  paragraph separators and the bidirectional overrides (U+202A–U+202E, U+2066–U+2069: they
  reorder what the reader sees) become a visible escape: ESC → ``\\x1b``, U+202E → ``\\u202e``.
  Printable text, non-ASCII letters included, is unchanged.
- `one_line`: `terminal_text` of the text with its whitespace runs collapsed to one space, cut
  to ``limit`` characters (the CLI's one-line errors).
- `rich_text`: `terminal_text`, then rich's markup escaped (``[link=...]`` would become a
  terminal hyperlink), for strings rich renders as markup (table cells, titles).
- `markdown_text`: `terminal_text`, then ``&``, ``<``, ``>`` as HTML entities and the markdown
  specials ``\\ ` * [ ] ~`` (and ``_`` at a word's edge) backslash-escaped, so the rendered
  page shows the name as it is and no tag, link or emphasis comes from it (``|`` is left to
  the table renderer, which escapes it in cells).
- `json_text`: a JSON document with the characters `terminal_text` escapes (JSON itself
  escapes only C0) written as ``\\uXXXX``: the same JSON value, safe to print.
- `map_strings`: applies one of these to every string inside a value (dataclasses, lists,
  tuples, dicts; other values unchanged), e.g. to a whole report document.
"""

from __future__ import annotations

import dataclasses
import html
import re
import unicodedata
from collections.abc import Callable
from typing import Any

# shown as escapes besides category Cc: line / paragraph separators, bidirectional controls
_INVISIBLE = {0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs") or ord(char) in _INVISIBLE


def terminal_text(text: str) -> str:
    """``text`` with every control, separator and bidi-override character written as a
    visible escape (``\\x1b``, ``\\u202e``); everything else unchanged."""
    text = str(text)
    if text.isprintable():  # the common case: nothing to replace
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


def one_line(text: str, limit: int | None = 400) -> str:
    """`terminal_text` on one line: whitespace runs become one space; longer than ``limit``
    characters, it is cut and ends in "…"."""
    line = terminal_text(" ".join(str(text).split()))
    if limit is not None and len(line) > limit:
        line = line[: limit - 1] + "…"
    return line


def rich_text(text: str) -> str:
    """`terminal_text`, then rich's markup escaped: for strings rich renders as markup."""
    from rich.markup import escape

    return escape(terminal_text(text))


def markdown_text(text: str) -> str:
    """`terminal_text` with HTML (``& < >``) and markdown specials escaped: safe anywhere in a
    markdown line (in a table cell once ``|`` is escaped too), rendered as the original text."""
    escaped = html.escape(terminal_text(text), quote=False)
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), escaped)


def json_text(text: str) -> str:
    """JSON text with every character `terminal_text` would escape as a ``\\uXXXX`` escape
    (they can only stand inside JSON strings, so the value is the same)."""
    if text.isprintable():
        return text
    return "".join(f"\\u{ord(c):04x}" if _unsafe(c) and c not in "\n\r\t " else c for c in text)


def map_strings(value: Any, clean: Callable[[str], str]) -> Any:
    """``value`` with ``clean`` applied to every string in it (dataclass fields, list, tuple
    and dict items, dict keys); other values are returned as they are."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [map_strings(item, clean) for item in value]
    if isinstance(value, tuple):
        return tuple(map_strings(item, clean) for item in value)
    if isinstance(value, dict):
        return {map_strings(k, clean): map_strings(v, clean) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: map_strings(getattr(value, f.name), clean)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value
