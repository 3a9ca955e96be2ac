"""Drive the playground page of a running service in headless Chromium, as a person would.

    python -m loadtests.playground --url http://127.0.0.1:8000 --left diffusion --right single \\
        --out docs/playground.png

Uses Debian's `chromium` and `chromium-driver` (apt); nothing downloads a browser. The CI test
(tests/service/test_playground.py) runs the same `run_intent` against a real service on a small index.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import typer

CHROMIUM = Path(os.environ.get("R4T_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("R4T_CHROMEDRIVER", "/usr/bin/chromedriver"))
# Headless, and no background traffic: this machine's closed network refuses every such connection.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")
app = typer.Typer(add_completion=False)


def have_browser() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def browser(width: int = 1440, height: int = 1100):
    """A headless Chromium session through the system chromedriver (selenium-manager is never asked)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp(prefix='r4t-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@dataclass
class Panel:
    """What one strategy's column shows after a run."""

    strategy: str
    state: str  # done | error | empty
    rows: list[str]  # each fan-out row's text: its head, then its items
    items: list[tuple[str, str]]  # the fused list: (item id, the text shown)
    dots: int  # item points drawn in the 2-D map
    diamonds: int  # fan-out vectors drawn in the map
    error: str


def run_intent(driver, url: str, intent: str, left: str, right: str, timeout: float = 60.0, **fields: int
               ) -> tuple[Panel, Panel]:
    """Open the page, fill the form (k, limit, per, seed by id), run both strategies, read both columns."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if not driver.current_url.startswith(url):
        driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#strategy-a option"))
    for field, value in {"intent": intent, **{k: str(v) for k, v in fields.items()}}.items():
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    Select(driver.find_element(By.ID, "strategy-a")).select_by_value(left)
    Select(driver.find_element(By.ID, "strategy-b")).select_by_value(right)
    for panel in ("panel-a", "panel-b"):  # so a second run waits for its own answer, not the last one's
        driver.execute_script("document.getElementById(arguments[0]).dataset.state = 'stale'", panel)
    driver.find_element(By.ID, "run").click()
    done = ("done", "error", "empty")
    wait.until(lambda d: all(d.find_element(By.ID, p).get_attribute("data-state") in done
                             for p in ("panel-a", "panel-b")))
    return tuple(_read(driver.find_element(By.ID, p)) for p in ("panel-a", "panel-b"))


def _read(panel) -> Panel:
    from selenium.webdriver.common.by import By

    css = lambda selector: panel.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731
    return Panel(
        strategy=panel.get_attribute("data-strategy"), state=panel.get_attribute("data-state"),
        rows=[row.text for row in css("li.row")],
        items=[(li.get_attribute("data-id"), li.find_element(By.CSS_SELECTOR, ".text").text) for li in css("li.item")],
        dots=len(css("circle.item-dot")), diamonds=len(css("polygon.fanout-dot")),
        error=" ".join(e.text for e in css(".error")),
    )


@app.command()
def main(
    url: str = typer.Option("http://127.0.0.1:8000/playground", help="The playground page of a running service"),
    intent: str = "boho summer festival outfit",
    left: str = "diffusion",
    right: str = "single",
    k: int = 10,
    limit: int = 30,
    out: Path = typer.Option(Path("docs/playground.png"), help="Where the screenshot goes"),
) -> None:
    """Run one intent through two strategies on the page and save a full-page screenshot."""
    driver = browser()
    try:
        a, b = run_intent(driver, url, intent, left, right, k=k, limit=limit)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, min(int(height) + 40, 4000))
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        for panel in (a, b):
            print(f"{panel.strategy}: {panel.state}, {len(panel.rows)} rows, {len(panel.items)} items {panel.error}")
        print(f"wrote {out}")
    finally:
        driver.quit()


if __name__ == "__main__":
    app()
