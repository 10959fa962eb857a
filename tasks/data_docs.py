"""Data Docs people can open: offline (the CDN assets shipped next to the pages) and linked over HTTP.

Great Expectations 1.x renders its pages (render/view/templates/*.j2) with bootstrap, jQuery, bootstrap-table,
font-awesome and vega loaded from CDNs; without network the index page is blank. `make_offline` copies the
vendored copies in `data_docs_assets/` (refreshed by scripts/vendor_data_docs_assets.py from the npm registry)
into the site's `static/vendor/` and points every page at them by relative path, so the folder renders from
disk, from a downloaded MLflow artifact, or from any static file server.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).with_name("data_docs_assets")
VENDOR = "static/vendor"  # where the copies go, relative to the site root (beside GX's own static/)


@dataclass(frozen=True)
class Asset:
    """One vendored file: the npm package it comes from, its path in the package, the CDN URLs it replaces.
    It is stored as `data_docs_assets/<package name without scope>/<path>`, so files that refer to each other
    (font-awesome's css -> ../webfonts/) keep their layout."""

    package: str          # npm spec, pinned to the version the CDN URL names (or resolves to)
    path: str
    urls: tuple[str, ...] = ()

    @property
    def local(self) -> str:
        name = self.package.rsplit("@", 1)[0].split("/")[-1]
        return f"{name}/{self.path}"


# The URLs of GX 1.x's templates (great_expectations/render/view/templates/{page,index_page,page_minimal,
# js_script_imports}.j2). The filter-control css is linked at 1.19.0 there and served here from 1.19.1, the version
# of the js it styles; `@5`/`@6` are whatever the CDN resolves, pinned here to the versions vendored.
ASSETS: tuple[Asset, ...] = (
    Asset("jquery@3.7.1", "dist/jquery.min.js", ("https://code.jquery.com/jquery-3.7.1.min.js",)),
    Asset("popper.js@1.12.9", "dist/umd/popper.min.js",
          ("https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js",)),
    Asset("bootstrap@4.3.1", "dist/css/bootstrap.min.css",
          ("https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css",)),
    Asset("bootstrap@4.3.1", "dist/js/bootstrap.min.js",
          ("https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js",)),
    Asset("@forevolve/bootstrap-dark@1.1.0", "dist/css/bootstrap-prefers-dark.min.css",
          ("https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",)),
    Asset("bootstrap-table@1.19.1", "dist/bootstrap-table.min.css",
          ("https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css",)),
    Asset("bootstrap-table@1.19.1", "dist/bootstrap-table.min.js",
          ("https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js",)),
    Asset("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
          ("https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",)),
    Asset("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
          ("https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
           "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css")),
    Asset("bootstrap-datepicker@1.9.0", "dist/css/bootstrap-datepicker.min.css",
          ("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css",)),
    Asset("bootstrap-datepicker@1.9.0", "dist/js/bootstrap-datepicker.min.js",
          ("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js",)),
    Asset("@fortawesome/fontawesome-free@6.6.0", "css/all.min.css",
          ("https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css",)),
    *(Asset("@fortawesome/fontawesome-free@6.6.0", f"webfonts/{font}.{ext}")
      for font in ("fa-brands-400", "fa-regular-400", "fa-solid-900", "fa-v4compatibility") for ext in ("woff2", "ttf")),
    Asset("vega@5.33.1", "build/vega.min.js", ("https://cdn.jsdelivr.net/npm/vega@5",)),
    Asset("vega-lite@5.23.0", "build/vega-lite.min.js", ("https://cdn.jsdelivr.net/npm/vega-lite@5",)),
    Asset("vega-embed@6.29.0", "build/vega-embed.min.js", ("https://cdn.jsdelivr.net/npm/vega-embed@6",)),
)

# GX's navbar logo (its URL carries the data context id) and its dark-mode logo come from an S3 bucket; both become
# the long logo of GX's own static/images.
_GX_WEB_ASSET = re.compile(r"https://great-expectations-web-assets\.s3[\w.-]*\.amazonaws\.com/[^\"')\s]*")
# Subresource integrity and CORS mode make a browser refuse a script read from file:// (its origin is null).
_SRI = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')
_STATIC = re.compile(r"(?:\.\./)*(static/[^?#]+)")


class _PageRefs(HTMLParser):
    """What a page loads: script src, stylesheet/icon href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img") and a.get("src"):
            self.refs.append(a["src"])
        elif tag == "link" and a.get("href") and set((a.get("rel") or "").split()) & {"stylesheet", "icon"}:
            self.refs.append(a["href"])


def page_assets(html: str) -> list[str]:
    """The URLs a page loads to render (scripts, stylesheets, icons, images), as written in it."""
    parser = _PageRefs()
    parser.feed(html)
    return parser.refs


def _remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "//"))


def make_offline(site: str | Path) -> list[str]:
    """Ships the vendored assets into `site` (a Data Docs site root, the folder of index.html) and rewrites every
    page to load them by relative path. Idempotent: pages already rewritten are left as they are. Returns the
    remote URLs still loaded by some page (an asset a newer GX template added), each logged as a warning."""
    site = Path(site)
    for asset in ASSETS:
        dest = site / VENDOR / asset.local
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ASSETS_DIR / asset.local, dest)
    _rewrite_gx_styles(site)
    by_url = {url: asset.local for asset in ASSETS for url in asset.urls}
    left: set[str] = set()
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        new = _rewrite_page(html, page, site, by_url)
        if new != html:
            page.write_text(new, encoding="utf-8")
        left.update(u for u in page_assets(new) if _remote(u))
    for url in sorted(left):
        log.warning("Data Docs under %s still load %s (no vendored copy): they need network for it", site, url)
    return sorted(left)


def _rewrite_page(html: str, page: Path, site: Path, by_url: dict[str, str]) -> str:
    up = os.path.relpath(site, page.parent).replace(os.sep, "/")
    up = "" if up == "." else up + "/"
    for url in {u for u in page_assets(html) if _remote(u)}:
        if url in by_url:
            html = html.replace(f'"{url}"', f'"{up}{VENDOR}/{by_url[url]}"')
    html = _GX_WEB_ASSET.sub(f"{up}static/images/logo-long.png", html)
    html = _SRI.sub("", html)
    for ref in {u for u in page_assets(html) if not _remote(u) and _STATIC.fullmatch(u)}:
        # GX writes a validation page's favicon one `../` short (its folder is one level deeper than it counts)
        target = _STATIC.fullmatch(ref).group(1)
        if not (page.parent / ref).exists() and (site / target).exists():
            html = html.replace(f'"{ref}"', f'"{up}{target}"')
    return html


def _rewrite_gx_styles(site: Path) -> None:
    css = site / "static" / "styles" / "data_docs_default_styles.css"
    if css.exists():
        text = css.read_text(encoding="utf-8")
        new = _GX_WEB_ASSET.sub("../images/logo-long.png", text)
        if new != text:
            css.write_text(new, encoding="utf-8")


# ---------------------------------------------------------------------------- links over HTTP
@dataclass(frozen=True)
class DataDocsLinks:
    """Where a logged Data Docs site can be opened over HTTP: `download` is the tracking server's get-artifact route
    for its index, `archive` the same route for the whole site as one zip (MLflow serves every artifact as an
    attachment, so a browser saves what it gets: the zip, unpacked, browses offline), `run_page` the run's artifact
    browser in the MLflow UI; `artifact_path` the index's path in the run."""

    download: str
    run_page: str
    artifact_path: str
    archive: str | None = None


def artifact_links(tracking_uri: str, experiment_id: str, run_id: str, artifact_path: str,
                   archive_path: str | None = None) -> DataDocsLinks:
    """HTTP links to run artifacts on an MLflow tracking server (mlflow/server/__init__.py: `/get-artifact` with
    `path` and `run_uuid`; the UI's run page `#/experiments/<exp>/runs/<run>/artifacts`)."""
    base = tracking_uri.rstrip("/")

    def get(path: str) -> str:
        return f"{base}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"

    return DataDocsLinks(download=get(artifact_path), run_page=f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts",
                         artifact_path=artifact_path, archive=get(archive_path) if archive_path else None)


def zip_site(site: str | Path, dest: str | Path, root: str = "data_docs") -> Path:
    """The site as one zip, its files under `root/`. Fonts and images are stored as they are (already compressed);
    pages, scripts and stylesheets are deflated at level 1 (fast: this runs inside an ingest)."""
    site, dest = Path(site), Path(dest)
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(p for p in site.rglob("*") if p.is_file()):
            packed = path.suffix.lower() in (".html", ".js", ".css", ".json", ".svg", ".ttf", ".otf")
            archive.write(path, f"{root}/{path.relative_to(site).as_posix()}",
                          compress_type=zipfile.ZIP_DEFLATED if packed else zipfile.ZIP_STORED,
                          compresslevel=1 if packed else None)
    return dest
