"""Build .dvc/plots/offline.html: DVC's plots page template with vega, vega-lite and vega-embed inlined.

DVC's own page loads those three scripts from a CDN, so `dvc plots show` draws nothing offline. Its
template has a `{scripts}` placeholder for that; ours leaves it out and carries the scripts itself. The
versions are the ones DVC's renderer (dvc_render.vega) asks for; each npm tarball is checked against
its pinned SHA-512 before use. The built file is committed: rebuilding needs the npm registry
(`npm pack`), using it needs nothing.

    python scripts/build-plots-template.py
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
# name, version, file in the tarball, npm's SHA-512 integrity of the tarball
PACKAGES = (
    ("vega", "5.20.2", "package/build/vega.min.js",
     "qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js",
     "Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js",
     "wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
)
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>lossviz: DVC plots</title>
{inlined}
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str, member: str, integrity: str, workdir: Path) -> str:
    subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    tarball = (workdir / f"{name}-{version}.tgz").read_bytes()
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{name}@{version}: SHA-512 {digest} differs from the pinned {integrity}")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        source = archive.extractfile(member).read().decode()
    if "</script" in source.lower() or "{plot_divs}" in source or "{refresh_tag}" in source:
        raise SystemExit(f"{name}@{version}: the script cannot be inlined as is")
    return f"    <!-- {name}@{version} (BSD-3-Clause, University of Washington Interactive Data Lab) -->\n" \
           f"    <script>{source}</script>"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = [fetch(*package, Path(tmp)) for package in PACKAGES]
    page = PAGE.replace("{inlined}", "\n".join(scripts))  # DVC fills {refresh_tag} and {plot_divs}
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(page, encoding="utf8")
    print(f"wrote {TEMPLATE.relative_to(ROOT)} ({TEMPLATE.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
