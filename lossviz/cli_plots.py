"""`lossviz plot`, `lossviz compare`, `lossviz gallery` and `lossviz export`: surface files to self-contained
HTML pages, static images (PNG/SVG/PDF, by kaleido), ParaView/Blender meshes and LossPlot's CSV.

Plotly and the figures are imported when a page is drawn, so `--help` and argument errors stay fast."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from lossviz.cli import CliError, check_input_file, check_output_file, nonnegative_float, positive_int

CONTOUR_STYLES = ("contour", "filled", "heatmap")  # lossviz.figures.CONTOUR_STYLES (tests check they agree)
PAGE_FORMATS = ("html", "png", "svg", "pdf")  # html, or lossviz.pages.IMAGE_FORMATS
MESH_SUFFIXES = (".vtp", ".vts", ".obj", ".csv")  # lossviz.exports.EXPORT_FORMATS


def _write_figure(figure, out: str, args: argparse.Namespace, title: str | None = None) -> Path:
    """`figure` as an HTML page (self-contained unless --shared-js) or, for --format png/svg/pdf, an image."""
    from lossviz import pages

    try:
        if args.format != "html":
            return pages.write_image(figure, out, image_format=args.format, width=args.width, height=args.height)
        return pages.write_html(figure, out, title=title, plotly_js="shared" if args.shared_js else "inline")
    except OSError as error:  # written whole or not at all: a page already there is left as it was
        raise CliError(f"--output {out}: writing failed ({error.strerror or error}); nothing was written") from None


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=PAGE_FORMATS, default="html",
                        help="html page (default), or a static image rendered by kaleido in the local Chromium")
    parser.add_argument("--shared-js", action="store_true",
                        help="html: load plotly.js from a plotly.min.js written once beside the page (offline), "
                             "not inlined: for a folder of pages")
    parser.add_argument("--width", type=positive_int, help="image width in pixels (default: the figure's)")
    parser.add_argument("--height", type=positive_int, help="image height in pixels (default: the figure's)")


def _load(path: str):
    """A surface with something to draw: an error naming the file when it has no finite point."""
    from lossviz.surface import Surface

    check_input_file(path, "FILE")
    surface = Surface.load(path)
    if not np.isfinite(surface.loss).any():
        nonfinite = surface.meta.get("nonfinite_points", 0)
        reason = (f"all {nonfinite} computed points are non-finite (NaN or ±inf)" if nonfinite
                  else "no point has been computed yet")
        raise CliError(f"{path}: {reason}; nothing to plot (a blank page is not written)")
    return surface


def _plot(args: argparse.Namespace) -> int:
    out = args.output or str(Path(args.file).with_suffix(f".{args.format}"))
    check_output_file(out, "--output", create_parents=True)
    surface = _load(args.file)
    from lossviz import figures

    title = args.title or figures.surface_title(surface, Path(args.file).stem)
    z_scale = "linear" if args.linear else "log"
    radius = math.inf if args.no_clip else args.radius
    if not surface.is_2d:
        figure = figures.slice_figure(surface, title=title, log=not args.linear)
    elif args.kind == "surface":
        figure = figures.surface_figure(surface, title=title, z_scale=z_scale, clip_radius=radius)
    else:
        figure = figures.contour_figure(surface, title=title, style=args.kind, z_scale=z_scale, clip_radius=radius)
    print(_write_figure(figure, out, args, title))
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.titles and len(args.titles) != len(args.files):
        raise CliError(f"--titles: {len(args.titles)} titles for {len(args.files)} files; give one per file")
    check_output_file(args.output, "--output", create_parents=True)
    surfaces = [_load(path) for path in args.files]
    from lossviz import figures

    titles = args.titles or [figures.surface_title(s, Path(p).stem) for s, p in zip(surfaces, args.files,
                                                                                  strict=True)]
    figure = figures.compare_figure(surfaces, titles, shared_z=not args.independent_z, columns=args.columns,
                                    z_scale="linear" if args.linear else "log", title=args.title)
    print(_write_figure(figure, args.output, args))
    return 0


def _export(args: argparse.Namespace) -> int:
    suffix = Path(args.output).suffix.lower()
    if suffix not in (*MESH_SUFFIXES, ".png", ".svg", ".pdf"):
        raise CliError(f"--output {args.output}: the suffix names the format; one of "
                       f"{', '.join((*MESH_SUFFIXES, '.png', '.svg', '.pdf'))}")
    check_output_file(args.output, "--output", create_parents=True)
    surfaces = [_load(path) for path in args.files]
    z_scale = "linear" if args.linear else "log"
    if suffix == ".csv":
        from lossviz.exports import write_lossplot_csv

        print(write_lossplot_csv(surfaces, args.output))
        return 0
    if len(surfaces) > 1:
        raise CliError(f"--output {args.output}: {suffix} holds one surface; give one FILE (or write .csv)")
    surface = surfaces[0]
    if suffix in MESH_SUFFIXES:
        from lossviz.exports import write_mesh

        if not surface.is_2d:
            raise CliError(f"{args.files[0]}: a 1-D surface has no mesh; export it as .png/.svg/.pdf or .csv")
        print(write_mesh(surface, args.output, z_scale=z_scale, clip_radius=None if args.no_clip else args.radius))
        return 0
    from lossviz import figures, pages

    title = args.title or figures.surface_title(surface, Path(args.files[0]).stem)
    radius = math.inf if args.no_clip else args.radius
    if not surface.is_2d:
        figure = figures.slice_figure(surface, title=title, log=not args.linear)
    elif args.kind == "surface":
        figure = figures.surface_figure(surface, title=title, z_scale=z_scale, clip_radius=radius, views=False)
    elif args.kind == "views":
        figure = figures.views_figure([surface], [title], z_scale=z_scale)
    else:
        figure = figures.contour_figure(surface, title=title, style=args.kind, z_scale=z_scale, clip_radius=radius)
    print(pages.write_image(figure, args.output, width=args.width, height=args.height, scale=args.scale))
    return 0


def _gallery(args: argparse.Namespace) -> int:
    if not Path(args.directory).is_dir():
        raise CliError(f"DIRECTORY {args.directory}: no such directory")
    from lossviz import pages

    out = args.output or str(Path(args.directory) / "index.html")
    check_output_file(out, "--output", create_parents=True)
    print(pages.write_gallery(args.directory, out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    plot = subparsers.add_parser("plot", help="one surface file to a self-contained HTML page",
                                 description="Draw one surface file as a self-contained HTML page (3-D surface, "
                                             "contours or heatmap; a 1-D slice as a curve); works offline.")
    plot.add_argument("file", help="surface file (.h5)")
    plot.add_argument("-o", "--output", help="HTML file to write (default: FILE with .html)")
    plot.add_argument("--kind", choices=("surface", *CONTOUR_STYLES), default="surface",
                      help="3-D surface or a 2-D view from above")
    plot.add_argument("--title", help="page and figure title (default: from the file's metadata)")
    plot.add_argument("--linear", action="store_true", help="plot the loss itself, not its natural log")
    clip = plot.add_mutually_exclusive_group()
    clip.add_argument("--radius", type=nonnegative_float, help="clip radius (default: half the grid span for 3-D)")
    clip.add_argument("--no-clip", action="store_true", help="show every point")
    _add_output_options(plot)
    plot.set_defaults(func=_plot)

    compare = subparsers.add_parser("compare", help="surfaces side by side, cameras in sync, one HTML page",
                                    description="Draw several surface files side by side on one self-contained "
                                                "HTML page, their cameras in sync.")
    compare.add_argument("files", nargs="+", help="surface files (.h5)")
    compare.add_argument("-o", "--output", required=True, help="HTML file to write")
    compare.add_argument("--titles", nargs="+", help="one subplot title per file (default: from metadata)")
    compare.add_argument("--title", default="Loss surfaces", help="page title")
    scales = compare.add_mutually_exclusive_group()
    scales.add_argument("--shared-z", action="store_true",
                        help="one z range and colour scale for all, with one colorbar (the default)")
    scales.add_argument("--independent-z", action="store_true", help="each surface its own z range")
    compare.add_argument("--columns", type=positive_int, help="scenes per row (default: up to 4)")
    compare.add_argument("--linear", action="store_true", help="plot the loss itself, not its natural log")
    _add_output_options(compare)
    compare.set_defaults(func=_compare)

    export = subparsers.add_parser(
        "export", help="surface files to PNG/SVG/PDF, ParaView (.vtp/.vts), Blender (.obj) or LossPlot CSV",
        description="Export surface files; the --output suffix names the format: .png/.svg/.pdf (a static "
                    "figure, rendered by kaleido in the local Chromium), .vtp/.vts (ParaView), .obj (Blender), "
                    ".csv (LossPlot's rows; several FILEs become several experiments).")
    export.add_argument("files", nargs="+", metavar="FILE", help="surface file(s) (.h5)")
    export.add_argument("-o", "--output", required=True, help="file to write; its suffix names the format")
    export.add_argument("--kind", choices=("surface", *CONTOUR_STYLES, "views"), default="surface",
                        help="images: 3-D surface, a 2-D view, or Li et al.'s views (contours and 1-D slices)")
    export.add_argument("--title", help="figure title (default: from the file's metadata)")
    export.add_argument("--linear", action="store_true", help="z is the loss itself, not its natural log")
    export_clip = export.add_mutually_exclusive_group()
    export_clip.add_argument("--radius", type=nonnegative_float,
                             help="clip radius (images: default half the grid span; meshes: default none)")
    export_clip.add_argument("--no-clip", action="store_true", help="keep every point")
    export.add_argument("--width", type=positive_int, help="image width in pixels (default: the figure's)")
    export.add_argument("--height", type=positive_int, help="image height in pixels (default: the figure's)")
    export.add_argument("--scale", type=nonnegative_float, default=1.0, help="image pixel density (default 1)")
    export.set_defaults(func=_export)

    gallery = subparsers.add_parser("gallery", help="an index page linking every HTML figure in a folder",
                                    description="Write an index page linking every HTML figure under a folder "
                                                "(kind, title, size).")
    gallery.add_argument("directory", help="folder holding the pages (searched recursively)")
    gallery.add_argument("-o", "--output", help="index file (default: DIRECTORY/index.html)")
    gallery.set_defaults(func=_gallery)
