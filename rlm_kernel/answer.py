"""How a run's answer looks in a notebook: Markdown when it is Markdown, plain text that keeps its
lines otherwise, and a `SUBMIT` dict as a field table whose long values are folded.

Every bundle has a `text/plain` part that reads well where nothing richer renders (a terminal,
nbviewer without HTML, a diff of the notebook).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

__all__ = ["answer_bundle", "looks_like_markdown"]

Bundle = dict[str, Any]
SHOWN_CHARS = 100_000
"""An answer longer than this is shown as its head and tail (the whole one is in the result)."""
FOLD_CHARS = 160  # a structured field value (list, dict) whose JSON is longer is folded
FOLD_TEXT_CHARS = 600  # a text field longer than this, or of more lines than the next, is folded
FOLD_TEXT_LINES = 8
FOLD_MAX = 50_000  # characters of one folded value shown when it is opened
_PLAIN_WIDTH = 100  # characters of a field's value on its line of the text table
_CELL = ' style="text-align: left; vertical-align: top"'

_MARKDOWN = re.compile(
    r"^ {0,3}#{1,6}\s+\S"  # heading
    r"|^\s*(?:[-*+]|\d{1,3}[.)])\s+\S"  # list item
    r"|^ {0,3}>\s?\S"  # block quote
    r"|^ {0,3}(?:```|~~~)"  # fenced code
    r"|^\s*\|.*\|\s*$"  # table row
    r"|\*\*[^*\n]+\*\*"  # strong emphasis (not __x__: plain text names __init__.py)
    r"|(?:^|[\s(])\*[^*\s](?:[^*\n]*[^*\s])?\*(?=[\s.,;:!?)]|$)"  # *emphasis*
    r"|`[^`\n]+`"  # inline code
    r"|\[[^\]\n]+\]\([^)\s]+\)",  # link
    re.M,
)


def looks_like_markdown(text: str) -> bool:
    """Whether an answer uses Markdown (headings, lists, emphasis, code, links, tables, quotes)."""
    return _MARKDOWN.search(text) is not None


_BLOCK = re.compile(r" {0,3}(#{1,6}\s|[-*+]\s|\d{1,3}[.)]\s|>|```|~~~|\||[-*_=]{3,}\s*$)")


def _hard_breaks(text: str) -> str:
    """Markdown whose single line breaks inside a paragraph stay line breaks (two trailing
    spaces); code, headings, list items, quotes and tables are left as they are."""
    lines = text.split("\n")
    out, fenced = [], False
    for i, line in enumerate(lines):
        if re.match(r" {0,3}(```|~~~)", line):
            fenced = not fenced
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prose = line.strip() and not line.startswith(("    ", "\t")) and not line.endswith("  ")
        heading_or_row = re.match(r" {0,3}(#{1,6}\s|\|)", line)
        if prose and not fenced and not heading_or_row and nxt.strip() and not _BLOCK.match(nxt):
            line += "  "
        out.append(line)
    return "\n".join(out)


def _shorten(text: str, limit: int, where: str) -> str:
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    tail = limit - head
    return (
        f"{text[:head]}\n\n[... {len(text) - head - tail:,} more characters: the answer has "
        f"{len(text):,}; all of it is {where} ...]\n\n{text[len(text) - tail :]}"
    )


def answer_bundle(answer: Any, status: str = "done", error: str | None = None) -> Bundle:
    """The final answer: Markdown, line-keeping plain text, or a SUBMIT dict as a field table."""
    if isinstance(answer, dict):
        return _fields_bundle(answer)
    if answer is None or answer == "":
        why = f": {error}" if error else ""
        return {
            "text/markdown": f"*(no answer — the run ended with status {status}{html.escape(why)})*",
            "text/plain": f"(no answer — the run ended with status {status}{why})",
        }
    text = _shorten(str(answer), SHOWN_CHARS, "in the result's `.answer` and in the run record")
    if looks_like_markdown(text):
        return {"text/markdown": _hard_breaks(text), "text/plain": text}
    return {"text/plain": text}  # every frontend shows text/plain with its line breaks


# -- SUBMIT fields --------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _one_line(text: str, room: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= room else text[: room - 1].rstrip() + "…"


def _preview(value: Any) -> str:
    """What a folded value shows while closed."""
    if isinstance(value, str):
        return f"{_one_line(value, 90)} ({len(value):,} characters)"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} items: {_one_line(_compact(value), 90)}"
    if isinstance(value, dict):
        return f"{len(value)} keys: {_one_line(_compact(value), 90)}"
    return _one_line(_compact(value), 90)


def _text_html(text: str) -> str:
    if len(text) > FOLD_MAX:
        text = text[:FOLD_MAX] + f"… [{len(text) - FOLD_MAX:,} more characters in the result]"
    return f'<div style="white-space: pre-wrap">{html.escape(text)}</div>'


def _records_html(rows: list[dict[str, Any]]) -> str | None:
    """A list of dicts with a few shared keys as a table (None when it is not that shape)."""
    keys: list[str] = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(str(k))
    if not rows or len(keys) > 12:
        return None
    cells = []
    size = 0
    for row in rows:
        tds = []
        for k in keys:
            v = row.get(k, "")
            s = v if isinstance(v, str) else _compact(v)
            size += len(s)
            tds.append(f"<td{_CELL}>{html.escape(s)}</td>")
        cells.append("<tr>" + "".join(tds) + "</tr>")
        if size > FOLD_MAX:
            cells.append(
                f"<tr><td colspan={len(keys)}>… {len(rows) - len(cells)} more rows</td></tr>"
            )
            break
    head = "".join(f"<th{_CELL}>{html.escape(k)}</th>" for k in keys)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>"


def _value_html(value: Any) -> str:
    if isinstance(value, str):
        short = len(value) <= FOLD_TEXT_CHARS and value.count("\n") < FOLD_TEXT_LINES
        if short:
            return _text_html(value)
        body = _text_html(value)
    else:
        text = _compact(value)
        if len(text) <= FOLD_CHARS:
            return f"<code>{html.escape(text)}</code>"
        table = None
        if isinstance(value, list) and all(isinstance(r, dict) for r in value):
            table = _records_html(value)
        if table is None:
            pretty = json.dumps(value, ensure_ascii=False, indent=1, default=str)
            if len(pretty) > FOLD_MAX:
                pretty = pretty[:FOLD_MAX] + "\n… (the whole value is in the result)"
            table = f"<pre>{html.escape(pretty)}</pre>"
        body = table
    summary = f'<summary style="cursor: pointer">{html.escape(_preview(value))}</summary>'
    return f"<details>{summary}{body}</details>"


def _value_plain(value: Any) -> str:
    if isinstance(value, str):
        first = value.strip().split("\n", 1)[0]
        if len(value) <= _PLAIN_WIDTH and "\n" not in value.strip():
            return value
        return f"{_one_line(first, _PLAIN_WIDTH - 20)} ({len(value):,} characters)"
    text = _compact(value)
    if len(text) <= _PLAIN_WIDTH:
        return text
    count = f"[{len(value)} items] " if isinstance(value, (list, tuple, dict)) else ""
    return count + _one_line(text, _PLAIN_WIDTH - len(count))


def _fields_bundle(fields: dict[str, Any]) -> Bundle:
    """A SUBMIT dict: an HTML field table (long values folded) and an aligned text table."""
    rows = "".join(
        f"<tr><td{_CELL}><code>{html.escape(str(k))}</code></td><td{_CELL}>{_value_html(v)}</td></tr>"
        for k, v in fields.items()
    )
    table = (
        f'<table class="rlm-fields"><thead><tr><th{_CELL}>field</th><th{_CELL}>value</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )
    width = max((len(str(k)) for k in fields), default=0)
    plain = "\n".join(f"{k!s:<{width}}  {_value_plain(v)}" for k, v in fields.items())
    return {"text/html": table, "text/plain": plain or "(no fields)"}
