"""HTML building blocks for the report: escaping, tables, notes, and the one self-contained page.

Everything is inline (CSS here, figures as data: URIs), so the file can be mailed or archived and
opens with no network at all.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff; --accent:#2f5bd3;
        --ok:#137a3a; --ok-bg:#e3f5e9; --bad:#b3261e; --bad-bg:#fbe7e6; --na:#6b7280; --na-bg:#eef0f3; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: #1d2330; color: #fff; padding: 28px 0 20px; }
header .wrap, main { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; }
header p { margin: 0; color: #c4cad6; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 18px; }
.tile { background: rgba(255,255,255,.08); border-radius: 10px; padding: 10px 16px; min-width: 150px; }
.tile b { display: block; font-size: 20px; }
.tile span { color: #c4cad6; font-size: 13px; }
nav { position: sticky; top: 0; background: var(--card); border-bottom: 1px solid var(--line); z-index: 2; }
nav .wrap { max-width: 1120px; margin: 0 auto; padding: 8px 24px; display: flex; flex-wrap: wrap; gap: 6px; }
nav a { color: var(--accent); text-decoration: none; padding: 4px 10px; border-radius: 999px; font-size: 14px; }
nav a:hover { background: #eaf0ff; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 20px 24px;
          margin: 20px 0; }
section h2 { margin: 0 0 12px; font-size: 19px; }
section h3 { margin: 18px 0 8px; font-size: 15px; color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
.scroll { overflow-x: auto; }
#parity table { font-size: 13px; }
#parity td, #parity th { padding: 5px 7px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 220px; background: none; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.note { background: #fff8e6; border: 1px solid #f1dfa8; border-radius: 8px; padding: 10px 14px; color: #6b5200; }
.muted { color: var(--muted); font-size: 13px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12.5px; font-weight: 600; }
.badge.ok { color: var(--ok); background: var(--ok-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.badge.na { color: var(--na); background: var(--na-bg); }
figure { margin: 8px 0; text-align: center; }
figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; }
.bar { background: #e8edf8; border-radius: 4px; height: 10px; min-width: 120px; }
.bar i { display: block; height: 10px; border-radius: 4px; background: var(--accent); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr)); gap: 12px; }
.gallery figure { border: 1px solid var(--line); border-radius: 10px; padding: 8px; margin: 0; }
.gallery img { width: 96px; height: 96px; image-rendering: pixelated; border-radius: 4px; }
.gallery .true { color: var(--ok); } .gallery .pred { color: var(--bad); }
details summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
footer { max-width: 1120px; margin: 0 auto 40px; padding: 0 24px; color: var(--muted); font-size: 13px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str  # already-escaped HTML


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def badge(verdict: str) -> str:
    kind = {"pass": "ok", "fail": "bad"}.get(verdict.split()[0].lower(), "na")
    return f'<span class="badge {kind}">{esc(verdict)}</span>'


def figure(data_uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri}" alt="{esc(alt)}">{cap}</figure>'


def key_values(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<table class="kv">{body}</table>'


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (),
          raw: Iterable[int] = ()) -> str:
    """``numeric`` columns align right; ``raw`` columns hold HTML built by these helpers (not escaped)."""
    numeric, raw = set(numeric), set(raw)
    head = "".join(f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            content = str(cell) if i in raw else esc("" if cell is None else cell)
            cells.append(f'<td class="num">{content}</td>' if i in numeric else f"<td>{content}</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table></div>'


def bar(fraction: float) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return f'<div class="bar"><i style="width:{width:.1f}%"></i></div>'


def page(title: str, subtitle: str, tiles: Sequence[tuple[str, str]], sections: Sequence[Section],
         footer: str) -> str:
    tile_html = "".join(f'<div class="tile"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in tiles)
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}" data-section="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><div class="wrap"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>'
        f'<div class="tiles">{tile_html}</div></div></header>'
        f'<nav><div class="wrap">{nav}</div></nav><main>{body}</main>'
        f"<footer>{esc(footer)}</footer></body></html>\n"
    )
