"""HTML pages: the one writer that turns any lossviz figure into a self-contained viewer page (plotly.js
inlined, in-page controls, no server, no network), and the gallery that indexes a folder of pages.

3-D pages get controls (ln/linear z, clip radius, contours, reset camera, keyboard shortcuts) run by the
viewer script `assets/viewer.js`, which recomputes z in the browser from the raw loss kept in each trace's
`customdata` and reads its settings from `layout.meta["lossviz"]` (see `lossviz.figures`). Page text that
comes from params or files is HTML-escaped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cache
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from lossviz.checkpoints import atomic_write
from lossviz.figures import escape


@cache
def asset(name: str) -> str:
    """A viewer file shipped in lossviz/assets (package data)."""
    return resources.files("lossviz").joinpath("assets", name).read_text(encoding="utf-8")


# -- pages -----------------------------------------------------------------------------------------------

CONTROLS_HTML = """
<div id="controls">
  <button id="toggle-z" type="button" title="switch ln/linear z (L)">z: <span id="z-scale-name"></span></button>
  <label>clip radius <input id="clip-radius" type="range"> <output id="clip-radius-value"></output></label>
  <label><input id="show-contours" type="checkbox"> projected contours</label>
  <button id="reset-camera" type="button" title="reset camera (R)">reset camera</button>
</div>
"""

SHORTCUTS_HTML = """
<div id="shortcuts">Keyboard: <kbd>L</kbd> ln/linear z · <kbd>[</kbd> <kbd>]</kbd> shrink/grow clip radius ·
<kbd>A</kbd> show all points · <kbd>C</kbd> contours on/off · <kbd>R</kbd> reset camera ·
drag to rotate, scroll to zoom (every scene follows).</div>
"""



def _json_for_script(value: Any) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' escaped so no text can close the element."""
    text = pio.to_json(value, validate=False) if isinstance(value, go.Figure) else json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _document(title: str, kind: str, body: str, *, heading: bool = True) -> str:
    """The one page shell: every page (figures and gallery) is written through here. Figure pages skip the
    heading: the figure shows its own title."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"lossviz\">\n<meta name=\"lossviz-kind\" content=\"{escape(kind)}\">\n"
        f"<title>{escape(title)}</title>\n<style>{asset('viewer.css')}</style>\n</head>\n<body>\n"
        + (f"<header><h1>{escape(title)}</h1></header>\n" if heading else "")
        + f"{body}\n</body>\n</html>\n"
    )


def page_html(figure: go.Figure, *, title: str | None = None) -> str:
    """A self-contained HTML page showing `figure`; 3-D figures get the viewer controls."""
    settings = (figure.layout.meta or {}).get("lossviz", {}) if isinstance(figure.layout.meta, dict) else {}
    title = title if title is not None else settings.get("title") or "lossviz figure"
    has_surfaces = any(trace.type == "surface" for trace in figure.data)
    body = (
        (CONTROLS_HTML if has_surfaces else "")
        + "<div id=\"plot\"></div>\n"
        + (SHORTCUTS_HTML if has_surfaces else "")
        + f"<script>{get_plotlyjs()}</script>\n"
        + f"<script type=\"application/json\" id=\"lossviz-figure\">{_json_for_script(figure)}</script>\n"
        + f"<script>{asset('viewer.js')}</script>"
    )
    return _document(title, settings.get("kind", "figure"), body, heading=False)


def write_html(figure: go.Figure, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write `figure` as one self-contained HTML file (plotly.js inlined, no network) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = page_html(figure, title=title).encode("utf-8")
    atomic_write(path, lambda stream: stream.write(text))  # a full disk or a kill never leaves half a page
    return path


# -- gallery ---------------------------------------------------------------------------------------------
class _HeadReader(HTMLParser):
    """Reads a page's <title> and lossviz-kind <meta> from its head."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.kind, self._in_title = "", "", False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "meta" and attributes.get("name") == "lossviz-kind":
            self.kind = attributes.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def page_info(path: Path) -> tuple[str, str]:
    """(kind, title) of an HTML page, from the start of its head (plotly.js comes after it)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(64 * 1024)
    reader = _HeadReader()
    reader.feed(head.split("</head>")[0])
    return reader.kind or "html", reader.title.strip()


def write_gallery(directory: str | os.PathLike, out: str | os.PathLike | None = None, *,
                  title: str | None = None, summary: Sequence[Sequence[str]] = ()) -> Path:
    """Write an index page linking every .html file under `directory` (kind, title, size) and return it.
    `summary` rows (claim, the paper's figure, ours) make a table above the links."""
    directory = Path(directory)
    out = Path(out) if out is not None else directory / "index.html"
    rows = []
    for page in sorted(directory.rglob("*.html")):
        if page.resolve() == out.resolve():
            continue
        kind, page_title = page_info(page)
        href = quote(os.path.relpath(page, out.parent).replace(os.sep, "/"))
        rows.append(f"<tr><td><a href=\"{escape(href)}\">{escape(page.relative_to(directory))}</a></td>"
                    f"<td>{escape(kind)}</td><td>{escape(page_title)}</td>"
                    f"<td>{page.stat().st_size / 1e6:.1f} MB</td></tr>")
    claims = "".join(f"<tr>{''.join(f'<td>{escape(cell)}</td>' for cell in row)}</tr>\n" for row in summary)
    body = ("<table class=\"gallery claims\"><thead><tr><th>claim</th><th>the paper</th><th>measured here</th>"
            f"</tr></thead><tbody>\n{claims}</tbody></table>\n" if summary else "")
    body += ("<table class=\"gallery\"><thead><tr><th>figure</th><th>kind</th><th>title</th><th>size</th>"
            "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
            + ("" if rows else "<p>No figures here yet.</p>"))
    out.parent.mkdir(parents=True, exist_ok=True)
    text = _document(title or f"Figures in {directory.name or directory}", "gallery", body).encode("utf-8")
    atomic_write(out, lambda stream: stream.write(text))
    return out
