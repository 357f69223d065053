"""HTML pages: the one writer that turns any lossviz figure into a self-contained viewer page (plotly.js
inlined, in-page controls, no server, no network), and the gallery that indexes a folder of pages.

3-D pages get controls (ln/linear z, clip radius, contours, reset camera, keyboard shortcuts) run by the
viewer script `assets/viewer.js`, which recomputes z in the browser from the raw loss kept in each trace's
`customdata` and reads its settings from `layout.meta["lossviz"]` (see `lossviz.figures`). Page text that
comes from params or files is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
drag to rotate, scroll to zoom (every scene follows when you let go) ·
<kbd>Z</kbd> shared/independent z scales (comparisons).</div>
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


PLOTLY_JS = "plotly.min.js"  # the shared copy of plotly.js in a report folder (`plotly_js="shared"`)
PLOTLY_JS_MODES = ("inline", "shared")
SHARED_PLOTLY_TAG = f'<script src="{PLOTLY_JS}"></script>'


def _tables_html(tables: Sequence[dict]) -> str:
    """The page's tables (`lossviz.figures.page_tables`): open ones shown, the others folded in <details>."""
    parts = []
    for table in tables:
        if not table.get("rows"):
            continue
        head = "".join(f"<th>{escape(c)}</th>" for c in ["", *table["columns"]])
        body = "".join(f"<tr><th>{escape(label)}</th>{''.join(f'<td>{escape(v)}</td>' for v in values)}</tr>"
                       for label, values in table["rows"])
        grid = (f"<table class=\"data\" data-table=\"{escape(table['title'])}\"><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")
        if table.get("open"):
            parts.append(f"<section><h2>{escape(table['title'])}</h2>{grid}</section>")
        else:
            parts.append(f"<details><summary>{escape(table['title'])}</summary>{grid}</details>")
    return "\n".join(parts)


def _default_title(figure: go.Figure, settings: dict) -> str:
    """The figure's own title: its lossviz settings, else its layout title (plain text), else its kind."""
    if settings.get("title"):
        return str(settings["title"])
    text = figure.layout.title.text if figure.layout.title is not None else None
    if text:
        return html.unescape(re.sub(r"<[^>]+>", " ", text)).strip()
    return f"lossviz {settings.get('kind', 'figure')}"


def page_html(figure: go.Figure, *, title: str | None = None, plotly_js: str = "inline",
              back: str | None = None) -> str:
    """An HTML page showing `figure`; 3-D figures get the viewer controls. Below the figure: its tables
    (shape metrics, configuration folded away) and static views when the figure carries them
    (`layout.meta["lossviz"]`). `plotly_js`: "inline" (self-contained, the default) or "shared" (a
    `<script src="plotly.min.js">` beside the page, see `write_html`). `back`: the href of a link back
    (e.g. "../index.html")."""
    if plotly_js not in PLOTLY_JS_MODES:
        raise ValueError(f"plotly_js must be one of {PLOTLY_JS_MODES}, got {plotly_js!r}")
    settings = (figure.layout.meta or {}).get("lossviz", {}) if isinstance(figure.layout.meta, dict) else {}
    title = title if title is not None else _default_title(figure, settings)
    has_surfaces = any(trace.type == "surface" for trace in figure.data)
    library = f"<script>{get_plotlyjs()}</script>" if plotly_js == "inline" else SHARED_PLOTLY_TAG
    nav = f"<nav><a id=\"back\" href=\"{escape(back)}\">← all figures</a></nav>\n" if back else ""
    views = "<div id=\"views\"></div>\n" if settings.get("views") else ""
    body = (
        nav
        + (CONTROLS_HTML if has_surfaces else "")
        + "<div id=\"plot\"></div>\n"
        + (SHORTCUTS_HTML if has_surfaces else "")
        + _tables_html(settings.get("tables") or ())
        + views
        + f"{library}\n"
        + f"<script type=\"application/json\" id=\"lossviz-figure\">{_json_for_script(figure)}</script>\n"
        + f"<script>{asset('viewer.js')}</script>"
    )
    return _document(title, settings.get("kind", "figure"), body, heading=False)


def _write_shared_plotly(folder: Path) -> None:
    """plotly.js once per folder, rewritten only when it differs (so the bytes of a report stay the same)."""
    library = get_plotlyjs().encode("utf-8")
    target = folder / PLOTLY_JS
    if target.is_file() and target.stat().st_size == len(library) and target.read_bytes() == library:
        return
    atomic_write(target, lambda stream: stream.write(library))


def write_html(figure: go.Figure, path: str | os.PathLike, *, title: str | None = None, plotly_js: str = "inline",
               back: str | None = None) -> Path:
    """Write `figure` as one HTML page and return its path. By default the page is self-contained (plotly.js
    inlined, no network: what MLflow shows); `plotly_js="shared"` loads plotly.js from a `plotly.min.js`
    written once beside it, for a folder of pages (still offline: 4.8 MB once, not per page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = page_html(figure, title=title, plotly_js=plotly_js, back=back).encode("utf-8")
    if plotly_js == "shared":
        _write_shared_plotly(path.parent)
    atomic_write(path, lambda stream: stream.write(text))  # a full disk or a kill never leaves half a page
    return path


def write_report_page(figure: go.Figure, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """A page in a run's `reports/<stage>/` folder: plotly.js shared by the folder, a link back to the
    report's index (`reports/index.html`). Log `self_contained_copy` of it to MLflow, not the page itself."""
    return write_html(figure, path, title=title, plotly_js="shared", back="../index.html")


def self_contained_html(page: str | os.PathLike) -> str:
    """The text of a page written with `plotly_js="shared"`, plotly.js inlined again (and the link back, which
    leads nowhere outside the report, dropped): what to log to MLflow, whose viewer shows one file alone."""
    text = Path(page).read_text(encoding="utf-8")
    text = re.sub(r'<nav><a id="back" href="[^"]*">[^<]*</a></nav>\n', "", text, count=1)
    return text.replace(SHARED_PLOTLY_TAG, f"<script>{get_plotlyjs()}</script>", 1)


@contextmanager
def self_contained_copies(page_paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Self-contained copies (same file names) of report pages in a temporary folder, e.g. to log to MLflow;
    other files are copied as they are. The folder is removed on exit."""
    with tempfile.TemporaryDirectory(prefix="lossviz-pages-") as folder:
        copies = []
        for index, page in enumerate(page_paths):
            target = Path(folder) / str(index) / Path(page).name
            target.parent.mkdir()
            if Path(page).suffix.lower() == ".html":
                target.write_text(self_contained_html(page), encoding="utf-8")
            else:  # any other artifact logged beside the pages goes as it is
                target.write_bytes(Path(page).read_bytes())
            copies.append(target)
        yield copies


# -- static images (plotly's exporter, kaleido, driving the machine's Chromium) ----------------------------------
IMAGE_FORMATS = ("png", "svg", "pdf")


def _find_browser() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_image(figure: go.Figure, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                scale: float = 1.0, image_format: str | None = None) -> Path:
    """`figure` as a static PNG, SVG or PDF (format from `image_format` or the file's suffix), rendered by
    kaleido in the machine's Chromium (BROWSER_PATH, else chromium on PATH); no network. Width and height
    default to the figure's layout (else 1000 × 700)."""
    path = Path(path)
    image_format = (image_format or path.suffix.lstrip(".")).lower()
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS} (from the file suffix or --format), "
                         f"got {image_format!r} for {path}")
    try:
        import kaleido  # noqa: F401  (plotly's exporter: `pip install lossviz[export]`)
    except ImportError as error:
        raise RuntimeError("static export needs kaleido: pip install 'kaleido>=1'") from error
    browser = os.environ.get("BROWSER_PATH") or _find_browser()
    if browser:
        os.environ.setdefault("BROWSER_PATH", browser)
    static = go.Figure(figure)
    static.layout.meta = None  # the page settings and views are for the HTML viewer only
    width = width or static.layout.width or 1000
    height = height or static.layout.height or 700
    data = pio.to_image(static, format=image_format, width=width, height=height, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda stream: stream.write(data))
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


VERDICTS = ("reproduced", "partly", "not reproduced", "confounded")


def page_figure(path: Path) -> dict | None:
    """The figure a lossviz page carries (its JSON), or None for another page."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = re.search(r'<script type="application/json" id="lossviz-figure">(.*?)</script>', text, re.S)
    return json.loads(found.group(1)) if found else None


def thumbnails(page_paths: Sequence[Path], *, width: int = 480, height: int = 300) -> dict[Path, str]:
    """A small PNG (as a data: URI) of the figure in each lossviz page, rendered in one kaleido session (one
    Chromium for all: a few seconds, not a few per page). Pages without a figure get none; without kaleido or
    a browser, no page gets one (the gallery stays a list)."""
    try:
        import kaleido
    except ImportError:
        return {}
    browser = os.environ.get("BROWSER_PATH") or _find_browser()
    if browser is None:
        return {}
    os.environ.setdefault("BROWSER_PATH", browser)
    jobs, found = [], {}
    with tempfile.TemporaryDirectory(prefix="lossviz-thumbs-") as folder:
        for index, page in enumerate(page_paths):
            figure = page_figure(page)
            if figure is None:
                continue
            layout = {key: value for key, value in figure.get("layout", {}).items()
                      if key not in ("meta", "height", "width")}
            layout.update(title={"text": ""}, margin={"l": 10, "r": 10, "t": 10, "b": 10}, showlegend=False)
            out = Path(folder) / f"{index}.png"
            jobs.append({"fig": {"data": figure.get("data", []), "layout": layout}, "path": str(out),
                         "opts": {"format": "png", "width": width, "height": height}})
            found[page] = out
        if jobs:
            kaleido.write_fig_from_object_sync(jobs)
        return {page: "data:image/png;base64," + base64.b64encode(out.read_bytes()).decode("ascii")
                for page, out in found.items() if out.is_file()}


def _claims_html(summary: Sequence[Sequence[str]]) -> str:
    """Claim, the paper, measured here, and (5 cells) a verdict with its one-line reason."""
    if not summary:
        return ""
    verdicts = any(len(row) >= 5 for row in summary)
    head = "<th>claim</th><th>the paper</th><th>measured here</th>" + ("<th>verdict</th><th>why</th>" if verdicts
                                                                      else "")
    rows = []
    for row in summary:
        cells = "".join(f"<td>{escape(cell)}</td>" for cell in row[:3])
        if len(row) >= 5:
            verdict = str(row[3])
            cells += (f"<td class=\"verdict verdict-{escape(verdict.replace(' ', '-'))}\">{escape(verdict)}</td>"
                      f"<td>{escape(row[4])}</td>")
        rows.append(f"<tr>{cells}</tr>")
    return (f"<h2>The paper's claims, measured</h2><table class=\"gallery claims\"><thead><tr>{head}</tr></thead>"
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n")


def write_gallery(directory: str | os.PathLike, out: str | os.PathLike | None = None, *,
                  title: str | None = None, summary: Sequence[Sequence[str]] = (),
                  warnings: Sequence[str] = (), tables: Sequence[dict] = (), with_thumbnails: bool = False) -> Path:
    """Write an index page linking every .html file under `directory` (kind, title, size) and return it.
    `summary` rows (claim, the paper's figure, ours[, verdict, reason]) make a table above the links, after
    any `warnings` (plain sentences) and before `tables` (`lossviz.figures.page_tables` format). With
    `with_thumbnails`, each figure gets a small picture (`thumbnails`)."""
    directory = Path(directory)
    out = Path(out) if out is not None else directory / "index.html"
    found = [page for page in sorted(directory.rglob("*.html")) if page.resolve() != out.resolve()]
    pictures = thumbnails(found) if with_thumbnails else {}
    rows = []
    for page in found:
        kind, page_title = page_info(page)
        href = escape(quote(os.path.relpath(page, out.parent).replace(os.sep, "/")))
        picture = "" if not pictures else "<td></td>" if page not in pictures else (
            f"<td><a href=\"{href}\"><img alt=\"{escape(page_title)}\" src=\"{pictures[page]}\"></a></td>")
        rows.append(f"<tr>{picture}<td><a href=\"{href}\">{escape(page.relative_to(directory))}</a></td>"
                    f"<td>{escape(kind)}</td><td>{escape(page_title)}</td>"
                    f"<td>{page.stat().st_size / 1e6:.1f} MB</td></tr>")
    body = "".join(f"<p class=\"warning\">{escape(text)}</p>\n" for text in warnings)
    body += _claims_html(summary)
    body += _tables_html(tables)
    body += (("<h2>Figures</h2>" if summary or tables else "")
             + "<table class=\"gallery\"><thead><tr>" + ("<th></th>" if pictures else "")
             + "<th>figure</th><th>kind</th><th>title</th><th>size</th></tr></thead><tbody>\n"
             + "\n".join(rows) + "\n</tbody></table>" + ("" if rows else "<p>No figures here yet.</p>"))
    out.parent.mkdir(parents=True, exist_ok=True)
    text = _document(title or f"Figures in {directory.name or directory}", "gallery", body).encode("utf-8")
    atomic_write(out, lambda stream: stream.write(text))
    return out
