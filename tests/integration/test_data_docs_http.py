"""The ingest flow's Prefect artifact links Data Docs over HTTP when tracking through an MLflow server.

A real MLflow server (the `make serve` command line, `--serve-artifacts`) on a free port; the production ingest flow
under a real Prefect server; the links are read back from the Prefect artifact and fetched the way a browser would.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from actprm.servers import Stack, down, free_port, start_mlflow_server, wait_http
from tasks.data_docs import ASSETS_DIR, page_assets
from tests.data.conftest import actprm_record, write_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


@pytest.fixture
def mlflow_server(tmp_path):
    stack = Stack(home=tmp_path / "server-home", prefect_port=free_port(), mlflow_port=free_port())
    stack.home.mkdir(parents=True)
    try:
        pid = start_mlflow_server(stack)
        wait_http(f"{stack.mlflow_url}/health", timeout=180, pid=pid, what="MLflow server",
                  log=stack.servers_dir / "mlflow.log")
        yield stack
    finally:
        down(stack.home)


def test_ingest_artifact_links_data_docs_served_by_the_tracking_server(tmp_path, mlflow_server, prefect_harness):
    import mlflow
    from prefect.settings import get_current_settings

    from flows.ingest_pool import ingest_pool

    home = tmp_path / "worker-home"  # the worker's disk: nothing below may be needed to open the report
    saved_env, previous_uri = dict(os.environ), mlflow.get_tracking_uri()
    try:
        os.environ.pop("ACTPRM_CONFIG", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ["ACTPRM_MLFLOW_TRACKING_URI"] = mlflow_server.mlflow_url
        path = write_lines(tmp_path / "in.jsonl", [actprm_record(i, first_error=i % 3 - 1) for i in range(6)])
        out = ingest_pool([str(path)], "webpool", home=str(home))
    finally:  # the flow sets MLflow's URI and setdefaults the runtime environment: leave neither to later tests
        os.environ.clear()
        os.environ.update(saved_env)
        mlflow.set_tracking_uri(previous_uri)
    assert out["status"] == "registered"

    api = get_current_settings().api.url  # the test harness's Prefect server, as the UI reads it
    found = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["ingest-webpool"]}},
                                                       "sort": "CREATED_DESC", "limit": 1}, timeout=30)
    found.raise_for_status()
    markdown = found.json()[0]["data"]
    links = dict((text, url) for text, url in LINK.findall(markdown))
    assert "file://" not in markdown, markdown
    download = links["index.html"]
    run_page = links["MLflow run's artifacts"]
    base = mlflow_server.mlflow_url
    assert download.startswith(f"{base}/get-artifact?") and run_page.startswith(f"{base}/#/experiments/")
    query = parse_qs(urlparse(download).query)
    run_id = query["run_uuid"][0]
    assert query["path"] == ["ingest/webpool/data_docs/index.html"] and f"/runs/{run_id}/artifacts" in run_page

    page = httpx.get(download, timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "webpool.critical" in page.text and "static/vendor/jquery/dist/jquery.min.js" in page.text
    # an asset the page loads, beside it in the same run folder, byte for byte the vendored copy
    asset = "static/vendor/bootstrap/dist/css/bootstrap.min.css"
    got = httpx.get(f"{base}/get-artifact?{urlencode({'path': f'ingest/webpool/data_docs/{asset}', 'run_uuid': run_id})}",
                    timeout=60)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/css")
    assert got.content == (ASSETS_DIR / "bootstrap/dist/css/bootstrap.min.css").read_bytes()
    ui = httpx.get(run_page.split("#", 1)[0], timeout=60)  # the UI behind the run page's hash route
    assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]

    # what a browser saves from the zip link opens offline: every page and every asset they load, in one file
    archive = httpx.get(links["every page as a zip"], timeout=60)
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        z.extractall(tmp_path / "saved")
    site = tmp_path / "saved" / "data_docs"
    pages = sorted(site.rglob("*.html"))
    assert (site / "index.html").read_text(encoding="utf-8") == page.text and len(pages) >= 5
    for html in pages:
        for ref in page_assets(html.read_text(encoding="utf-8")):
            assert (html.parent / ref).resolve().is_file(), f"{html.relative_to(site)} loads {ref}: not in the zip"
