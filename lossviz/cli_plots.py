"""`lossviz plot`, `lossviz compare` and `lossviz gallery`: surface files to self-contained HTML pages."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lossviz import figures, pages
from lossviz.surface import Surface


def _load(path: str) -> Surface:
    return Surface.load(path)


def _plot(args: argparse.Namespace) -> int:
    surface = _load(args.file)
    title = args.title or figures.surface_title(surface, Path(args.file).stem)
    z_scale = "linear" if args.linear else "log"
    radius = math.inf if args.no_clip else args.radius
    if not surface.is_2d:
        figure = figures.slice_figure(surface, title=title, log=not args.linear)
    elif args.kind == "surface":
        figure = figures.surface_figure(surface, title=title, z_scale=z_scale, clip_radius=radius)
    else:
        figure = figures.contour_figure(surface, title=title, style=args.kind, z_scale=z_scale, clip_radius=radius)
    out = args.output or str(Path(args.file).with_suffix(".html"))
    print(pages.write_html(figure, out, title=title))
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.titles and len(args.titles) != len(args.files):
        print(f"--titles: {len(args.titles)} titles for {len(args.files)} files", file=sys.stderr)
        return 2
    surfaces = [_load(path) for path in args.files]
    titles = args.titles or [figures.surface_title(s, Path(p).stem) for s, p in zip(surfaces, args.files,
                                                                                  strict=True)]
    figure = figures.compare_figure(surfaces, titles, shared_z=args.shared_z, columns=args.columns,
                                  z_scale="linear" if args.linear else "log", title=args.title)
    print(pages.write_html(figure, args.output))
    return 0


def _gallery(args: argparse.Namespace) -> int:
    print(pages.write_gallery(args.directory, args.output))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    plot = subparsers.add_parser("plot", help="one surface file to a self-contained HTML page")
    plot.add_argument("file", help="surface file (.h5)")
    plot.add_argument("-o", "--output", help="HTML file to write (default: FILE with .html)")
    plot.add_argument("--kind", choices=("surface", *figures.CONTOUR_STYLES), default="surface",
                      help="3-D surface (default) or a 2-D view from above")
    plot.add_argument("--title", help="page and figure title (default: from the file's metadata)")
    plot.add_argument("--linear", action="store_true", help="plot the loss itself, not its natural log")
    clip = plot.add_mutually_exclusive_group()
    clip.add_argument("--radius", type=float, help="clip radius (default: half the grid span for 3-D)")
    clip.add_argument("--no-clip", action="store_true", help="show every point")
    plot.set_defaults(func=_plot)

    compare = subparsers.add_parser("compare", help="surfaces side by side, cameras in sync, one HTML page")
    compare.add_argument("files", nargs="+", help="surface files (.h5)")
    compare.add_argument("-o", "--output", required=True, help="HTML file to write")
    compare.add_argument("--titles", nargs="+", help="one subplot title per file (default: from metadata)")
    compare.add_argument("--title", default="Loss surfaces", help="page title")
    compare.add_argument("--shared-z", action="store_true", help="one z range and colour scale for all")
    compare.add_argument("--columns", type=int, help="scenes per row (default: up to 4)")
    compare.add_argument("--linear", action="store_true", help="plot the loss itself, not its natural log")
    compare.set_defaults(func=_compare)

    gallery = subparsers.add_parser("gallery", help="an index page linking every HTML figure in a folder")
    gallery.add_argument("directory")
    gallery.add_argument("-o", "--output", help="index file (default: DIRECTORY/index.html)")
    gallery.set_defaults(func=_gallery)
