"""Data Docs render with no network: every page's scripts, stylesheets and images are files of the logged folder."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from tasks.data_docs import ASSETS, make_offline, page_assets
from tasks.ingest import ingest
from tests.data.conftest import actprm_record, write_lines

REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


def _local_target(page: Path, ref: str) -> Path:
    return (page.parent / unquote(ref.split("?", 1)[0].split("#", 1)[0])).resolve()


def test_logged_data_docs_load_nothing_from_the_network(tmp_path, db):
    import mlflow

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.MlflowClient().create_experiment("docs-test")
        path = write_lines(tmp_path / "in.jsonl", [actprm_record(i, first_error=i % 3 - 1) for i in range(8)] + ["x"])
        with mlflow.start_run(experiment_id=experiment) as run:
            s = ingest(db, [str(path)], "docs", emit=False, reports_dir=tmp_path / "reports")
        # what a user downloads from the run, not the worker's folder
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="ingest/docs/data_docs",
                                                          dst_path=str(tmp_path / "downloaded")))
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert s.report
    pages = sorted(folder.rglob("*.html"))
    # the index, both suites' expectation pages and both validation results
    assert folder / "index.html" in pages and len(pages) >= 5
    assert "docs.critical" in (folder / "index.html").read_text(encoding="utf-8")
    css_files: set[Path] = set()
    for page in pages:
        refs = page_assets(page.read_text(encoding="utf-8"))
        assert any(r.endswith("jquery.min.js") for r in refs) and any(r.endswith("bootstrap.min.css") for r in refs)
        remote = [r for r in refs if REMOTE.match(r)]
        assert not remote, f"{page.relative_to(folder)} loads {remote}"
        for ref in refs:
            target = _local_target(page, ref)
            assert target.is_file(), f"{page.relative_to(folder)} loads {ref}: missing from the logged folder"
            assert folder.resolve() in target.parents, f"{ref} points outside the logged folder"
            if target.suffix == ".css":
                css_files.add(target)
    # the stylesheets' own references (font-awesome's webfonts, GX's logo) are in the folder too
    assert any(c.name == "all.min.css" for c in css_files)
    for css in css_files:
        for ref in CSS_URL.findall(css.read_text(encoding="utf-8")):
            if ref.startswith("data:"):
                continue
            assert not REMOTE.match(ref), f"{css.name} loads {ref}"
            assert _local_target(css, ref).is_file(), f"{css.name} loads {ref}: missing"


def test_an_asset_without_a_vendored_copy_is_reported_and_known_ones_are_rewritten(tmp_path):
    site = tmp_path / "site"
    (site / "deep").mkdir(parents=True)
    known = next(a for a in ASSETS if a.urls)
    (site / "deep" / "page.html").write_text(
        f'<html><head><script src="{known.urls[0]}" integrity="sha384-x" crossorigin="anonymous"></script>'
        '<script src="https://cdn.example.org/new-widget.js"></script></head><body></body></html>')
    left = make_offline(site)
    assert left == ["https://cdn.example.org/new-widget.js"]
    html = (site / "deep" / "page.html").read_text()
    assert f'src="../static/vendor/{known.local}"' in html and "integrity" not in html
    assert (site / "static" / "vendor" / known.local).is_file()
    assert make_offline(site) == left and (site / "deep" / "page.html").read_text() == html  # idempotent
