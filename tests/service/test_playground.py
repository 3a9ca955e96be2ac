"""The playground page in headless Chromium against the real service (uvicorn, Edge index, ONNX graph).

Needs Debian's chromium + chromium-driver; `.ci/run` installs them and sets R4T_REQUIRE_BROWSER=1, so in
CI a missing browser fails this module instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from loadtests.playground import browser, have_browser, run_intent
from service.app import create_app

INTENT = "boho summer festival outfit"


@pytest.fixture(scope="module")
def url(settings, catalog_index, tmp_path_factory):
    """The service on a free loopback port, in a thread, on a private copy of the index (Edge locks it)."""
    index = tmp_path_factory.mktemp("playground-index") / "polyvore"
    shutil.copytree(catalog_index, index)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings.model_copy(update={"index_dir": index})),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # uvicorn either starts or its thread ends with the start-up error
        assert thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def driver():
    if not have_browser():
        if os.environ.get("R4T_REQUIRE_BROWSER") == "1":
            pytest.fail("R4T_REQUIRE_BROWSER=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing")
        pytest.skip("no system chromium + chromedriver (apt install chromium chromium-driver)")
    pytest.importorskip("selenium")
    driver = browser()
    yield driver
    driver.quit()


def test_root_redirects_to_the_page_and_its_files_are_served(url):
    page = httpx.get(f"{url}/", follow_redirects=True)
    assert page.status_code == 200 and page.url.path == "/playground"
    assert "text/html" in page.headers["content-type"] and 'id="intent"' in page.text
    for path, kind in (("/static/playground.js", "javascript"), ("/static/playground.css", "text/css")):
        response = httpx.get(url + path)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert "/playground" not in httpx.get(f"{url}/openapi.json").json()["paths"]  # a page, not an API route


def test_two_strategies_side_by_side_render_rows_map_and_fused_items(url, driver, catalog):
    a, b = run_intent(driver, f"{url}/playground", INTENT, "diffusion", "single", k=6, limit=20, per=10, seed=3)
    assert (a.strategy, a.state, b.strategy, b.state) == ("diffusion", "done", "single", "done"), (a.error, b.error)
    assert len(a.rows) == 6 and len(b.rows) == 1
    assert len(a.items) == 20 and len(b.items) == 20
    for panel in (a, b):
        for item_id, text in panel.items:  # every shown item is a catalog item, under its own text
            assert catalog.items[item_id].text == text
        assert panel.dots == len(panel.items)
    assert (a.diamonds, b.diamonds) == (6, 1)
    assert sum(1 for row in a.rows if row.count("\n") or len(row) > len("vector 0")) >= 2  # rows hold items

    api = httpx.post(f"{url}/fanout", json={"query": INTENT, "strategy": "single", "limit": 20, "seed": 3}).json()
    assert [i for i, _ in b.items] == [it["id"] for it in api["items"]]  # the page shows what the API returns


def test_an_invalid_input_shows_the_problem_detail(url, driver):
    a, b = run_intent(driver, f"{url}/playground", INTENT, "diffusion", "single", k=0)
    problem = httpx.post(f"{url}/fanout", json={"query": INTENT, "strategy": "diffusion", "k": 0}).json()
    assert a.state == "error" and problem["detail"] in a.error and "k" in problem["detail"]
    a, b = run_intent(driver, f"{url}/playground", "   ", "diffusion", "single", k=6)
    assert a.state == b.state == "error" and "empty" in a.error
