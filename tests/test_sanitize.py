"""Names from a file shown safely: no control character in the terminal, no markup in rich,
no HTML or markdown from a name in markdown."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stepsize_lens._sanitize import (
    json_text,
    map_strings,
    markdown_text,
    one_line,
    rich_text,
    terminal_text,
)

HOSTILE = "a\x1b]0;title\x07b\x1b[2Jc\x9b31m\x7f\u202ed\u2028e\ud800"


def test_terminal_text_escapes_every_control_character_visibly():
    shown = terminal_text(HOSTILE)
    assert shown == "a\\x1b]0;title\\x07b\\x1b[2Jc\\x9b31m\\x7f\\u202ed\\u2028e\\ud800"
    assert all(c.isprintable() for c in shown)
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        assert terminal_text(chr(code)).isprintable()


def test_terminal_text_keeps_printable_text_as_it_is():
    for text in ("conv1.weight", "blocks.0.attn[q]", "‖w‖ η/‖w‖² δ", "模型.权重", "a b", "😀‍🔥"):
        assert terminal_text(text) == text


def test_one_line_collapses_whitespace_and_cuts():
    assert one_line("a\n  b\tc\r\nd") == "a b c d"
    assert one_line("x" * 50, limit=10) == "x" * 9 + "…"
    assert "\x1b" not in one_line("\x1b[2J\nboom")


def test_rich_text_is_not_markup():
    from rich.console import Console
    from rich.text import Text

    console = Console(width=200, force_terminal=True, color_system="truecolor")
    with console.capture() as captured:
        console.print(rich_text("[link=https://evil.example]x[/link] [bold]b[/bold] [0]"))
    out = captured.get()
    assert "\x1b]8;" not in out  # no OSC 8 hyperlink
    assert "[link=https://evil.example]x[/link] [bold]b[/bold] [0]" in Text.from_ansi(out).plain


def test_markdown_text_escapes_html_and_markdown():
    name = "<script>alert(1)</script><img src=x onerror=alert(2)> *b* [l](javascript:x)"
    text = markdown_text(name)
    assert "<" not in text and ">" not in text
    assert "&lt;script&gt;" in text and "\\*b\\*" in text and "\\[l\\](javascript:x)" in text
    assert markdown_text("&amp; `c` ~s~ \\") == "&amp;amp; \\`c\\` \\~s\\~ \\\\"
    # underscores inside a word never emphasise: tensor names stay readable
    assert markdown_text("layer1.conv_1.weight") == "layer1.conv_1.weight"
    assert markdown_text("_private_") == "\\_private\\_"
    assert markdown_text("a\x1b[2Jb") == "a\\\\x1b\\[2Jb"


def test_markdown_text_renders_back_to_the_name():
    """Through a CommonMark renderer (markdown-it, if installed) the escaped text is the
    original name, and no tag appears."""
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark")
    name = "<img src=x onerror=alert(1)> *x* _y_ [z](w) `q` &amp; a_b \\"
    html = md.renderInline(markdown_text(name))
    assert "<img" not in html and "<em>" not in html and "<a " not in html
    import html as html_module

    assert html_module.unescape(html) == name


def test_json_text_is_the_same_json_and_printable():
    data = {"label": HOSTILE, "n": [1, 2.5, None]}
    text = json.dumps(data, ensure_ascii=False, indent=2)
    safe = json_text(text)
    assert json.loads(safe) == json.loads(text)
    assert all(c.isprintable() or c in "\n" for c in safe)


@dataclass
class Inner:
    name: str
    values: list[str] = field(default_factory=list)
    path: Path = Path("a\x1b.png")
    count: int = 3


def test_map_strings_reaches_every_string():
    value = {"k\x1b": [Inner("x\x1b", ["y\x07"]), ("z\x9b", 1.5)]}
    mapped = map_strings(value, terminal_text)
    assert mapped == {"k\\x1b": [Inner("x\\x1b", ["y\\x07"]), ("z\\x9b", 1.5)]}
    assert mapped["k\\x1b"][0].path == Path("a\x1b.png")  # not a string: left alone
    assert value["k\x1b"][0].name == "x\x1b"  # the input is not changed
